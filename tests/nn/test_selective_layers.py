"""Mamba, Mamba-2 and GLA: modes agree, masks are exact, inits follow the papers.

Their state is a :class:`SelectiveState` pytree (conv cache + SSM state) and their ops have
their own implementation names, so they have these tests instead of the generic ones of
``test_layer_modes.py``. Compilation dominates the run time: every layer call goes through
one of two jitted helpers, and XLA optimisations are off while these tests run.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_cases import apply

import ssmjax.nn as snn
from ssmjax.nn import SelectiveState, SSMParam, SSMStepParam
from ssmjax.nn._selective import reverse_sequences
from ssmjax.testing import assert_allclose

LENGTHS = [1, 33, 512]


def _mamba(bidirectional=False, implementation=None, **kw):
    kw = {"d_state": 4, **kw}
    return snn.Mamba(
        6, bidirectional=bidirectional, implementation=implementation, rngs=nnx.Rngs(0), **kw
    )


def _mamba2(bidirectional=False, implementation=None, **kw):
    kw = {"d_state": 8, "headdim": 4, "ngroups": 2, "chunk_size": 16, **kw}
    return snn.Mamba2(
        8, bidirectional=bidirectional, implementation=implementation, rngs=nnx.Rngs(0), **kw
    )


def _gla(bidirectional=False, implementation=None, **kw):
    kw = {"num_heads": 2, "use_short_conv": True, **kw}
    return snn.GLA(
        8, bidirectional=bidirectional, implementation=implementation, rngs=nnx.Rngs(0), **kw
    )


CASES = {"mamba": _mamba, "mamba2": _mamba2, "gla": _gla}
IMPLEMENTATIONS = {
    "mamba": ["associative", "chunked"],
    "mamba2": ["chunked"],
    "gla": ["parallel", "chunked"],
}


# These tests are dominated by XLA compile time; unoptimised programs compile ~2x faster.
pytestmark = pytest.mark.usefixtures("fast_compile")


@nnx.jit
def run_steps(layer, x, state):
    """Token by token with ``layer.step`` (a ``lax.scan`` over time)."""

    def body(s, x_t):
        y_t, s = layer.step(x_t, s)
        return s, y_t

    state, ys = jax.lax.scan(body, state, jnp.moveaxis(x, 1, 0))
    return jnp.moveaxis(ys, 0, 1), state


# Inputs are drawn with NumPy and results compared in NumPy: eager JAX ops on new shapes
# would each cost a compilation.


def random_input(rng, layer, batch, length, dtype=np.float32):
    return rng.standard_normal((batch, length, layer.d_model)).astype(dtype)


def random_state(rng, layer, batch):
    zeros = layer.init_state(batch)
    conv = None if zeros.conv is None else rng.standard_normal(zeros.conv.shape)
    ssm = 0.5 * rng.standard_normal(zeros.ssm.shape)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), SelectiveState(conv, ssm))


def prefix_mask(lengths, total):
    return np.arange(total)[None, :] < np.asarray(lengths)[:, None]


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def assert_states_close(actual, desired, n, err_msg=""):
    assert (actual.conv is None) == (desired.conv is None), err_msg
    if desired.conv is not None:
        assert actual.conv.dtype == jnp.float32
        assert_allclose(actual.conv, desired.conv, n=n, err_msg=f"conv {err_msg}")
    assert actual.ssm.dtype == jnp.float32
    assert_allclose(actual.ssm, desired.ssm, n=n, err_msg=f"ssm {err_msg}")


def n_params(cls, *args, **kwargs):
    """Parameter count of ``cls(*args, **kwargs)``, without drawing any parameter."""
    layer = nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0)))
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))


# -- modes agree ------------------------------------------------------------------------------


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", CASES)
def test_full_equals_step_and_chunks(rng, name, length):
    layer = CASES[name]()
    x = random_input(rng, layer, 2, length)
    s0 = random_state(rng, layer, 2)  # a non-zero start also checks how the caches are used
    y_full, final = to_numpy(apply(layer, x, state=s0, return_state=True))
    assert y_full.shape == x.shape and y_full.dtype == x.dtype

    y_steps, state = run_steps(layer, x, s0)
    assert_allclose(y_steps, y_full, n=length, err_msg="step")
    assert_states_close(state, final, length, "step")

    if length > 1:
        # 33: a piece shorter than the conv width, then pieces of one chunk of Mamba-2 (16);
        # 512: two halves (Mamba's automatic scan is "associative" on them, "chunked" on the
        # whole). Sizes 1 and 16 recur across tests, so they compile once.
        cuts = [0, 1, 17, 33] if length == 33 else [0, length // 2, length]
        state, pieces = s0, []
        for lo, hi in itertools.pairwise(cuts):
            y, state = apply(layer, x[:, lo:hi], state=state, return_state=True)
            pieces.append(np.asarray(y))
        assert_allclose(np.concatenate(pieces, 1), y_full, n=length, err_msg="chunks")
        assert_states_close(state, final, length, "chunks")


def test_gla_without_short_conv_has_no_conv_state(rng):
    layer = _gla(use_short_conv=False)
    x = random_input(rng, layer, 2, 33)
    assert layer.init_state(2).conv is None
    y_full, final = apply(layer, x, state=layer.init_state(2), return_state=True)
    y_steps, state = run_steps(layer, x, layer.init_state(2))
    assert_allclose(y_steps, y_full, n=33)
    assert_states_close(state, final, 33)


@pytest.mark.parametrize("name", CASES)
def test_padded_batch_equals_each_sequence_alone(rng, name):
    lengths, total = [33, 16, 1], 33
    mask = prefix_mask(lengths, total)
    for bidirectional in (False, True):
        layer = CASES[name](bidirectional)
        x = random_input(rng, layer, len(lengths), total)  # padding holds random values
        if bidirectional:
            y = np.asarray(apply(layer, x, mask))
        else:
            y, state = to_numpy(apply(layer, x, mask, layer.init_state(3), return_state=True))
        for i, n in enumerate(lengths):
            msg = f"sequence {i}, bidirectional={bidirectional}"
            # The sequence alone (unpadded), twice in a batch of two: the shapes and call of
            # test_full_equals_step_and_chunks, so no new compilation.
            x_alone = np.repeat(x[i : i + 1, :n], 2, axis=0)
            if bidirectional:
                alone = np.asarray(apply(layer, x_alone))
            else:
                alone, alone_state = to_numpy(
                    apply(layer, x_alone, state=layer.init_state(2), return_state=True)
                )
                one = jax.tree.map(lambda a, i=i: np.repeat(a[i : i + 1], 2, axis=0), state)
                assert_states_close(one, alone_state, total, msg)
            assert_allclose(y[i, :n], alone[0], n=total, err_msg=msg)
            assert np.all(y[i, n:] == 0), msg


def test_reverse_sequences_is_a_per_sequence_involution():
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    lengths = jnp.array([5, 3])
    r = np.asarray(reverse_sequences(jnp.asarray(x), lengths))
    np.testing.assert_array_equal(r[0], x[0, ::-1])
    np.testing.assert_array_equal(r[1, :3], x[1, 2::-1])
    np.testing.assert_array_equal(r[1, 3:], x[1, 3:])
    np.testing.assert_array_equal(reverse_sequences(jnp.asarray(r), lengths), x)
    np.testing.assert_array_equal(reverse_sequences(jnp.asarray(x), None), x[:, ::-1])


@pytest.mark.parametrize("name", CASES)
def test_implementations_agree(rng, name):
    # 70 steps: several chunks of every op (Mamba 64, Mamba-2 16 here, GLA 64), with a
    # mask and a non-zero start so that every path of the layer goes through each op.
    ref_layer = CASES[name](implementation="sequential")
    x = random_input(rng, ref_layer, 2, 70)
    s0 = random_state(rng, ref_layer, 2)
    mask = prefix_mask([70, 45], 70)
    ref, ref_state = to_numpy(apply(ref_layer, x, mask, s0, return_state=True))
    for impl in IMPLEMENTATIONS[name]:
        y, state = apply(CASES[name](implementation=impl), x, mask, s0, return_state=True)
        assert_allclose(y, ref, n=70, err_msg=impl)
        assert_states_close(state, ref_state, 70, impl)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", CASES)
def test_gradients_reach_every_parameter(rng, name, dtype):
    layer = CASES[name](bidirectional=True)  # every parameter, both directions
    x = random_input(rng, layer, 2, 33, dtype)
    mask = prefix_mask([33, 20], 33)

    @nnx.jit
    def loss_and_grad(layer, x, mask):
        def loss(layer):
            y = layer(x, mask)
            assert y.dtype == dtype
            return jnp.mean(y.astype(jnp.float32) ** 2)

        return nnx.value_and_grad(loss)(layer)

    value, grads = loss_and_grad(layer, x, mask)
    assert np.isfinite(float(value))
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == len(jax.tree.leaves(nnx.state(layer, nnx.Param)))
    for path, g in leaves:
        g = np.asarray(g)
        assert g.dtype == np.float32, path
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


# -- inits follow the reference formulas -------------------------------------------------------
# Values are checked on the small layers above (already drawn: no new compilations) and the
# defaults on abstract layers (``nnx.eval_shape``: nothing is drawn).


def _dt(layer):
    return np.asarray(jax.nn.softplus(layer.dt_bias[...]))


def test_mamba_init():
    default = nnx.eval_shape(lambda: snn.Mamba(40, rngs=nnx.Rngs(0)))
    e, n, r = 80, 16, math.ceil(40 / 16)  # d_state 16, expand 2, dt_rank ceil(d_model / 16)
    assert (default.d_inner, default.d_state, default.dt_rank, default.d_conv) == (e, n, r, 4)
    assert default.x_proj.kernel.shape == (e, r + 2 * n) and default.dt_proj.kernel.shape == (r, e)
    assert default.A_log.shape == (e, n) and default.conv_weight.shape == (4, e)
    assert default.dt_proj.bias is None and default.in_proj.bias is None

    layer = _mamba()
    e, n, r = layer.d_inner, layer.d_state, layer.dt_rank
    for p in (layer.A_log, layer.D, layer.dt_bias):
        assert isinstance(p, SSMParam) and p.dtype == jnp.float32
    assert isinstance(layer.dt_bias, SSMStepParam)
    expected = np.log(np.broadcast_to(np.arange(1, n + 1, dtype=np.float32), (e, n)))
    np.testing.assert_allclose(layer.A_log[...], expected, rtol=1e-7)  # S4D-Real
    np.testing.assert_array_equal(layer.D[...], np.ones(e))
    dt = _dt(layer)
    assert dt.shape == (e,) and dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert np.log(dt).std() > 0.5  # log-uniform, not constant
    kernel = np.abs(np.asarray(layer.dt_proj.kernel[...]))
    assert kernel.max() <= r**-0.5 and kernel.max() > 0.5 * r**-0.5  # U[-R^-1/2, R^-1/2]
    # dt_init_floor bounds dt from below.
    np.testing.assert_allclose(_dt(_mamba(dt_min=1e-6, dt_max=2e-6)), 1e-4, rtol=1e-4)


def test_mamba2_init():
    default = nnx.eval_shape(lambda: snn.Mamba2(32, headdim=16, rngs=nnx.Rngs(0)))
    e, h, n = 64, 4, 128  # d_state 128, expand 2, ngroups 1, chunk_size 256
    assert (default.d_inner, default.nheads, default.d_state) == (e, h, n)
    assert (default.ngroups, default.chunk_size, default.d_conv) == (1, 256, 4)
    assert default.in_proj.kernel.shape == (32, 2 * e + 2 * n + h)
    assert default.conv_weight.shape == (4, e + 2 * n)

    layer = _mamba2(bidirectional=True)
    h = layer.nheads
    for p in (layer.A_log, layer.D, layer.dt_bias, layer.reverse.A_log):
        assert isinstance(p, SSMParam) and p.shape == (h,) and p.dtype == jnp.float32
    assert isinstance(layer.dt_bias, SSMStepParam)
    a_log = np.concatenate([layer.A_log[...], layer.reverse.A_log[...]])
    assert a_log.min() >= 0 and a_log.max() <= np.log(16) + 1e-6  # A ~ U[1, 16]
    assert len(np.unique(a_log)) == 2 * h
    np.testing.assert_array_equal(layer.D[...], np.ones(h))
    dt = np.concatenate([_dt(layer), _dt(layer.reverse)])
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    np.testing.assert_array_equal(layer.norm_weight[...], np.ones(layer.d_inner))
    np.testing.assert_allclose(_dt(_mamba2(dt_min=1e-6, dt_max=2e-6)), 1e-4, rtol=1e-4)


def test_gla_init_and_gate_normalizer(rng):
    default = nnx.eval_shape(lambda: snn.GLA(16, rngs=nnx.Rngs(0)))  # expand_k 0.5, 4 heads
    assert (default.key_dim, default.value_dim, default.num_heads) == (8, 16, 4)
    assert (default.head_k_dim, default.head_v_dim) == (2, 4)
    assert default.gk_proj_a.kernel.shape == (16, 16) and default.gk_proj_a.bias is None
    assert default.gk_proj_b.kernel.shape == (16, 8) and default.gk_proj_b.bias.shape == (8,)
    assert default.conv_weight is None and default.norm_weight.shape == (4,)

    layer = _gla(use_short_conv=False)
    assert layer.init_state(2).conv is None
    np.testing.assert_array_equal(layer.gk_proj_b.bias[...], 0)
    x = rng.standard_normal((2, 5, layer.d_model)).astype(np.float32)
    qkv = layer._project_in(jnp.asarray(x))["qkv"]
    *_, log_a = layer._heads(qkv, x, layer)
    a, b = (np.asarray(p.kernel[...], np.float64) for p in (layer.gk_proj_a, layer.gk_proj_b))
    gk = x @ a @ b + np.asarray(layer.gk_proj_b.bias[...])
    expected = -np.logaddexp(0.0, -gk) / 16  # log α = logsigmoid(gk) / 16
    np.testing.assert_allclose(log_a.reshape(expected.shape), expected, rtol=1e-5, atol=1e-7)
    clamped = _gla(use_short_conv=False, clamp_min=-0.05)
    *_, log_a = clamped._heads(qkv, x, clamped)
    expected = np.maximum(expected, -0.05)
    np.testing.assert_allclose(log_a.reshape(expected.shape), expected, rtol=1e-5, atol=1e-7)


def test_parameter_counts():
    d = 8
    for bidir, k in ((False, 1), (True, 2)):
        # Mamba: 3dE + k E (W + 2R + 3N + 3); E = 16, N = 4, R = 1, W = 4.
        assert n_params(snn.Mamba, d, 4, bidirectional=bidir) == 3 * d * 16 + k * 16 * (
            4 + 2 + 12 + 3
        )
        # Mamba-2: d(2E + 2GN + H) + Ed + E + k[(W + 1)(E + 2GN) + 3H]; G = 2, N = 4, H = 4.
        m2 = n_params(snn.Mamba2, d, 4, headdim=4, ngroups=2, bidirectional=bidir)
        assert m2 == d * (32 + 16 + 4) + 16 * d + 16 + k * (5 * (16 + 16) + 12)
        # GLA: 2dK + 2dV + dV + dv + k (dr + rK + K + W(2K + V)); K = 4, V = 8, r = 16.
        g = n_params(snn.GLA, d, 2, use_short_conv=True, bidirectional=bidir)
        assert g == 2 * d * 4 + 3 * d * 8 + 4 + k * (d * 16 + 16 * 4 + 4 + 4 * 16)
    assert n_params(snn.Mamba, 768) == 3_770_880  # one mamba-130m layer


def test_registered_names():
    assert snn.get_layer("mamba") is snn.Mamba
    assert snn.get_layer("Mamba2") is snn.Mamba2
    assert snn.get_layer("gla") is snn.GLA


# -- clear errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_bad_inputs_raise_clear_errors(name):
    layer = CASES[name]()
    d = layer.d_model
    x = jnp.ones((2, 5, d))
    with pytest.raises(ValueError, match="x must have shape"):
        layer(jnp.ones((2, 5, d + 1)))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(x, mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="suffix padding"):
        layer(x, mask=jnp.array([[True, False, True, True, True]] * 2))
    with pytest.raises(ValueError, match="state must have shape"):
        layer(x, state=layer.init_state(3))
    with pytest.raises(ValueError, match="state must be a SelectiveState"):
        layer(x, state=jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="x_t must have shape"):
        layer.step(x, layer.init_state(2))
    bidir = CASES[name](bidirectional=True)
    for call in (
        lambda: bidir.init_state(2),
        lambda: bidir.step(x[:, 0], layer.init_state(2)),
        lambda: bidir(x, return_state=True),
        lambda: bidir(x, state=layer.init_state(2)),
    ):
        with pytest.raises(ValueError, match="bidirectional layer has no recurrent state"):
            call()


def test_bad_configs_raise_clear_errors():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        snn.Mamba(8, 0, rngs=rngs)
    with pytest.raises(ValueError, match="dt_min"):
        snn.Mamba(8, dt_min=0.2, dt_max=0.1, rngs=rngs)
    with pytest.raises(ValueError, match="multiple of headdim"):
        snn.Mamba2(8, headdim=5, rngs=rngs)
    with pytest.raises(ValueError, match="multiple of ngroups"):
        snn.Mamba2(8, headdim=4, ngroups=3, rngs=rngs)
    with pytest.raises(ValueError, match="A_init_range"):
        snn.Mamba2(8, headdim=4, A_init_range=(0.0, 16.0), rngs=rngs)
    with pytest.raises(ValueError, match="key dim"):
        snn.GLA(8, num_heads=3, rngs=rngs)
    with pytest.raises(ValueError, match="gate_logit_normalizer"):
        snn.GLA(8, 2, gate_logit_normalizer=0.0, rngs=rngs)
    with pytest.raises(ValueError, match="unknown implementation"):
        apply(_mamba(implementation="nope"), np.ones((1, 3, 6), np.float32))
