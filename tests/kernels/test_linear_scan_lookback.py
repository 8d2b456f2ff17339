"""``layout="lookback"`` (the single-read L-parallel scan with a decoupled look-back) against
the sequential reference, forward and every gradient, in interpret mode; its lowering for
CUDA on this CPU (the Triton kernels, which interpret mode does not compile); its limits.

The interpreter runs programs one after another in ticket order, so every earlier chunk has
published its inclusive end state when a look-back starts: with ``INCLUSIVE_EVERY`` raised,
most chunks publish only their aggregate and the look-backs have to add those up, as they
do on a GPU when earlier chunks are still running.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels._linear_scan_lookback as lb
from pallas_kernels.linear_scan import linear_scan, linear_scan_planes
from ssmjax.ops import linear_recurrence
from ssmjax.testing import assert_allclose

pytestmark = pytest.mark.usefixtures("fast_compile")

CASES = {
    # dtype, length, chunks, reverse, a form, with h0, inclusive_every
    "c64-odd-partial-chunk": ("complex64", 37, 5, False, "shared", True, 1),
    "c64-rev-perseq": ("complex64", 37, 5, True, "per_seq", True, 1),
    "c64-aggregates": ("complex64", 45, 9, False, "shared", True, 4),
    "c64-rev-aggregates-no-h0": ("complex64", 40, 8, True, "per_seq", False, 3),
    "c64-one-chunk": ("complex64", 9, 1, False, "shared", True, 1),
    "c64-length-1": ("complex64", 1, 1, True, "shared", True, 1),
    "fp32-odd": ("float32", 50, 7, False, "per_seq", True, 2),
    "fp32-rev": ("float32", 33, 11, True, "shared", False, 1),
    "bf16": ("bfloat16", 29, 4, False, "shared", True, 2),
}


def _inputs(rng, dtype, batch, length, d, form):
    shape = (batch, length, d)
    a_shape = {"shared": (d,), "per_seq": (batch, d)}[form]
    mag = rng.uniform(0.5, 0.99, size=a_shape)
    if dtype == "complex64":
        cplx = lambda s: rng.normal(size=s) + 1j * rng.normal(size=s)
        a = mag * np.exp(1j * rng.uniform(0, np.pi, size=a_shape))
        xs = (a, cplx(shape), cplx((batch, d)), cplx(shape))
        return (jnp.asarray(x, jnp.complex64) for x in xs)
    sign = rng.choice([-1.0, 1.0], size=a_shape)
    a = jnp.asarray(mag * sign, dtype)
    b = jnp.asarray(rng.normal(size=shape), dtype)
    return (
        a,
        b,
        jnp.asarray(rng.normal(size=(batch, d)), jnp.float32),
        jnp.asarray(rng.normal(size=shape), jnp.float32),
    )


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_lookback_matches_sequential(rng, monkeypatch, case):
    dtype, length, chunks, reverse, form, with_h0, every = case
    monkeypatch.setattr(lb, "INCLUSIVE_EVERY", every)
    batch, d = 2, 6  # d pads to one 8-channel block
    a, b, h0, ct = _inputs(rng, dtype, batch, length, d, form)
    h0 = h0 if with_h0 else None
    io = jnp.dtype(dtype)
    tol = jnp.bfloat16 if io == jnp.bfloat16 else jnp.float32

    def kernel(a, b, h0):
        return linear_scan(
            a, b, h0, reverse=reverse, interpret=True, layout="lookback", chunks=chunks
        )

    def reference(a, b, h0):
        wide = jnp.complex64 if io == jnp.complex64 else jnp.float32
        return linear_recurrence(
            a.astype(wide), b.astype(wide), h0, reverse=reverse, implementation="sequential"
        )

    h, vjp = jax.vjp(kernel, a, b, h0)
    h_ref, vjp_ref = jax.vjp(reference, a, b, h0)
    assert h.shape == b.shape and h.dtype == b.dtype
    assert_allclose(h, h_ref, dtype=tol, n=length)
    grads = vjp(ct.astype(h.dtype))
    grads_ref = vjp_ref(ct.astype(h_ref.dtype))
    for name, g, g_ref in zip(("a", "b", "h0"), grads, grads_ref, strict=True):
        if g_ref is None:
            continue
        assert g.shape == g_ref.shape, name
        n = length * batch if name == "a" else length
        assert_allclose(g, g_ref, dtype=tol, n=n, kind="grad", err_msg=name)


def test_lookback_planes_match_complex(rng):
    """``linear_scan_planes`` with the layout: the same planes as the complex call."""
    a, b, h0, _ = _inputs(rng, "complex64", 2, 21, 5, "shared")
    pair = lambda z: (jnp.real(z), jnp.imag(z))
    kw = dict(interpret=True, layout="lookback", chunks=3)
    h_re, h_im = linear_scan_planes(pair(a), pair(b), pair(h0), **kw)
    h = linear_scan(a, b, h0, **kw)
    np.testing.assert_array_equal(np.asarray(h_re), np.real(np.asarray(h)))
    np.testing.assert_array_equal(np.asarray(h_im), np.imag(np.asarray(h)))


def test_status_words_round_trip():
    """Published values decode to themselves, and none encodes to the unset word."""
    x = jnp.asarray([0.0, -0.0, 1.5, -3.25e-38, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
    w = lb._encode(x)
    assert w.dtype == jnp.int32 and not np.any(np.asarray(w) == lb._UNSET)
    np.testing.assert_array_equal(
        np.asarray(lb._decode(w)).view(np.int32), np.asarray(x).view(np.int32)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(a_time_varying=True), "time-invariant"),
        (dict(chunks=2), "at most 128 steps"),
        (dict(chunks=0), "chunks=0"),
    ],
)
def test_lookback_limits(rng, kwargs, match):
    length = 300
    a = jnp.full((length, 4) if kwargs.pop("a_time_varying", False) else (4,), 0.5)
    if a.ndim == 2:
        a = a[None]
    b = jnp.ones((1, length, 4))
    with pytest.raises(NotImplementedError, match=match):
        linear_scan(a, b, interpret=True, layout="lookback", **kwargs)


def _lowered(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize(
    ("dtype", "shape", "form", "reverse"),
    [
        ("complex64", (8, 4096, 256), "shared", False),
        ("complex64", (2, 1001, 512), "per_seq", True),
        ("float32", (8, 4096, 256), "shared", False),
        ("bfloat16", (4, 999, 256), "per_seq", True),
    ],
)
def test_lookback_lowers_to_triton(hopper, dtype, shape, form, reverse):
    """One Triton kernel forward, two for the gradient (forward and adjoint), each lowered
    to Triton IR for CUDA on this CPU: catches what the Triton lowering rejects."""
    batch, _, d = shape
    sds = jax.ShapeDtypeStruct
    a_shape = (d,) if form == "shared" else (batch, d)
    a, b = sds(a_shape, dtype), sds(shape, dtype)

    def f(a, b):
        return linear_scan(a, b, reverse=reverse, layout="lookback")

    def grad(a, b):
        loss = lambda *x: jnp.sum(jnp.abs(f(*x).astype(b.dtype)) ** 2).real
        return jax.grad(loss, argnums=(0, 1))(a, b)

    name = "__gpu$xla.gpu.triton"
    assert _lowered(f, a, b).count(name) == 1
    text = _lowered(grad, a, b)
    assert text.count(name) == 2
    assert text.count("linear_scan_lookback_bwd") >= 1
