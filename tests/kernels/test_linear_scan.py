"""The Pallas linear_scan kernel (interpret mode on CPU) against the sequential reference.

Forward output and every gradient (random cotangents) at odd lengths, with h0, reverse,
complex64 and bf16 I/O. ``unroll=4`` in some cases makes the 33-step sequences run the
prefetching block loop (8 blocks) plus a one-step tail; the default ``unroll=16`` covers
the single-block and tail-only paths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.linear_scan import linear_scan
from ssmjax.ops import linear_recurrence
from ssmjax.testing import assert_allclose

CASES = [
    # dtype, length, reverse, state shape, unroll
    ("float32", 1, False, (3,), 16),
    ("float32", 7, True, (2, 3), 16),
    ("float32", 33, False, (5,), 4),
    ("float32", 33, True, (40,), 16),
    ("complex64", 7, False, (3,), 16),
    ("complex64", 33, True, (4,), 4),
    ("bfloat16", 33, False, (3,), 4),
]


def make_inputs(rng, dtype, shape):
    a = rng.uniform(0.5, 0.99, size=shape)
    b = rng.normal(size=shape)
    h0 = rng.normal(size=(shape[0], *shape[2:]))
    ct = rng.normal(size=shape)
    if dtype == "complex64":
        a = a * np.exp(1j * rng.uniform(0, np.pi, size=shape))
        b = b + 1j * rng.normal(size=shape)
        h0 = h0 + 1j * rng.normal(size=h0.shape)
        ct = ct + 1j * rng.normal(size=shape)
        cast = lambda v: jnp.asarray(v, jnp.complex64)
        return cast(a), cast(b), cast(h0), cast(ct)
    io = jnp.dtype(dtype)
    return (
        jnp.asarray(a, io),
        jnp.asarray(b, io),
        jnp.asarray(h0, jnp.float32),
        jnp.asarray(ct, jnp.float32),
    )


@pytest.mark.parametrize(("dtype", "length", "reverse", "state", "unroll"), CASES)
def test_matches_sequential(rng, dtype, length, reverse, state, unroll):
    a, b, h0, ct = make_inputs(rng, dtype, (2, length, *state))

    def kernel(a, b, h0):
        return linear_scan(a, b, h0, reverse=reverse, interpret=True, unroll=unroll)

    def reference(a, b, h0):
        return linear_recurrence(a, b, h0, reverse=reverse, implementation="sequential")

    h, vjp = jax.vjp(kernel, a, b, h0)
    h_ref, vjp_ref = jax.vjp(reference, a, b, h0)
    assert h.shape == b.shape and h.dtype == b.dtype
    tol_dtype = jnp.bfloat16 if dtype == "bfloat16" else h_ref.dtype
    assert_allclose(h, h_ref, dtype=tol_dtype, n=length)
    grads = vjp(ct.astype(h.dtype))
    grads_ref = vjp_ref(ct.astype(h_ref.dtype))
    for name, g, g_ref, x in zip("a b h0".split(), grads, grads_ref, (a, b, h0), strict=True):
        assert g.dtype == x.dtype, name
        assert_allclose(g, g_ref, dtype=tol_dtype, n=length, kind="grad", err_msg=name)


def test_final_state_and_default_h0(rng):
    a, b, _, _ = make_inputs(rng, "float32", (3, 9, 4))
    for reverse in (False, True):
        h, h_last = linear_scan(a, b, reverse=reverse, interpret=True, return_final_state=True)
        h_ref = linear_recurrence(a, b, reverse=reverse, implementation="sequential")
        assert_allclose(h, h_ref, n=9)
        assert_allclose(h_last, h_ref[:, 0 if reverse else -1], n=9)


def test_through_the_dispatcher(rng):
    a, b, h0, ct = make_inputs(rng, "float32", (2, 7, 3))
    run = lambda impl: jax.vjp(
        lambda a, b, h0: linear_recurrence(a, b, h0, implementation=impl), a, b, h0
    )
    (h, vjp), (h_ref, vjp_ref) = run("pallas"), run("sequential")
    assert_allclose(h, h_ref, n=7)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct), strict=True):
        assert_allclose(g, g_ref, n=7, kind="grad")


def test_fail_closed():
    x = jnp.ones((2, 5, 3))
    if jax.default_backend() != "gpu":
        with pytest.raises(NotImplementedError, match="needs a GPU"):
            linear_scan(x, x)
    with pytest.raises(NotImplementedError, match="dtypes"):
        linear_scan(x.astype(jnp.float16), x.astype(jnp.float16), interpret=True)
    with pytest.raises(NotImplementedError, match="powers of two"):
        linear_scan(x, x, interpret=True, block_d=24)
