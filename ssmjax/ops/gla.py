"""Gated linear attention (GLA).

Per head, with a ``(dk, dv)`` state and a data-dependent log-decay ``g_t <= 0`` per key
channel::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t
    o_t = (scale * q_t) S_t

Implementations (``implementation=``):

* ``"sequential"``: ``lax.scan`` over time, the reference.
* ``"parallel"``: the quadratic (attention-like) form with the full pairwise decay mask
  ``exp(G_t - G_s)``, ``G`` the cumulative log-gate; for short sequences (automatic choice
  when ``l <= 64``).
* ``"chunked"``: two-level chunking as in the GLA paper / flash-linear-attention's chunk GLA:
  chunks of ``chunk_size`` (64) steps split into sub-chunks of 16. Between sub-chunks the
  scores are matmuls of rescaled queries and keys whose decay factors are all ``<= 1``; inside
  a 16-step sub-chunk the pairwise decays are computed directly; chunk states are carried by a
  ``lax.scan`` over chunks (automatic choice when ``l > 64``).

Every exponent the parallel and chunked forms evaluate is ``<= 0`` (or masked to ``-inf``), so
arbitrarily strong gates underflow harmlessly instead of overflowing. All arithmetic is fp32
(float64 when every input is float64), whatever the input dtype.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ssmjax.ops._dispatch import dispatch

__all__ = ["gla"]

_HIGHEST = lax.Precision.HIGHEST
_SUB_CHUNK = 16
_PARALLEL_MAX_LEN = 64


def _einsum(spec, *operands):
    return jnp.einsum(spec, *operands, precision=_HIGHEST)


def _causal_mask(t, ndim, axes):
    """``(t, t)`` lower-triangular mask (incl. diagonal) placed on ``axes`` of an ndim array."""
    shape = [1] * ndim
    shape[axes[0]] = shape[axes[1]] = t
    return jnp.tril(jnp.ones((t, t), dtype=bool)).reshape(shape)


def _pairwise_scores(q, k, G, ndim_batch):
    """``A[..., t, s] = sum_c q[t, c] k[s, c] exp(G[t, c] - G[s, c])`` for ``t >= s``, else 0.

    ``q, k, G``: ``(..., t, dk)`` with ``ndim_batch`` leading dimensions. The exponent is taken
    only where ``t >= s`` (it is ``<= 0`` there), the rest is masked to ``-inf`` first.
    """
    t = q.shape[-2]
    expo = G[..., :, None, :] - G[..., None, :, :]  # (..., t, s, dk)
    mask = _causal_mask(t, ndim_batch + 3, (ndim_batch, ndim_batch + 1))
    decay = jnp.exp(jnp.where(mask, expo, -jnp.inf))
    return jnp.sum(q[..., :, None, :] * k[..., None, :, :] * decay, axis=-1)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _gla_reference(q, k, v, g, h0, scale, chunk_size):
    """``lax.scan`` over time; returns ``(o, final_state)``."""
    del chunk_size
    q = q * scale

    def step(state, inputs):
        q_t, k_t, v_t, g_t = inputs  # (b, h, dk) / (b, h, dv)
        state = jnp.exp(g_t)[..., None] * state + k_t[..., None] * v_t[..., None, :]
        return state, _einsum("bhk,bhkv->bhv", q_t, state)

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (q, k, v, g))
    final, o = lax.scan(step, h0, xs)
    return jnp.moveaxis(o, 0, 1), final


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _gla_parallel(q, k, v, g, h0, scale, chunk_size):
    """Quadratic form over the whole sequence; returns ``(o, final_state)``."""
    del chunk_size
    # (b, h, l, d) layout.
    q, k, v, g = (jnp.moveaxis(a, 1, 2) for a in (q, k, v, g))
    q = q * scale
    G = jnp.cumsum(g, axis=2)  # <= 0, decreasing in time
    scores = _pairwise_scores(q, k, G, ndim_batch=2)  # (b, h, t, s)
    o = _einsum("bhts,bhsv->bhtv", scores, v)
    o = o + _einsum("bhtk,bhkv->bhtv", q * jnp.exp(G), h0)
    G_last = G[:, :, -1:, :]
    final = jnp.exp(G_last[:, :, 0, :])[..., None] * h0
    final = final + _einsum("bhsk,bhsv->bhkv", k * jnp.exp(G_last - G), v)
    return jnp.moveaxis(o, 2, 1), final


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _gla_chunked(q, k, v, g, h0, scale, chunk_size):
    """Two-level chunked form; returns ``(o, final_state)``."""
    b, length, h, dk = q.shape
    dv = v.shape[-1]
    sub = min(_SUB_CHUNK, chunk_size)
    cs = min(chunk_size, -(-length // sub) * sub)  # no longer than the (sub-rounded) sequence
    nc, ns = -(-length // cs), cs // sub
    pad = nc * cs - length
    if pad:
        # g = 0 (decay 1) and k = v = 0 on padded steps: the final state is unchanged.
        padding = lambda a: jnp.pad(a, [(0, 0), (0, pad), (0, 0), (0, 0)])
        q, k, v, g = map(padding, (q, k, v, g))

    def split(a):  # (b, L, h, d) -> (b, h, c, i, t, d): chunk c, sub-chunk i, step t
        a = a.reshape(b, nc, ns, sub, h, a.shape[-1])
        return jnp.transpose(a, (0, 4, 1, 2, 3, 5))

    q, k, v, g = map(split, (q, k, v, g))
    q = q * scale
    G = jnp.cumsum(g.reshape(b, h, nc, cs, dk), axis=3).reshape(g.shape)  # within each chunk

    # Chunk states: S_{c+1} = exp(G_last) S_c + sum_s (k_s exp(G_last - G_s))^T v_s.
    G_last = G[:, :, :, -1, -1, :]  # (b, h, c, dk)
    k_to_end = k * jnp.exp(G_last[:, :, :, None, None, :] - G)
    chunk_states = _einsum("bhcisk,bhcisv->bhckv", k_to_end, v)

    def step(state, inputs):
        decay_c, state_c = inputs
        return decay_c[..., None] * state + state_c, state

    final, entering = lax.scan(
        step, h0, (jnp.moveaxis(jnp.exp(G_last), 2, 0), jnp.moveaxis(chunk_states, 2, 0))
    )
    entering = jnp.moveaxis(entering, 0, 2)  # (b, h, c, dk, dv): state before each chunk
    o = _einsum("bhcitk,bhckv->bhcitv", q * jnp.exp(G), entering)

    # Scores between sub-chunks j < i, relative to G_ref = G at the first step of sub-chunk i:
    # exp(G_t - G_s) = exp(G_t - G_ref) * exp(G_ref - G_s), both factors <= 1.
    G_ref = G[:, :, :, :, :1, :]  # (b, h, c, i, 1, dk)
    q_rel = q * jnp.exp(G - G_ref)
    expo = G_ref[:, :, :, :, None, :, :] - G[:, :, :, None, :, :, :]  # (b, h, c, i, j, s, dk)
    earlier = (jnp.arange(ns)[None, :] < jnp.arange(ns)[:, None]).reshape(1, 1, 1, ns, ns, 1, 1)
    k_rel = k[:, :, :, None] * jnp.exp(jnp.where(earlier, expo, -jnp.inf))
    scores = _einsum("bhcitk,bhcijsk->bhcitjs", q_rel, k_rel)
    # Scores inside each 16-step sub-chunk (the diagonal blocks), pairwise.
    diag = _pairwise_scores(q, k, G, ndim_batch=4)  # (b, h, c, i, t, s)
    eye = jnp.eye(ns, dtype=diag.dtype).reshape(1, 1, 1, ns, 1, ns, 1)
    scores = scores + diag[:, :, :, :, :, None, :] * eye
    scores = scores.reshape(b, h, nc, cs, cs)
    o = o.reshape(b, h, nc, cs, dv) + _einsum(
        "bhcts,bhcsv->bhctv", scores, v.reshape(b, h, nc, cs, dv)
    )
    o = jnp.transpose(o, (0, 2, 3, 1, 4)).reshape(b, nc * cs, h, dv)[:, :length]
    return o, final


_IMPLEMENTATIONS = {
    "sequential": _gla_reference,
    "parallel": _gla_parallel,
    "chunked": _gla_chunked,
}


def _check_shapes(q, k, v, g, h0, chunk_size):
    def fail(message):
        raise ValueError(f"gla: {message}")

    if q.ndim != 4:
        fail(f"q must have shape (b, l, h, dk), got {q.shape}")
    b, length, h, dk = q.shape
    if length < 1:
        fail(f"the sequence length must be at least 1, got q of shape {q.shape}")
    if k.shape != q.shape:
        fail(f"k must have the shape of q (b, l, h, dk) = {q.shape}, got {k.shape}")
    if g.shape != q.shape:
        fail(f"g must have the shape of q (b, l, h, dk) = {q.shape}, got {g.shape}")
    if v.ndim != 4 or v.shape[:3] != (b, length, h):
        fail(f"v must have shape (b, l, h, dv) with (b, l, h) = {(b, length, h)}, got {v.shape}")
    dv = v.shape[-1]
    if h0 is not None and h0.shape != (b, h, dk, dv):
        fail(f"h0 must have shape (b, h, dk, dv) = {(b, h, dk, dv)}, got {h0.shape}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        fail(f"chunk_size must be a positive int, got {chunk_size!r}")
    if chunk_size > _SUB_CHUNK and chunk_size % _SUB_CHUNK:
        fail(f"chunk_size must be a multiple of {_SUB_CHUNK} (or smaller), got {chunk_size}")


def gla(
    q,
    k,
    v,
    g,
    *,
    scale: float | None = None,
    h0=None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    implementation: str | Sequence[str] | None = None,
):
    """Gated linear attention with a per-key-channel, data-dependent decay.

    Per head, with state ``S_t`` of shape ``(dk, dv)``::

        S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,    o_t = (scale * q_t) S_t

    Args:
      q: queries, ``(b, l, h, dk)``.
      k: keys, ``(b, l, h, dk)``.
      v: values, ``(b, l, h, dv)``.
      g: log-decay, ``(b, l, h, dk)``, ``<= 0`` (e.g. ``logsigmoid(x) / 16`` as in GLA).
      scale: query scale; ``dk ** -0.5`` when ``None``.
      h0: optional initial state, ``(b, h, dk, dv)``; zeros when ``None``.
      return_final_state: also return the state after the last step.
      chunk_size: chunk length of ``"chunked"`` (64, with 16-step sub-chunks): a multiple of
        16, or at most 16. Lengths that are not a multiple are padded and cropped.
      implementation: ``"sequential"`` (``lax.scan`` reference), ``"parallel"`` (quadratic
        in ``l``), ``"chunked"``, a fallback sequence of those, or ``None`` (automatic:
        ``"parallel"`` when ``l <= 64``, else ``"chunked"``).

    Returns:
      ``o`` of shape ``(b, l, h, dv)`` in ``q.dtype``; with ``return_final_state``, the pair
      ``(o, final_state)`` with ``final_state`` of shape ``(b, h, dk, dv)`` in fp32 (float64
      if every input is float64).

    Raises:
      ValueError: inconsistent shapes, a bad ``chunk_size`` or an unknown implementation.

    >>> import jax, jax.numpy as jnp
    >>> from ssmjax.ops import gla
    >>> kq, kk, kv, kg = jax.random.split(jax.random.key(0), 4)
    >>> b, l, h, dk, dv = 2, 100, 4, 16, 32
    >>> q = jax.random.normal(kq, (b, l, h, dk))
    >>> k = jax.random.normal(kk, (b, l, h, dk))
    >>> v = jax.random.normal(kv, (b, l, h, dv))
    >>> g = jax.nn.log_sigmoid(jax.random.normal(kg, (b, l, h, dk))) / 16
    >>> o, state = gla(q, k, v, g, return_final_state=True)
    >>> o.shape, state.shape
    ((2, 100, 4, 32), (2, 4, 16, 32))
    >>> o_seq = gla(q, k, v, g, implementation="sequential")
    >>> bool(jnp.allclose(o, o_seq, atol=1e-4))
    True
    """
    q, k, v, g = map(jnp.asarray, (q, k, v, g))
    h0 = None if h0 is None else jnp.asarray(h0)
    _check_shapes(q, k, v, g, h0, chunk_size)
    b, length, h, dk = q.shape
    dv = v.shape[-1]
    inputs = [q, k, v, g] + ([] if h0 is None else [h0])
    dtype = jnp.result_type(jnp.float32, *(a.dtype for a in inputs))
    args = tuple(a.astype(dtype) for a in (q, k, v, g))
    h0 = jnp.zeros((b, h, dk, dv), dtype) if h0 is None else h0.astype(dtype)
    scale = dk**-0.5 if scale is None else scale

    auto = ("parallel",) if length <= _PARALLEL_MAX_LEN else ("chunked",)
    o, final = dispatch(
        "gla", implementation, _IMPLEMENTATIONS, auto, *args, h0, scale, chunk_size=chunk_size
    )
    o = o.astype(q.dtype)
    return (o, final) if return_final_state else o
