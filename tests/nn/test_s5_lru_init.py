"""S5 and LRU initialisation and parameter counts against the papers / reference code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

import ssmjax.nn as snn


def count(layer) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(layer, nnx.Param)))


def test_s5_init_matches_paper():
    layer = snn.S5(16, 32, blocks=4, dt_min=1e-3, dt_max=1e-1, rngs=nnx.Rngs(0))
    re, im = np.asarray(layer.Lambda_re[...]), np.asarray(layer.Lambda_im[...])
    assert re.shape == (16,)  # conjugate symmetry keeps half of the 32 eigenvalues
    np.testing.assert_array_equal(re, -0.5)
    # Block-diagonal HiPPO-N: the same 4 eigenvalues (one block of size 8, halved) per block.
    blocks = im.reshape(4, 4)
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[0], blocks.shape))
    assert np.all(blocks[0] >= 0) and len(set(blocks[0].tolist())) == 4
    dt = np.exp(np.asarray(layer.log_step[...]))
    assert dt.shape == (16,) and np.all((dt >= 1e-3) & (dt <= 1e-1))


def test_s5_lra_listops_parameter_count():
    """S5's ListOps layer: H=128, ssm_size_base=16, blocks=8, bidirectional, conj_sym.

    Reference shapes (lindermanlab/S5): Lambda_re, Lambda_im (P,), B (P, H, 2),
    C (H, 2P, 2) for bidirectional, D (H,), log_step (P, 1), with P = 16 / 2 = 8.
    """
    p, h = 8, 128
    expected = p + p + p * h * 2 + h * 2 * p * 2 + h + p
    layer = snn.S5(128, 16, blocks=8, bidirectional=True, rngs=nnx.Rngs(0))
    assert count(layer) == expected == 6296


@pytest.mark.parametrize("r_min,r_max,max_phase", [(0.0, 1.0, 6.28), (0.9, 0.999, np.pi / 10)])
def test_lru_ring_init(r_min, r_max, max_phase):
    layer = snn.LRU(4, 4096, r_min=r_min, r_max=r_max, max_phase=max_phase, rngs=nnx.Rngs(0))
    lam = np.asarray(layer.eigenvalues(), np.complex128)
    radius = np.abs(lam)
    assert np.all((radius >= r_min - 1e-6) & (radius <= r_max + 1e-6))
    # Uniform on the ring's area: |lambda|^2 ~ U[r_min^2, r_max^2]; phase ~ U[0, max_phase].
    ks = scipy.stats.kstest(radius**2, "uniform", args=(r_min**2, r_max**2 - r_min**2))
    assert ks.pvalue > 1e-3, ks
    phase = np.mod(np.angle(lam), 2 * np.pi)
    ks = scipy.stats.kstest(phase, "uniform", args=(0, max_phase))
    assert ks.pvalue > 1e-3, ks
    gamma = np.exp(np.asarray(layer.gamma_log[...]))
    np.testing.assert_allclose(gamma, np.sqrt(1 - radius**2), rtol=1e-4, atol=1e-6)


def test_lru_parameter_count_matches_minimal_lru():
    """minimal-LRU's LRU: nu_log, theta_log, gamma_log (N,); B_re, B_im (N, H);
    C_re, C_im (H, N); D (H,) — for its default H=256, N=128."""
    n, h = 128, 256
    assert count(snn.LRU(h, n, rngs=nnx.Rngs(0))) == 3 * n + 4 * n * h + h == 131712


def test_lru_init_scales():
    layer = snn.LRU(64, 512, rngs=nnx.Rngs(1))
    b = np.asarray(layer.B_re[...])
    c = np.asarray(layer.C_re[...])
    np.testing.assert_allclose(b.std(), 1 / np.sqrt(2 * 64), rtol=0.05)
    np.testing.assert_allclose(c.std(), 1 / np.sqrt(512), rtol=0.05)
    assert jnp.isfinite(layer(jnp.ones((1, 3, 64)))).all()
