"""S4 and S4D: initialisation, parameter counts, and convolution mode == recurrent mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ssmjax.nn as snn
from ssmjax.nn import SSMParam
from ssmjax.ops.hippo import nplr
from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

H = 4


def n_params(layer, kind=nnx.Param) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(layer, kind)))


def ssm_names(layer) -> set[str]:
    paths = jax.tree_util.tree_leaves_with_path(nnx.state(layer, SSMParam))
    return {str(path[0].key) for path, _ in paths}


@nnx.jit(static_argnames="recurrent")
def run(layer, x, mask=None, recurrent=False):
    """The layer's output; ``recurrent`` forces the recurrent form (``return_state=True``)."""
    return layer(x, mask, return_state=True)[0] if recurrent else layer(x, mask)


@nnx.jit(static_argnames="recurrent")
def grads(layer, x, recurrent=False):
    def loss(layer):
        return jnp.mean(jnp.sin(run(layer, x, recurrent=recurrent).astype(jnp.float32)))

    return nnx.grad(loss)(layer)


def assert_same_grads(g1, g2, n):
    leaves1 = jax.tree_util.tree_leaves_with_path(nnx.state(g1, nnx.Param))
    leaves2 = jax.tree.leaves(nnx.state(g2, nnx.Param))
    assert len(leaves1) == len(leaves2)
    for (path, a), b in zip(leaves1, leaves2):
        assert_allclose(a, b, n=n, kind="grad", err_msg=jax.tree_util.keystr(path))


# ---------------------------------------------------------------------------------------
# S4D
# ---------------------------------------------------------------------------------------


def test_s4d_lin_init_and_dt_range():
    layer = snn.S4D(H, 16, dt_min=1e-3, dt_max=1e-1, rngs=nnx.Rngs(0))
    n = np.arange(8)
    np.testing.assert_allclose(np.asarray(layer.A_imag[...]), np.tile(np.pi * n, (H, 1)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.log_A_real[...]), np.log(0.5), rtol=1e-6)
    dt = np.exp(np.asarray(layer.log_dt[...]))
    assert dt.shape == (H,) and np.all((dt >= 1e-3) & (dt <= 1e-1))
    assert layer.C.shape == (1, H, 8, 2) and layer.D.shape == (H,)
    # C ~ complex normal with N(0, 1/2) parts (checked loosely on a larger layer)
    big = snn.S4D(64, 64, rngs=nnx.Rngs(1))
    assert 0.4 < float(jnp.var(big.C[...])) < 0.6
    assert ssm_names(layer) == {"A_imag", "log_A_real", "log_dt"}


def test_s4d_other_inits():
    N = 8
    inv = snn.S4D(H, N, init="inv", rngs=nnx.Rngs(0))
    k = np.arange(N // 2)
    np.testing.assert_allclose(
        np.asarray(inv.A_imag[0]), N / np.pi * (N / (2 * k + 1) - 1), rtol=1e-6
    )
    real = snn.S4D(H, N, init="real", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.exp(np.asarray(real.log_A_real[0])), k + 1.0, rtol=1e-6)
    assert np.all(np.asarray(real.A_imag[...]) == 0)
    legs = snn.S4D(H, N, init="legs", rngs=nnx.Rngs(0))
    Lam, _, B, _ = nplr("legs", N)
    np.testing.assert_allclose(np.asarray(legs.A_imag[1]), Lam.imag, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(legs.B[1, :, 0]), B.real, rtol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("init", ["lin", "legs"])
def test_s4d_parameter_count(bidirectional, init):
    h, n = 6, 10
    layer = snn.S4D(h, n, init=init, bidirectional=bidirectional, rngs=nnx.Rngs(0))
    c = 2 if bidirectional else 1
    expected = h * n + h + c * h * n + h + (h * n if init == "legs" else 0)
    assert n_params(layer) == expected


@pytest.mark.parametrize(
    ("init", "disc", "bidirectional"),
    [("lin", "zoh", False), ("lin", "zoh", True), ("legs", "bilinear", True)],
)
def test_s4d_conv_equals_scan_forward_and_gradients(key, init, disc, bidirectional):
    kwargs = dict(init=init, discretization=disc, bidirectional=bidirectional)
    conv = snn.S4D(H, 8, mode="conv", rngs=nnx.Rngs(3), **kwargs)
    scan = snn.S4D(H, 8, mode="scan", implementation="sequential", rngs=nnx.Rngs(3), **kwargs)
    length = 20
    x = jax.random.normal(key, (2, length, H))
    assert_allclose(run(conv, x), run(scan, x), n=length)
    assert_same_grads(grads(conv, x), grads(scan, x), n=length)


def test_s4d_kernel_matches_impulse_response():
    layer = snn.S4D(H, 8, rngs=nnx.Rngs(0))
    impulse = jnp.zeros((1, 20, H)).at[:, 0].set(1.0)
    y = layer(impulse, return_state=True)[0][0]  # recurrence
    k = layer.kernel(20)[0].T
    assert_allclose(k.at[0].add(layer.D[...]), y, n=20)


# ---------------------------------------------------------------------------------------
# S4
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dt_transform", ["softplus", "exp"])
def test_s4_init(dt_transform):
    layer = snn.S4(
        H, 8, l_max=64, dt_min=1e-3, dt_max=1e-1, dt_transform=dt_transform, rngs=nnx.Rngs(0)
    )
    Lam, P, B, _ = nplr("legs", 8)
    np.testing.assert_allclose(-np.exp(np.asarray(layer.A_real[...])), -0.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.A_imag[0]), Lam.imag, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.P[0, 0, :, 0]), P[0].real, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.B[0, :, 0]), B.real, rtol=1e-5, atol=1e-6)
    dt = np.asarray(layer.dt())
    assert dt.shape == (H,) and np.all((dt >= 1e-3 * 0.999) & (dt <= 1e-1 * 1.001))
    # With l_max=None, C itself is the parameter, complex normal with N(0, 1/2) parts.
    big = snn.S4(64, 64, l_max=None, rngs=nnx.Rngs(1))
    assert 0.4 < float(jnp.var(big.C[...])) < 0.6
    # With l_max set, the same draw of C is stored as C~ = C (I - A_bar^l_max).
    tied = snn.S4(H, 8, l_max=64, dt_transform=dt_transform, rngs=nnx.Rngs(5))
    free = snn.S4(H, 8, l_max=None, dt_transform=dt_transform, rngs=nnx.Rngs(5))
    assert_allclose(tied.recurrent().c, jax.lax.complex(free.C[0, ..., 0], free.C[0, ..., 1]), n=64)
    assert ssm_names(layer) == {"A_real", "A_imag", "P", "B", "inv_dt"}


def test_s4_lra_listops_parameter_count():
    # configs/experiment/lra/s4-listops.yaml: d_model 256, d_state 4, n_ssm 1, bidirectional.
    # Reference shapes: inv_dt (256, 1); A_real, A_imag (1, 2); B (1, 1, 2) and P (1, 1, 2)
    # complex; C (2, 256, 2) complex; D (1, 256) -> 256 + 2 + 2 + 4 + 4 + 2048 + 256.
    layer = snn.S4(256, 4, n_ssm=1, bidirectional=True, l_max=64, rngs=nnx.Rngs(0))
    assert n_params(layer) == 2572
    assert n_params(layer, SSMParam) == 256 + 2 + 2 + 4 + 4


def test_s4_optimizer_groups():
    from ssmjax.optim import OptimConfig, param_groups

    groups = param_groups(snn.S4(H, 8, l_max=16, rngs=nnx.Rngs(0)), OptimConfig(preset="s4"))
    assert groups == {
        "['A_real']": "ssm", "['A_imag']": "ssm", "['P']": "ssm", "['B']": "ssm",
        "['inv_dt']": "ssm", "['C']": "regular", "['D']": "regular",
    }  # fmt: skip
    layer = snn.S4D(H, 8, rngs=nnx.Rngs(0))
    groups = param_groups(layer, OptimConfig(preset="s4", dt_global=True))
    assert groups["['log_dt']"] == "regular" and groups["['A_imag']"] == "ssm"


@pytest.mark.parametrize(("n_ssm", "rank", "measure"), [(None, 1, "legs"), (2, 2, "legt")])
def test_s4_parameter_count_formula(n_ssm, rank, measure):
    h, n = 6, 8
    layer = snn.S4(h, n, n_ssm=n_ssm, rank=rank, measure=measure, l_max=16, rngs=nnx.Rngs(0))
    s = h if n_ssm is None else n_ssm
    assert n_params(layer) == 2 * h + (2 + rank) * s * n + h * n


@pytest.mark.parametrize(
    ("measure", "l_max", "length"),
    [
        ("legs", 32, 20),
        ("legs", 32, 32),  # length == l_max
        ("legs", 8, 20),  # length > l_max: the kernel of the same system at length 20
        ("legs", None, 20),  # C learned directly
        ("lagt", 32, 20),
        # not "fourier": its (uncontrollable) eigenvalue 0, clamped to -1e-4, makes both the
        # C <-> C~ conversion and the Cauchy sums at frequency 0 ill-conditioned in float32;
        # tests/ops/test_ssm_kernel.py checks it in float64.
    ],
)
def test_s4_conv_equals_recurrent(key, measure, l_max, length):
    layer = snn.S4(H, 8, measure=measure, n_ssm=2, l_max=l_max, rngs=nnx.Rngs(2))
    x = jax.random.normal(key, (2, length, H))
    y_conv = run(layer, x)
    y_rec = run(layer, x, recurrent=True)
    assert_allclose(y_conv, y_rec, n=length * 8)


def test_s4_conv_equals_recurrent_gradients(key):
    layer = snn.S4(H, 8, n_ssm=2, l_max=32, rngs=nnx.Rngs(2))
    x = jax.random.normal(key, (2, 20, H))
    assert_same_grads(grads(layer, x), grads(layer, x, recurrent=True), n=20 * 8)


def test_s4_bidirectional_is_forward_plus_reverse(key):
    bi = snn.S4(H, 8, l_max=32, bidirectional=True, rngs=nnx.Rngs(0))
    uni = snn.S4(H, 8, l_max=32, rngs=nnx.Rngs(0))
    for name in ("A_real", "A_imag", "P", "B", "inv_dt", "D"):
        getattr(uni, name)[...] = getattr(bi, name)[...]
    x = jax.random.normal(key, (2, 20, H))
    uni.C[...] = bi.C[0:1]
    y_fwd = uni(x)
    uni.C[...] = bi.C[1:2]
    y_rev = jnp.flip(uni(jnp.flip(x, 1)), 1)
    d = bi.D[...][None, None]
    assert_allclose(bi(x), y_fwd + y_rev - d * x, n=20)


def test_s4_step_with_precomputed_params_and_errors(key):
    layer = snn.S4(H, 8, l_max=32, rngs=nnx.Rngs(0))
    x = jax.random.normal(key, (2, H))
    s0 = layer.init_state(2)
    y1, s1 = layer.step(x, s0)
    y2, s2 = layer.step(x, s0, params=layer.recurrent())
    assert_allclose(y1, y2)
    assert_allclose(s1, s2)
    with pytest.raises(NotImplementedError, match="not diagonal"):
        snn.S4(H, 8, implementation="associative", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="n_ssm"):
        snn.S4(H, 8, n_ssm=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="bidirectional"):
        snn.S4(H, 8, bidirectional=True, rngs=nnx.Rngs(0))(jnp.ones((1, 3, H)), return_state=True)
