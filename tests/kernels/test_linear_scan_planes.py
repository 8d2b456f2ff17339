"""``linear_scan_planes`` (complex recurrence on real/imaginary planes) against the sequential
complex reference, forward and the gradients of every plane, in interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.linear_scan import linear_scan_planes
from ssmjax.ops import linear_recurrence
from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

CASES = [
    # length, reverse, a form, with h0, chunks
    (7, False, "tv", True, 1),
    (33, True, "tv", False, 1),
    (9, False, "lti", True, 1),
    (33, True, "lti_per_seq", True, 1),
    (32, False, "tv", True, 4),
    (32, True, "lti", True, 2),
    (17, False, "tv", True, 1, "bfloat16"),
]


def _pair(z):
    return jnp.real(z), jnp.imag(z)


@pytest.mark.parametrize("case", CASES)
def test_planes_match_sequential(rng, case):
    length, reverse, form, with_h0, chunks, *dtype = case
    io = jnp.dtype(dtype[0] if dtype else "float32")
    tol = jnp.bfloat16 if io == jnp.bfloat16 else jnp.float32
    batch, d = 2, 5
    shape = (batch, length, d)
    a_shape = {"tv": shape, "lti": (d,), "lti_per_seq": (batch, d)}[form]
    r = rng.uniform(0.5, 0.99, size=a_shape) * np.exp(1j * rng.uniform(0, np.pi, size=a_shape))
    cplx = lambda s: rng.normal(size=s) + 1j * rng.normal(size=s)
    a = tuple(x.astype(io) for x in _pair(jnp.asarray(r, jnp.complex64)))
    b = tuple(x.astype(io) for x in _pair(jnp.asarray(cplx(shape), jnp.complex64)))
    h0 = _pair(jnp.asarray(cplx((batch, d)), jnp.complex64)) if with_h0 else None
    ct = _pair(jnp.asarray(cplx(shape), jnp.complex64))
    ct_last = _pair(jnp.asarray(cplx((batch, d)), jnp.complex64))

    def kernel(a, b, h0):
        return linear_scan_planes(
            a, b, h0, reverse=reverse, interpret=True, chunks=chunks, return_final_state=True
        )

    def reference(a, b, h0):
        h0c = None if h0 is None else jax.lax.complex(*h0)
        f32 = lambda pair: jax.lax.complex(*(x.astype(jnp.float32) for x in pair))
        h = linear_recurrence(
            f32(a),
            f32(b),
            h0c,
            reverse=reverse,
            implementation="sequential",
        )
        return _pair(h), _pair(h[:, 0 if reverse else -1])

    out, vjp = jax.vjp(kernel, a, b, h0)
    out_ref, vjp_ref = jax.vjp(reference, a, b, h0)
    for x, x_ref in zip(jax.tree.leaves(out), jax.tree.leaves(out_ref), strict=True):
        assert x.shape == x_ref.shape
        assert_allclose(x, x_ref, dtype=tol, n=length)
    cast = lambda pair, dtype: tuple(x.astype(dtype) for x in pair)
    grads = vjp((cast(ct, io), cast(ct_last, io)))
    grads_ref = vjp_ref((cast(ct, jnp.float32), cast(ct_last, jnp.float32)))
    for name, g, g_ref in zip(("a", "b", "h0"), grads, grads_ref, strict=True):
        if g_ref is None:
            continue
        n = length * batch if name == "a" and form != "tv" else length
        for x, x_ref in zip(g, g_ref, strict=True):
            assert x.shape == x_ref.shape, name
            assert_allclose(x, x_ref, dtype=tol, n=n, kind="grad", err_msg=name)


def test_planes_bad_arguments(rng):
    b = (jnp.ones((1, 4, 3)), jnp.ones((1, 4, 3)))
    a = (jnp.full((3,), 0.5), jnp.zeros((3,)))
    with pytest.raises(ValueError, match="pair"):
        linear_scan_planes(a[0], b, interpret=True)
    with pytest.raises(ValueError, match="one shape"):
        linear_scan_planes(a, (b[0], jnp.ones((1, 4, 2))), interpret=True)
    with pytest.raises(NotImplementedError, match="dtype"):
        linear_scan_planes(a, (b[0].astype(jnp.complex64), b[1]), interpret=True)
