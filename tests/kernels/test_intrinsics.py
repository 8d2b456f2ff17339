"""The kernel intrinsics' formulas (interpret-mode twins of the PTX forms) against float64."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels._intrinsics import butterfly_positions, butterfly_sums, sigmoid, softplus


@pytest.mark.parametrize("m", [1, 2, 8, 32, 64])
def test_butterfly_sums_every_value_over_the_warp(rng, m):
    vals = rng.normal(size=(m, 32)).astype(np.float32)
    out = np.stack([np.asarray(v) for v in butterfly_sums([jnp.asarray(v) for v in vals], True)])
    pos = butterfly_positions(m)
    assert out.shape == pos.shape == (max(m // 32, 1), 32)
    assert sorted(set(pos.ravel().tolist())) == list(range(m))  # every sum lands somewhere
    np.testing.assert_allclose(out, vals.astype(np.float64).sum(1)[pos], rtol=1e-5, atol=1e-5)


def test_butterfly_sums_rejects_other_counts():
    with pytest.raises(ValueError, match="power of two"):
        butterfly_sums([jnp.ones((32,))] * 3, True)


def test_softplus_and_sigmoid_formulas():
    x = np.concatenate([np.linspace(-60, 60, 4001), [-1e-6, 0.0, 1e-6]]).astype(np.float32)
    x64 = x.astype(np.float64)
    sp = np.asarray(softplus(jnp.asarray(x), False), np.float64)
    sp_ref = np.logaddexp(x64, 0.0)
    # The series/log switch and the exp2(x log2 e) argument rounding: ~2e-6 relative.
    np.testing.assert_allclose(sp, sp_ref, rtol=4e-6, atol=0)
    sg = np.asarray(sigmoid(jnp.asarray(x), False), np.float64)
    np.testing.assert_allclose(sg, 1.0 / (1.0 + np.exp(-x64)), rtol=4e-6, atol=1e-30)


@pytest.mark.parametrize("m", [4, 16, 32])
def test_butterfly_sums_over_lanes_of_equal_parity(rng, m):
    """``masks=(16, 8, 4, 2)``: sums over the 16 lanes of each parity (the split layout's
    channels), each parity its own set of ``m`` values."""
    masks = (16, 8, 4, 2)
    vals = rng.normal(size=(m, 32)).astype(np.float32)
    out = butterfly_sums([jnp.asarray(v) for v in vals], True, masks=masks)
    out = np.stack([np.asarray(v) for v in out])
    pos = butterfly_positions(m, masks)
    assert out.shape == pos.shape == (max(m // 16, 1), 32)
    want = np.stack([vals[:, p::2].astype(np.float64).sum(1) for p in (0, 1)])  # (2, m)
    parity = np.arange(32) % 2
    np.testing.assert_allclose(out, want[parity[None, :], pos], rtol=1e-5, atol=1e-5)
    for p in (0, 1):  # each parity holds every one of its m sums
        assert sorted(set(pos[:, p::2].ravel().tolist())) == list(range(m))
