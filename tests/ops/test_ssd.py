"""ssd: every implementation against a float64 NumPy loop of the recurrence (and its VJP)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.ops import ssd
from ssmjax.testing import assert_allclose

B_, H, P, N = 2, 4, 4, 6  # batch, heads, head dim, state size
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "h0")


def ssd_numpy(x, dt, A, B, C, D, h0, gy, gh):
    """Float64 loop of the SSD recurrence and its hand-written backward pass.

    Returns ``y, final_state, grads`` with ``grads`` the VJP of ``(y, final_state)`` with
    cotangents ``(gy, gh)``, ordered as ``GRAD_NAMES``.
    """
    b, length, h, p = x.shape
    g, n = B.shape[2:]
    r = h // g
    Bh, Ch = np.repeat(B, r, axis=2), np.repeat(C, r, axis=2)
    Dh = D.reshape(h, -1)
    a = np.exp(dt * A)  # (b, l, h)
    hs = np.empty((b, length + 1, h, p, n))
    hs[:, 0] = h0
    for t in range(length):
        inp = (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        hs[:, t + 1] = a[:, t, :, None, None] * hs[:, t] + inp
    y = np.einsum("blhpn,blhn->blhp", hs[:, 1:], Ch) + Dh * x

    gx = gy * Dh
    gdt, gA = np.zeros_like(dt), np.zeros_like(A)
    gBh = np.zeros_like(Bh)
    gCh = np.einsum("blhpn,blhp->blhn", hs[:, 1:], gy)
    dh = gh.copy()
    for t in reversed(range(length)):
        dh = dh + gy[:, t, :, :, None] * Ch[:, t, :, None, :]
        gx[:, t] += dt[:, t, :, None] * np.einsum("bhpn,bhn->bhp", dh, Bh[:, t])
        gBh[:, t] = dt[:, t, :, None] * np.einsum("bhpn,bhp->bhn", dh, x[:, t])
        g_log_decay = a[:, t] * np.einsum("bhpn,bhpn->bh", dh, hs[:, t])  # d/d(dt * A)
        gdt[:, t] = np.einsum("bhpn,bhp,bhn->bh", dh, x[:, t], Bh[:, t]) + g_log_decay * A
        gA += np.sum(g_log_decay * dt[:, t], axis=0)
        dh = a[:, t, :, None, None] * dh
    gD = np.sum(gy * x, axis=(0, 1))  # (h, p)
    gD = gD if D.shape == (h, p) else gD.sum(axis=-1)
    gB = gBh.reshape(b, length, g, r, n).sum(axis=3)
    gC = gCh.reshape(b, length, g, r, n).sum(axis=3)
    return y, hs[:, -1], (gx, gdt, gA, gB, gC, gD, dh)


def make_inputs(rng, length, *, g=1, dtype=jnp.float32, d_shape=(H,)):
    """Random inputs: activations (x, dt, B, C) in ``dtype``, parameters and h0 in fp32."""
    x = rng.standard_normal((B_, length, H, P))
    dt = rng.uniform(0.01, 0.3, (B_, length, H))
    A = -rng.uniform(0.5, 8.0, (H,))
    Bm = rng.standard_normal((B_, length, g, N))
    Cm = rng.standard_normal((B_, length, g, N))
    D = rng.standard_normal(d_shape)
    h0 = rng.standard_normal((B_, H, P, N))
    args = [jnp.asarray(a, dtype) for a in (x, dt)]
    args += [jnp.asarray(A, jnp.float32)]
    args += [jnp.asarray(a, dtype) for a in (Bm, Cm)]
    args += [jnp.asarray(a, jnp.float32) for a in (D, h0)]
    return args


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def run(impl, args, chunk_size, gy, gh):
    """Forward with final state, and the VJP with cotangents on both outputs (one jit)."""
    f = lambda x, dt, A, B, C, D, h0: ssd(
        x,
        dt,
        A,
        B,
        C,
        D,
        chunk_size=chunk_size,
        h0=h0,
        return_final_state=True,
        implementation=impl,
    )
    (y, hT), vjp = jax.vjp(f, *args)
    grads = vjp((gy.astype(y.dtype), gh.astype(hT.dtype)))
    return y, hT, grads


def check_against_numpy(impl, rng, length, chunk_size, *, g=1, dtype=jnp.float32, d_shape=(H,)):
    args = make_inputs(rng, length, g=g, dtype=dtype, d_shape=d_shape)
    gy = np.asarray(jnp.asarray(rng.standard_normal((B_, length, H, P)), dtype), np.float64)
    gh = rng.standard_normal((B_, H, P, N))
    y, hT, grads = run(impl, args, chunk_size, gy, gh)
    y_ref, h_ref, g_ref = ssd_numpy(*(np.asarray(a, np.float64) for a in args), gy, gh)

    assert y.dtype == dtype and hT.dtype == jnp.float32
    n = max(length, N, P)
    assert_allclose(y, y_ref, dtype=dtype, n=n, err_msg="y")
    assert_allclose(hT, h_ref, dtype=dtype, n=n, err_msg="final state")
    for name, arg, grad, ref in zip(GRAD_NAMES, args, grads, g_ref):
        assert grad.shape == arg.shape and grad.dtype == arg.dtype, name
        assert_allclose(grad, ref, dtype=dtype, n=n, kind="grad", err_msg=f"d{name}")
    return y, hT, grads


@pytest.mark.parametrize(
    "impl,length,chunk_size,g,d_shape",
    [
        ("sequential", 1, 256, 1, (H,)),
        ("sequential", 63, 256, 2, (H, P)),
        ("sequential", 256, 256, 1, (H,)),
        ("chunked", 1, 256, 2, (H,)),  # one chunk, shorter than chunk_size
        ("chunked", 63, 16, 1, (H, P)),  # 16 does not divide 63
        ("chunked", 256, 64, 2, (H, P)),  # 64 divides 256
        ("chunked", 256, 48, 1, (H,)),  # 48 does not divide 256
    ],
)
def test_matches_numpy_fp32(impl, length, chunk_size, g, d_shape, rng):
    check_against_numpy(impl, rng, length, chunk_size, g=g, d_shape=d_shape)


@pytest.mark.parametrize("impl,chunk_size", [("sequential", 16), ("chunked", 16)])
def test_matches_numpy_bf16(impl, chunk_size, rng):
    check_against_numpy(impl, rng, 63, chunk_size, g=2, dtype=jnp.bfloat16)


def test_long_sequence_chunked_matches_numpy_and_sequential(rng):
    args = make_inputs(rng, 1000, g=2)
    gy = rng.standard_normal((B_, 1000, H, P))
    gh = rng.standard_normal((B_, H, P, N))
    y, hT, grads = run("chunked", args, 128, gy, gh)  # 128 does not divide 1000
    y_seq, h_seq, grads_seq = run("sequential", args, 128, gy, gh)
    y_ref, h_ref, g_ref = ssd_numpy(*(np.asarray(a, np.float64) for a in args), gy, gh)
    for actual in ((y, hT, *grads), (y_seq, h_seq, *grads_seq)):
        assert_allclose(actual[0], y_ref, n=1000, err_msg="y")
        assert_allclose(actual[1], h_ref, n=1000, err_msg="final state")
        for name, grad, ref in zip(GRAD_NAMES, actual[2:], g_ref):
            assert_allclose(grad, ref, n=1000, kind="grad", err_msg=f"d{name}")
    assert_allclose(y, y_seq, n=1000)
    assert_allclose(hT, h_seq, n=1000)


def test_defaults_and_optional_arguments(rng):
    x, dt, A, Bm, Cm, _, _ = make_inputs(rng, 40, g=2)
    y = ssd(x, dt, A, Bm, Cm)  # auto (chunked), no D, no h0, no final state
    assert isinstance(y, jax.Array) and y.shape == x.shape and y.dtype == x.dtype
    zeros = np.zeros((H,))
    y_ref, _, _ = ssd_numpy(
        *(np.asarray(a, np.float64) for a in (x, dt, A, Bm, Cm)),
        zeros,
        np.zeros((B_, H, P, N)),
        np.zeros(x.shape),
        np.zeros((B_, H, P, N)),
    )
    assert_allclose(y, y_ref, n=40)
    y_seq = ssd(x, dt, A, Bm, Cm, implementation="sequential", chunk_size=8)
    y_chain = ssd(x, dt, A, Bm, Cm, implementation=["chunked", "sequential"], chunk_size=8)
    assert_allclose(y_seq, y_ref, n=40)
    assert_allclose(y_chain, y_ref, n=40)


def test_jit_and_vmap(rng):
    x, dt, A, Bm, Cm, D, _ = make_inputs(rng, 20)
    f = jax.jit(lambda *a: ssd(*a, chunk_size=8))
    y = f(x, dt, A, Bm, Cm, D)
    assert_allclose(y, ssd(x, dt, A, Bm, Cm, D, implementation="sequential"), n=20)
    yv = jax.vmap(lambda x, dt, B, C: ssd(x[None], dt[None], A, B[None], C[None], D, chunk_size=8))(
        x, dt, Bm, Cm
    )
    assert_allclose(yv[:, 0], y, n=20)


def test_chunked_state_passing_matches_full_sequence(rng):
    """Running two halves with the state passed through equals one call."""
    x, dt, A, Bm, Cm, D, h0 = make_inputs(rng, 48)
    y, hT = ssd(x, dt, A, Bm, Cm, D, h0=h0, chunk_size=16, return_final_state=True)
    state, halves = h0, []
    for part in (slice(0, 24), slice(24, 48)):  # 16 divides neither half
        y_part, state = ssd(
            x[:, part], dt[:, part], A, Bm[:, part], Cm[:, part], D,
            h0=state, chunk_size=16, return_final_state=True,
        )  # fmt: skip
        halves.append(y_part)
    assert_allclose(jnp.concatenate(halves, axis=1), y, n=48)
    assert_allclose(state, hT, n=48)


def _bad(x, dt, A, B, C, D, h0, which):
    bad = {
        "x_rank": dict(x=x[..., 0]),
        "empty": dict(x=x[:, :0], dt=dt[:, :0], B=B[:, :0], C=C[:, :0]),
        "dt": dict(dt=dt[:, :-1]),
        "A": dict(A=A[:-1]),
        "B_rank": dict(B=B[:, :, 0]),
        "B_len": dict(B=B[:, :-1], C=C[:, :-1]),
        "C": dict(C=C[..., :-1]),
        "groups": dict(B=jnp.tile(B, (1, 1, 3, 1)), C=jnp.tile(C, (1, 1, 3, 1))),
        "D": dict(D=jnp.ones((H + 1,))),
        "h0": dict(h0=h0[..., :-1]),
        "chunk_size": dict(chunk_size=0),
    }[which]
    kw = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, h0=h0, chunk_size=16) | bad
    return kw


@pytest.mark.parametrize(
    "which,match",
    [
        ("x_rank", "x must have shape"),
        ("empty", "sequence length must be at least 1"),
        ("dt", "dt must have shape"),
        ("A", "A must have shape"),
        ("B_rank", "B must have shape"),
        ("B_len", "B must have shape"),
        ("C", "C must have the shape of B"),
        ("groups", "multiple of the number of groups"),
        ("D", "D must have shape"),
        ("h0", "h0 must have shape"),
        ("chunk_size", "chunk_size must be a positive int"),
    ],
)
def test_bad_shapes_raise(which, match, rng):
    kw = _bad(*make_inputs(rng, 5, g=2), which)
    with pytest.raises(ValueError, match=match):
        ssd(**kw)


def test_unknown_implementation_raises(rng):
    x, dt, A, Bm, Cm, _, _ = make_inputs(rng, 5)
    with pytest.raises(ValueError, match="unknown implementation 'pallas_magic'"):
        ssd(x, dt, A, Bm, Cm, implementation="pallas_magic")
