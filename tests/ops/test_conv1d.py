"""Tests for ssmjax.ops.conv1d: causal depthwise conv, streaming cache, decode step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.ops.conv1d import causal_conv1d, causal_conv1d_step
from ssmjax.testing import assert_allclose


def conv_numpy(x, weight, bias=None, activation=None, cache=None):
    """Direct float64 loop: y_t = sum_k weight[k] x_{t-(w-1)+k} (+ bias), zero/cached past."""
    x = np.asarray(x, np.float64)
    weight = np.asarray(weight, np.float64)
    b, length, d = x.shape
    w = weight.shape[0]
    past = np.zeros((b, w - 1, d)) if cache is None else np.asarray(cache, np.float64)
    y = np.zeros((b, length, d))
    for t in range(length):
        for k in range(w):
            s = t - (w - 1) + k
            y[:, t] += weight[k] * (x[:, s] if s >= 0 else past[:, w - 1 + s])
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    if activation == "silu":
        y = y / (1.0 + np.exp(-y))
    return y


def conv_pad_reference(x, weight, bias):
    """Simple JAX reference for gradients: left zero padding and a sum of shifted slices."""
    w, length = weight.shape[0], x.shape[1]
    xp = jnp.pad(x, [(0, 0), (w - 1, 0), (0, 0)])
    y = sum(weight[k][None, None] * xp[:, k : k + length] for k in range(w))
    return jax.nn.silu(y + bias[None, None])


def _inputs(rng, b=2, length=13, d=5, w=4, dtype=np.float32):
    x = rng.normal(size=(b, length, d)).astype(dtype)
    weight = rng.normal(size=(w, d)).astype(dtype)
    bias = rng.normal(size=(d,)).astype(dtype)
    return x, weight, bias


@pytest.mark.parametrize("w", [1, 2, 4])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_numpy(rng, w, use_bias, activation):
    x, weight, bias = _inputs(rng, w=w)
    bias = bias if use_bias else None
    y = causal_conv1d(x, weight, bias, activation=activation)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_allclose(y, conv_numpy(x, weight, bias, activation), n=w)


def test_matches_torch_conv_semantics(rng):
    """Conv1d(groups=d, padding=w-1), cropped to the first l outputs, as a cross-correlation."""
    x, weight, bias = _inputs(rng, length=9, d=3, w=4)
    w_torch = weight.T[:, None, :]  # (d, 1, w): how PyTorch / Mamba store it
    xt = np.pad(x.astype(np.float64), [(0, 0), (3, 3), (0, 0)])
    full = np.stack(
        [np.einsum("bkd,dk->bd", xt[:, t : t + 4], w_torch[:, 0, :]) for t in range(9 + 3)], 1
    )
    full = full + bias.astype(np.float64)
    assert_allclose(causal_conv1d(x, weight, bias), full[:, :9], n=4)


def test_bf16(rng):
    x, weight, bias = _inputs(rng, dtype=np.float32)
    xb, wb, bb = (jnp.asarray(v, jnp.bfloat16) for v in (x, weight, bias))
    y = causal_conv1d(xb, wb, bb, activation="silu")
    assert y.dtype == jnp.bfloat16
    ref = conv_numpy(*(np.asarray(v.astype(jnp.float32)) for v in (xb, wb, bb)), "silu")
    assert_allclose(y, ref, dtype=jnp.bfloat16, n=4)


@pytest.mark.parametrize("w", [1, 4])
def test_streaming_with_cache_equals_full(rng, w):
    x, weight, bias = _inputs(rng, length=17, w=w)
    full = causal_conv1d(x, weight, bias, activation="silu")
    cache, outs = None, []
    for lo, hi in [(0, 2), (2, 3), (3, 10), (10, 17)]:  # chunks shorter and longer than w-1
        y, cache = causal_conv1d(
            x[:, lo:hi], weight, bias, activation="silu", cache=cache, return_cache=True
        )
        assert cache.shape == (x.shape[0], w - 1, x.shape[2])
        outs.append(y)
    assert_allclose(jnp.concatenate(outs, axis=1), full, n=w)
    np.testing.assert_array_equal(cache, x[:, x.shape[1] - (w - 1) :])


def test_cache_replaces_zero_padding(rng):
    x, weight, bias = _inputs(rng, length=6, w=4)
    cache = rng.normal(size=(2, 3, 5)).astype(np.float32)
    y = causal_conv1d(x, weight, bias, cache=cache)
    assert_allclose(y, conv_numpy(x, weight, bias, cache=cache), n=4)


def test_step_by_step_equals_full(rng):
    x, weight, bias = _inputs(rng, length=9, w=4)
    full = causal_conv1d(x, weight, bias, activation="silu")
    step = jax.jit(causal_conv1d_step, static_argnames="activation")
    cache = jnp.zeros((2, 3, 5), jnp.float32)
    ys = []
    for t in range(x.shape[1]):
        y_t, cache = step(x[:, t], weight, bias, cache, activation="silu")
        ys.append(y_t)
    assert_allclose(jnp.stack(ys, axis=1), full, n=4)
    # The step cache is interchangeable with the chunked cache.
    _, chunk_cache = causal_conv1d(x, weight, bias, return_cache=True)
    np.testing.assert_array_equal(cache, chunk_cache)


def test_gradients_match_pad_reference(rng):
    x, weight, bias = _inputs(rng, length=11, w=4)
    ct = rng.normal(size=x.shape).astype(np.float32)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)
    ours = jax.jit(jax.grad(loss(lambda *a: causal_conv1d(*a, activation="silu")), (0, 1, 2)))
    ref = jax.jit(jax.grad(loss(conv_pad_reference), argnums=(0, 1, 2)))
    for g, r in zip(ours(x, weight, bias), ref(x, weight, bias)):
        assert_allclose(g, r, n=11, kind="grad")


def test_gradients_through_cache(rng):
    x, weight, bias = _inputs(rng, length=7, w=4)
    cache = rng.normal(size=(2, 3, 5)).astype(np.float32)
    ct = rng.normal(size=x.shape).astype(np.float32)

    def ours(x, cache):
        return jnp.sum(causal_conv1d(x, weight, bias, cache=cache) * ct)

    def ref(x, cache):  # the cache is the true past of x: a "valid" conv over [cache, x]
        xx = jnp.concatenate([cache, x], axis=1)
        y = sum(weight[k][None, None] * xx[:, k : k + 7] for k in range(4)) + bias[None, None]
        return jnp.sum(y * ct)

    grads = jax.jit(jax.grad(ours, (0, 1)))(x, cache)
    for g, r in zip(grads, jax.jit(jax.grad(ref, (0, 1)))(x, cache)):
        assert_allclose(g, r, n=7, kind="grad")


def test_bad_shapes_raise(rng):
    x, weight, bias = _inputs(rng)
    with pytest.raises(ValueError, match="x must have shape"):
        causal_conv1d(x[0], weight)
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv1d(x, weight[:, :2])
    with pytest.raises(ValueError, match="bias must have shape"):
        causal_conv1d(x, weight, bias[:2])
    with pytest.raises(ValueError, match="cache must have shape"):
        causal_conv1d(x, weight, cache=jnp.ones((2, 4, 5)))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, weight, activation="relu")
    with pytest.raises(ValueError, match="cache must have shape"):
        causal_conv1d_step(x[:, 0], weight, bias, jnp.ones((2, 2, 5)))
    with pytest.raises(ValueError, match="x_t must have shape"):
        causal_conv1d_step(x, weight, bias, jnp.ones((2, 3, 5)))
