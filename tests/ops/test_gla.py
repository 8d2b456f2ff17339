"""gla: every implementation against a float64 NumPy loop of the recurrence (and its VJP)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.ops import gla
from ssmjax.testing import assert_allclose

B_, H, DK, DV = 2, 2, 4, 6  # batch, heads, key dim, value dim
SCALE = DK**-0.5
GRAD_NAMES = ("q", "k", "v", "g", "h0")


def gla_numpy(q, k, v, g, h0, go, gS, scale=SCALE):
    """Float64 loop of the GLA recurrence and its hand-written backward pass.

    Returns ``o, final_state, grads`` with ``grads`` the VJP of ``(o, final_state)`` with
    cotangents ``(go, gS)``, ordered as ``GRAD_NAMES``.
    """
    b, length, h, dk = q.shape
    dv = v.shape[-1]
    a = np.exp(g)
    S = np.empty((b, length + 1, h, dk, dv))
    S[:, 0] = h0
    for t in range(length):
        S[:, t + 1] = a[:, t, :, :, None] * S[:, t] + k[:, t, :, :, None] * v[:, t, :, None, :]
    o = scale * np.einsum("blhk,blhkv->blhv", q, S[:, 1:])

    gq = scale * np.einsum("blhkv,blhv->blhk", S[:, 1:], go)
    gk, gv, gg = np.zeros_like(k), np.zeros_like(v), np.zeros_like(g)
    dS = gS.copy()
    for t in reversed(range(length)):
        dS = dS + scale * q[:, t, :, :, None] * go[:, t, :, None, :]
        gk[:, t] = np.einsum("bhkv,bhv->bhk", dS, v[:, t])
        gv[:, t] = np.einsum("bhkv,bhk->bhv", dS, k[:, t])
        gg[:, t] = a[:, t] * np.einsum("bhkv,bhkv->bhk", dS, S[:, t])
        dS = a[:, t, :, :, None] * dS
    return o, S[:, -1], (gq, gk, gv, gg, dS)


def make_inputs(rng, length, *, dtype=jnp.float32, strong=False):
    """Random q, k, v, g in ``dtype`` and an fp32 h0; ``strong``: gates down to -5 per step."""
    q = rng.standard_normal((B_, length, H, DK))
    k = rng.standard_normal((B_, length, H, DK))
    v = rng.standard_normal((B_, length, H, DV))
    if strong:
        g = -rng.uniform(0.0, 5.0, (B_, length, H, DK))
    else:
        g = -rng.exponential(0.2, (B_, length, H, DK))
    h0 = rng.standard_normal((B_, H, DK, DV))
    return [jnp.asarray(a, dtype) for a in (q, k, v, g)] + [jnp.asarray(h0, jnp.float32)]


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def run(impl, args, chunk_size, go, gS):
    """Forward with final state, and the VJP with cotangents on both outputs (one jit)."""
    f = lambda q, k, v, g, h0: gla(
        q, k, v, g, h0=h0, chunk_size=chunk_size, return_final_state=True, implementation=impl
    )
    (o, sT), vjp = jax.vjp(f, *args)
    grads = vjp((go.astype(o.dtype), gS.astype(sT.dtype)))
    return o, sT, grads


def check_against_numpy(impl, rng, length, chunk_size=64, *, dtype=jnp.float32, strong=False):
    args = make_inputs(rng, length, dtype=dtype, strong=strong)
    go = np.asarray(jnp.asarray(rng.standard_normal((B_, length, H, DV)), dtype), np.float64)
    gS = rng.standard_normal((B_, H, DK, DV))
    o, sT, grads = run(impl, args, chunk_size, go, gS)
    o_ref, s_ref, g_ref = gla_numpy(*(np.asarray(a, np.float64) for a in args), go, gS)

    assert o.dtype == dtype and sT.dtype == jnp.float32
    n = max(length, DK, DV)
    assert_allclose(o, o_ref, dtype=dtype, n=n, err_msg="o")
    assert_allclose(sT, s_ref, dtype=dtype, n=n, err_msg="final state")
    for name, arg, grad, ref in zip(GRAD_NAMES, args, grads, g_ref):
        assert grad.shape == arg.shape and grad.dtype == arg.dtype, name
        assert_allclose(grad, ref, dtype=dtype, n=n, kind="grad", err_msg=f"d{name}")
    return o, sT, grads


@pytest.mark.parametrize(
    "impl,length,chunk_size",
    [
        ("sequential", 1, 64),
        ("sequential", 63, 64),
        ("sequential", 256, 64),
        ("parallel", 1, 64),
        ("parallel", 63, 64),
        ("chunked", 1, 64),
        ("chunked", 63, 64),  # padded to one 64-step chunk
        ("chunked", 256, 64),  # 64 divides 256
        ("chunked", 256, 48),  # 48 does not divide 256; three 16-step sub-chunks
        ("chunked", 37, 8),  # chunk (and sub-chunk) smaller than 16
    ],
)
def test_matches_numpy_fp32(impl, length, chunk_size, rng):
    check_against_numpy(impl, rng, length, chunk_size)


@pytest.mark.parametrize("impl", ["sequential", "parallel", "chunked"])
def test_matches_numpy_bf16(impl, rng):
    check_against_numpy(impl, rng, 63, 32, dtype=jnp.bfloat16)


@pytest.mark.parametrize("impl,length", [("parallel", 63), ("chunked", 256)])
def test_strong_decay_is_stable(impl, length, rng):
    """Gates down to -5 per step: cumulative log-gates reach about -300 within a chunk."""
    o, sT, grads = check_against_numpy(impl, rng, length, strong=True)
    for a in (o, sT, *grads):
        assert np.all(np.isfinite(np.asarray(a, np.float64)))


def test_long_sequence_chunked_matches_numpy_and_sequential(rng):
    args = make_inputs(rng, 1000)
    go = rng.standard_normal((B_, 1000, H, DV))
    gS = rng.standard_normal((B_, H, DK, DV))
    o, sT, grads = run("chunked", args, 64, go, gS)  # 64 does not divide 1000
    o_seq, s_seq, grads_seq = run("sequential", args, 64, go, gS)
    o_ref, s_ref, g_ref = gla_numpy(*(np.asarray(a, np.float64) for a in args), go, gS)
    for actual in ((o, sT, *grads), (o_seq, s_seq, *grads_seq)):
        assert_allclose(actual[0], o_ref, n=1000, err_msg="o")
        assert_allclose(actual[1], s_ref, n=1000, err_msg="final state")
        for name, grad, ref in zip(GRAD_NAMES, actual[2:], g_ref):
            assert_allclose(grad, ref, n=1000, kind="grad", err_msg=f"d{name}")
    assert_allclose(o, o_seq, n=1000)
    assert_allclose(sT, s_seq, n=1000)


def test_defaults_and_optional_arguments(rng):
    q, k, v, g, _ = make_inputs(rng, 70)
    zeros_state = np.zeros((B_, H, DK, DV))
    zeros_out = np.zeros(v.shape)
    o_ref, _, _ = gla_numpy(
        *(np.asarray(a, np.float64) for a in (q, k, v, g)), zeros_state, zeros_out, zeros_state
    )
    o = gla(q, k, v, g)  # auto: chunked (l > 64), no h0, no final state
    assert isinstance(o, jax.Array) and o.shape == v.shape and o.dtype == q.dtype
    assert_allclose(o, o_ref, n=70)
    o_short = gla(q[:, :20], k[:, :20], v[:, :20], g[:, :20])  # auto: parallel
    assert_allclose(o_short, o_ref[:, :20], n=20)
    o_scaled = gla(q, k, v, g, scale=2 * SCALE, implementation=["chunked", "sequential"])
    assert_allclose(o_scaled, 2 * o_ref, n=70)


def test_jit_and_vmap(rng):
    q, k, v, g, _ = make_inputs(rng, 40)
    f = jax.jit(lambda *a: gla(*a, chunk_size=16, implementation="chunked"))
    o = f(q, k, v, g)
    assert_allclose(o, gla(q, k, v, g, implementation="sequential"), n=40)
    ov = jax.vmap(lambda *a: f(*(x[None] for x in a)))(q, k, v, g)
    assert_allclose(ov[:, 0], o, n=40)


@pytest.mark.parametrize(
    "which,match",
    [
        ("q_rank", "q must have shape"),
        ("empty", "sequence length must be at least 1"),
        ("k", "k must have the shape of q"),
        ("g", "g must have the shape of q"),
        ("v", "v must have shape"),
        ("h0", "h0 must have shape"),
        ("chunk_size", "chunk_size must be a positive int"),
        ("chunk_multiple", "chunk_size must be a multiple of 16"),
    ],
)
def test_bad_shapes_raise(which, match, rng):
    q, k, v, g, h0 = make_inputs(rng, 5)
    kw = dict(q=q, k=k, v=v, g=g, h0=h0, chunk_size=32)
    kw |= {
        "q_rank": dict(q=q[..., 0]),
        "empty": dict(q=q[:, :0], k=k[:, :0], v=v[:, :0], g=g[:, :0]),
        "k": dict(k=k[:, :-1]),
        "g": dict(g=g[..., :-1]),
        "v": dict(v=v[:, :, :-1]),
        "h0": dict(h0=h0[..., :-1]),
        "chunk_size": dict(chunk_size=-1),
        "chunk_multiple": dict(chunk_size=40),
    }[which]
    with pytest.raises(ValueError, match=match):
        gla(**kw)


def test_unknown_implementation_raises(rng):
    q, k, v, g, _ = make_inputs(rng, 5)
    with pytest.raises(ValueError, match="unknown implementation 'flash'"):
        gla(q, k, v, g, implementation="flash")
