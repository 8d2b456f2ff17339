"""``linear_recurrence_planes``: every implementation equals the complex sequential
reference on random inputs (forward and the gradients of the planes), with ``h0``,
``reverse``, ``reset`` and a time-invariant ``a``; clear errors for bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.ops import linear_recurrence, linear_recurrence_planes
from ssmjax.testing import assert_allclose


def _inputs(rng, batch, length, d, lti):
    a_shape = (d,) if lti else (batch, length, d)
    a = rng.uniform(0.5, 0.99, size=a_shape) * np.exp(1j * rng.uniform(0, np.pi, size=a_shape))
    cplx = lambda s: jnp.asarray(rng.normal(size=s) + 1j * rng.normal(size=s), jnp.complex64)
    return jnp.asarray(a, jnp.complex64), cplx((batch, length, d)), cplx((batch, d))


@pytest.mark.parametrize("impl", ["sequential", "associative", "chunked", "pallas"])
@pytest.mark.parametrize(
    ("lti", "reverse", "use_reset"), [(True, False, False), (False, True, True)]
)
def test_planes_equal_complex_reference(rng, impl, lti, reverse, use_reset):
    batch, length, d = 2, 11, 3
    a, b, h0 = _inputs(rng, batch, length, d, lti)
    reset = jnp.asarray(rng.random((batch, length)) < 0.3) if use_reset else None
    ct = (jnp.asarray(rng.normal(size=b.shape)), jnp.asarray(rng.normal(size=b.shape)))

    def planes(b_re, b_im, h0):
        return linear_recurrence_planes(
            a, b_re, b_im, h0, reverse=reverse, reset=reset, implementation=impl, chunk_size=4
        )

    def reference(b_re, b_im, h0):
        h = linear_recurrence(
            a,
            jax.lax.complex(b_re, b_im),
            h0,
            reverse=reverse,
            reset=reset,
            implementation="sequential",
        )
        return jnp.real(h), jnp.imag(h)

    args = (jnp.real(b), jnp.imag(b), h0)
    out, vjp = jax.vjp(planes, *args)
    out_ref, vjp_ref = jax.vjp(reference, *args)
    for x, y in zip(out, out_ref, strict=True):
        assert x.shape == b.shape and x.dtype == jnp.float32
        assert_allclose(x, y, dtype=jnp.float32, n=length)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct), strict=True):
        assert_allclose(g, g_ref, dtype=jnp.float32, n=length, kind="grad")


def test_planes_bad_arguments(rng):
    a, b, _ = _inputs(rng, 2, 5, 3, True)
    b_re, b_im = jnp.real(b), jnp.imag(b)
    with pytest.raises(ValueError, match="one shape"):
        linear_recurrence_planes(a, b_re, b_im[..., :2])
    with pytest.raises(TypeError, match="real float planes"):
        linear_recurrence_planes(a, b, b_im)
    with pytest.raises(ValueError, match="h0 must have shape"):
        linear_recurrence_planes(a, b_re, b_im, jnp.zeros((2, 4), jnp.complex64))
    with pytest.raises(ValueError, match="reset must have shape"):
        linear_recurrence_planes(a, b_re, b_im, reset=jnp.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="unknown implementation"):
        linear_recurrence_planes(a, b_re, b_im, implementation="magic")
    h_re, h_im = linear_recurrence_planes(a, b_re[:, :0], b_im[:, :0])
    assert h_re.shape == (2, 0, 3) and h_im.shape == (2, 0, 3)
