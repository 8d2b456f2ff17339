"""Causal depthwise 1-D convolution over time, with a cache for streaming and decoding.

This is the short convolution in front of Mamba's selective scan (width 4). For ``x`` of
shape ``(b, l, d)`` and ``weight`` of shape ``(w, d)``::

    y_t = sum_{k=0}^{w-1} weight[k] * x_{t - (w-1) + k}  (+ bias)

with ``x_s = 0`` for ``s < 0`` (or, with a ``cache``, the previous chunk's last ``w - 1``
inputs). ``weight[w-1]`` multiplies the current input.

Relation to PyTorch (and Mamba): ``nn.Conv1d(d, d, w, groups=d, padding=w-1)`` applied to
``x`` of shape ``(b, d, l)`` and cropped to its first ``l`` outputs computes the same thing
with ``weight_torch`` of shape ``(d, 1, w)`` where ``weight = weight_torch[:, 0, :].T``;
mamba_ssm's ``causal_conv1d_fn`` takes ``(d, w)``, i.e. ``weight = weight_mamba.T``.

The convolution is written as ``w`` shifted multiply-adds, which XLA fuses into one pass
over ``x`` (``w`` is small). Arithmetic is float32 or wider; outputs are in ``x.dtype``.
"""

import jax
import jax.numpy as jnp

__all__ = ["causal_conv1d", "causal_conv1d_step"]

_ACTIVATIONS = {None: None, "silu": jax.nn.silu, "swish": jax.nn.silu}


def _activation(name):
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu'; got {name!r}")
    return _ACTIVATIONS[name]


def _check_params(weight, bias, d):
    if weight.ndim != 2 or weight.shape[1] != d or weight.shape[0] < 1:
        raise ValueError(f"weight must have shape (w, d) with w >= 1, d={d}; got {weight.shape}")
    if bias is not None and bias.shape != (d,):
        raise ValueError(f"bias must have shape (d,) = {(d,)}; got {bias.shape}")


def _compute_dtype(*arrays):
    return jnp.result_type(*(a.dtype for a in arrays if a is not None), jnp.float32)


def causal_conv1d(
    x: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None = None,
    *,
    activation: str | None = None,
    cache: jax.Array | None = None,
    return_cache: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Depthwise causal convolution over time (axis 1).

    Args:
      x: input ``(b, l, d)``.
      weight: per-channel filters ``(w, d)``; ``weight[w-1]`` multiplies the current step.
        From PyTorch ``Conv1d(groups=d)`` weights ``(d, 1, w)``: ``weight_torch[:, 0, :].T``.
      bias: ``(d,)`` or ``None``.
      activation: ``None`` or ``"silu"``, applied after the bias.
      cache: ``(b, w-1, d)``, the last ``w - 1`` inputs before ``x`` (oldest first), which
        replace the zero left padding; ``None`` means zeros (start of a sequence).
      return_cache: also return the new cache, the last ``w - 1`` inputs seen (including
        those of ``cache`` when ``l < w - 1``), to pass to the next call.

    Returns:
      ``y`` of shape ``(b, l, d)`` in ``x.dtype``; with ``return_cache``, ``(y, cache)``
      with ``cache`` of shape ``(b, w-1, d)`` in ``x.dtype``.

    Raises:
      ValueError: inconsistent shapes or an unknown activation.

    >>> import jax.numpy as jnp
    >>> x = jnp.arange(1.0, 6.0).reshape(1, 5, 1)
    >>> weight = jnp.array([[1.0], [10.0], [100.0]])  # w = 3
    >>> causal_conv1d(x, weight)[0, :, 0]
    Array([100., 210., 321., 432., 543.], dtype=float32)
    >>> y1, cache = causal_conv1d(x[:, :2], weight, return_cache=True)
    >>> y2 = causal_conv1d(x[:, 2:], weight, cache=cache)
    >>> jnp.concatenate([y1, y2], axis=1)[0, :, 0]
    Array([100., 210., 321., 432., 543.], dtype=float32)
    """
    x, weight = jnp.asarray(x), jnp.asarray(weight)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (b, l, d); got {x.shape}")
    b, length, d = x.shape
    bias = None if bias is None else jnp.asarray(bias)
    _check_params(weight, bias, d)
    act = _activation(activation)
    w = weight.shape[0]
    if cache is None:
        cache = jnp.zeros((b, w - 1, d), x.dtype)
    else:
        cache = jnp.asarray(cache)
        if cache.shape != (b, w - 1, d):
            raise ValueError(
                f"cache must have shape (b, w-1, d) = {(b, w - 1, d)}; got {cache.shape}"
            )
    dtype = _compute_dtype(x, weight, bias)
    xp = jnp.concatenate([cache.astype(x.dtype), x], axis=1)  # (b, w - 1 + l, d)
    xpf = xp.astype(dtype)
    wf = weight.astype(dtype)
    y = jnp.zeros((b, length, d), dtype)
    for k in range(w):
        y = y + wf[k][None, None] * xpf[:, k : k + length]
    if bias is not None:
        y = y + bias.astype(dtype)[None, None]
    if act is not None:
        y = act(y)
    y = y.astype(x.dtype)
    if return_cache:
        return y, xp[:, xp.shape[1] - (w - 1) :]
    return y


def causal_conv1d_step(
    x_t: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None,
    cache: jax.Array,
    activation: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One decoding step of :func:`causal_conv1d`, in O(w d) per sequence.

    Args:
      x_t: the current input ``(b, d)``.
      weight: ``(w, d)``, as in :func:`causal_conv1d`.
      bias: ``(d,)`` or ``None``.
      cache: ``(b, w-1, d)``, the previous ``w - 1`` inputs, oldest first (zeros at the
        start of a sequence).
      activation: ``None`` or ``"silu"``.

    Returns:
      ``(y_t, new_cache)``: ``y_t`` of shape ``(b, d)`` in ``x_t.dtype`` and the cache shifted
      by one step, ``(b, w-1, d)`` in ``x_t.dtype``.

    Raises:
      ValueError: inconsistent shapes or an unknown activation.

    >>> import jax.numpy as jnp
    >>> weight = jnp.array([[1.0], [10.0], [100.0]])
    >>> cache = jnp.zeros((1, 2, 1))
    >>> ys = []
    >>> for t in range(1, 6):
    ...     y_t, cache = causal_conv1d_step(jnp.full((1, 1), float(t)), weight, None, cache)
    ...     ys.append(float(y_t[0, 0]))
    >>> ys
    [100.0, 210.0, 321.0, 432.0, 543.0]
    """
    x_t, weight, cache = jnp.asarray(x_t), jnp.asarray(weight), jnp.asarray(cache)
    if x_t.ndim != 2:
        raise ValueError(f"x_t must have shape (b, d); got {x_t.shape}")
    b, d = x_t.shape
    bias = None if bias is None else jnp.asarray(bias)
    _check_params(weight, bias, d)
    act = _activation(activation)
    w = weight.shape[0]
    if cache.shape != (b, w - 1, d):
        raise ValueError(f"cache must have shape (b, w-1, d) = {(b, w - 1, d)}; got {cache.shape}")
    dtype = _compute_dtype(x_t, weight, bias)
    window = jnp.concatenate([cache.astype(x_t.dtype), x_t[:, None]], axis=1)  # (b, w, d)
    y = jnp.sum(window.astype(dtype) * weight.astype(dtype)[None], axis=1)
    if bias is not None:
        y = y + bias.astype(dtype)[None]
    if act is not None:
        y = act(y)
    return y.astype(x_t.dtype), window[:, 1:]
