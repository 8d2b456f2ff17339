"""Mamba-2 state-space duality (SSD).

Per head ``i`` (scalar decay ``A[i]``, state of shape ``(p, n)``)::

    h_t = exp(dt_t * A) * h_{t-1} + (dt_t * x_t) ⊗ B_t
    y_t = h_t @ C_t + D * x_t

with ``B`` and ``C`` shared by the ``h // g`` heads of a group (head ``i`` reads group
``i // (h // g)``).

Implementations (``implementation=``):

* ``"sequential"``: ``lax.scan`` over time, the reference.
* ``"chunked"``: the SSD algorithm of Mamba-2 — within a chunk of ``chunk_size`` steps the
  recurrence is a masked, attention-like matmul with decay matrix ``exp(segsum(dt * A))``;
  per-chunk final states are passed between chunks by a short scan over chunks. This is the
  automatic choice.

All arithmetic is fp32 (float64 when every input is float64), whatever the input dtype.
"""

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ssmjax.ops._dispatch import dispatch

__all__ = ["ssd"]

_HIGHEST = lax.Precision.HIGHEST


def _einsum(spec, *operands):
    return jnp.einsum(spec, *operands, precision=_HIGHEST)


def _segsum_from_cumsum(cs):
    """Segment sums ``out[..., i, j] = cs[..., i] - cs[..., j]`` for ``i >= j``, else -inf.

    ``exp`` of the result is the causal decay matrix; every unmasked entry is ``<= 0`` (up to
    rounding) when the summed terms are ``<= 0``, and the masked entries become exactly 0.
    """
    t = cs.shape[-1]
    diff = cs[..., :, None] - cs[..., None, :]
    mask = jnp.tril(jnp.ones((t, t), dtype=bool)).reshape((1,) * (cs.ndim - 1) + (t, t))
    return jnp.where(mask, diff, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _ssd_reference(x, dt, A, B, C, h0, chunk_size):
    """``lax.scan`` over time; returns ``(y, final_state)`` without the ``D`` term."""
    del chunk_size
    h, g = x.shape[2], B.shape[2]
    r = h // g
    Bh = jnp.repeat(B, r, axis=2)  # (b, l, h, n)
    Ch = jnp.repeat(C, r, axis=2)
    decay = jnp.exp(dt * A[None, None, :])  # (b, l, h)
    u = x * dt[..., None]  # (b, l, h, p)

    def step(state, inputs):
        decay_t, u_t, B_t, C_t = inputs
        state = decay_t[:, :, None, None] * state + u_t[..., None] * B_t[:, :, None, :]
        return state, _einsum("bhpn,bhn->bhp", state, C_t)

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (decay, u, Bh, Ch))
    final, ys = lax.scan(step, h0, xs)
    return jnp.moveaxis(ys, 0, 1), final


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _ssd_chunked(x, dt, A, B, C, h0, chunk_size):
    """The chunked SSD algorithm; returns ``(y, final_state)`` without the ``D`` term."""
    b, length, h, p = x.shape
    g, n = B.shape[2:]
    r = h // g
    q = min(chunk_size, length)
    nc = -(-length // q)
    pad = nc * q - length
    if pad:
        # dt = 0 on padded steps: decay 1 and no input, so the final state is unchanged.
        padding = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        x, dt, B, C = map(padding, (x, dt, B, C))
    # Heads are split as (g, r): head i = group i // r, member i % r.
    x = x.reshape(b, nc, q, g, r, p)
    dt = dt.reshape(b, nc, q, g, r)
    B = B.reshape(b, nc, q, g, n)
    C = C.reshape(b, nc, q, g, n)

    a = jnp.moveaxis(dt * A.reshape(1, 1, 1, g, r), 2, -1)  # (b, c, g, r, q), <= 0
    a_cs = jnp.cumsum(a, axis=-1)  # log-decay from the chunk start
    u = x * dt[..., None]  # (b, c, q, g, r, p)

    # (1) Intra-chunk: y_t += sum_{s <= t} (C_t . B_s) exp(a_cs[t] - a_cs[s]) u_s.
    decay_matrix = jnp.exp(_segsum_from_cumsum(a_cs))  # (b, c, g, r, t, s)
    cb = _einsum("bctgn,bcsgn->bcgts", C, B)
    y_diag = _einsum("bcgrts,bcsgrp->bctgrp", cb[:, :, :, None] * decay_matrix, u)

    # (2) Per-chunk states: sum_s exp(a_cs[-1] - a_cs[s]) u_s ⊗ B_s.
    decay_to_end = jnp.moveaxis(jnp.exp(a_cs[..., -1:] - a_cs), -1, 2)  # (b, c, q, g, r)
    states = _einsum("bcsgn,bcsgrp->bcgrpn", B, u * decay_to_end[..., None])

    # (3) Inter-chunk recurrence: the state entering each chunk, starting from h0.
    chunk_decay = jnp.exp(a_cs[..., -1])  # (b, c, g, r)

    def step(state, inputs):
        decay_c, state_c = inputs
        return decay_c[..., None, None] * state + state_c, state

    final, entering = lax.scan(
        step,
        h0.reshape(b, g, r, p, n),
        (jnp.moveaxis(chunk_decay, 1, 0), jnp.moveaxis(states, 1, 0)),
    )
    entering = jnp.moveaxis(entering, 0, 1)  # (b, c, g, r, p, n)

    # (4) State -> output: y_t += exp(a_cs[t]) h_entering C_t.
    decay_from_start = jnp.moveaxis(jnp.exp(a_cs), -1, 2)  # (b, c, q, g, r)
    y_off = _einsum("bctgn,bcgrpn->bctgrp", C, entering) * decay_from_start[..., None]

    y = (y_diag + y_off).reshape(b, nc * q, h, p)[:, :length]
    return y, final.reshape(b, h, p, n)


_IMPLEMENTATIONS = {"sequential": _ssd_reference, "chunked": _ssd_chunked}
_AUTO = ("chunked",)


def _check_shapes(x, dt, A, B, C, D, h0, chunk_size):
    def fail(message):
        raise ValueError(f"ssd: {message}")

    if x.ndim != 4:
        fail(f"x must have shape (b, l, h, p), got {x.shape}")
    b, length, h, p = x.shape
    if length < 1:
        fail(f"the sequence length must be at least 1, got x of shape {x.shape}")
    if dt.shape != (b, length, h):
        fail(f"dt must have shape (b, l, h) = {(b, length, h)}, got {dt.shape}")
    if A.shape != (h,):
        fail(f"A must have shape (h,) = {(h,)} (one scalar per head), got {A.shape}")
    if B.ndim != 4 or B.shape[:2] != (b, length):
        fail(f"B must have shape (b, l, g, n) with (b, l) = {(b, length)}, got {B.shape}")
    if C.shape != B.shape:
        fail(f"C must have the shape of B {B.shape}, got {C.shape}")
    g, n = B.shape[2:]
    if g == 0 or h % g:
        fail(f"the number of heads h={h} must be a multiple of the number of groups g={g}")
    if D is not None and D.shape not in ((h,), (h, p)):
        fail(f"D must have shape (h,) = {(h,)} or (h, p) = {(h, p)}, got {D.shape}")
    if h0 is not None and h0.shape != (b, h, p, n):
        fail(f"h0 must have shape (b, h, p, n) = {(b, h, p, n)}, got {h0.shape}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        fail(f"chunk_size must be a positive int, got {chunk_size!r}")


def ssd(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    *,
    chunk_size: int = 256,
    h0=None,
    return_final_state: bool = False,
    implementation: str | Sequence[str] | None = None,
):
    """Mamba-2 selective state-space model with scalar decay per head (SSD).

    Per head, with state ``h_t`` of shape ``(p, n)``::

        h_t = exp(dt_t * A) * h_{t-1} + (dt_t * x_t) ⊗ B_t,    y_t = h_t @ C_t + D * x_t

    ``dt`` is used as given: apply the softplus / bias / clamping of a Mamba-2 layer before
    calling (it should be positive, and ``A`` negative, so that every decay is ``<= 1``).

    Args:
      x: inputs, ``(b, l, h, p)``.
      dt: step sizes, ``(b, l, h)``, already positive (after ``softplus(dt + dt_bias)``).
      A: decay rate per head, ``(h,)``, negative (e.g. ``-exp(A_log)``).
      B: input projections, ``(b, l, g, n)``; ``h % g == 0``, head ``i`` uses group
        ``i // (h // g)``.
      C: output projections, ``(b, l, g, n)``.
      D: optional skip connection, ``(h,)`` or ``(h, p)``.
      chunk_size: chunk length of the ``"chunked"`` implementation (Mamba-2's default 256);
        lengths that are not a multiple are padded and cropped. Ignored by ``"sequential"``.
      h0: optional initial state, ``(b, h, p, n)``; zeros when ``None``.
      return_final_state: also return the state after the last step.
      implementation: ``"sequential"`` (``lax.scan`` reference), ``"chunked"``, a fallback
        sequence of those, or ``None`` (automatic: ``"chunked"``).

    Returns:
      ``y`` of shape ``(b, l, h, p)`` in ``x.dtype``; with ``return_final_state``, the pair
      ``(y, final_state)`` with ``final_state`` of shape ``(b, h, p, n)`` in fp32 (float64
      if every input is float64).

    Raises:
      ValueError: inconsistent shapes, a bad ``chunk_size`` or an unknown implementation.

    >>> import jax, jax.numpy as jnp
    >>> from ssmjax.ops import ssd
    >>> kx, kt, kb, kc = jax.random.split(jax.random.key(0), 4)
    >>> b, l, h, p, g, n = 2, 100, 4, 8, 1, 16
    >>> x = jax.random.normal(kx, (b, l, h, p))
    >>> dt = jax.nn.softplus(jax.random.normal(kt, (b, l, h)) - 2.0)
    >>> A = -jnp.arange(1.0, h + 1.0)
    >>> B = jax.random.normal(kb, (b, l, g, n))
    >>> C = jax.random.normal(kc, (b, l, g, n))
    >>> y, state = ssd(x, dt, A, B, C, chunk_size=32, return_final_state=True)
    >>> y.shape, state.shape
    ((2, 100, 4, 8), (2, 4, 8, 16))
    >>> y_seq = ssd(x, dt, A, B, C, implementation="sequential")
    >>> bool(jnp.allclose(y, y_seq, atol=1e-4))
    True
    """
    x, dt, A, B, C = map(jnp.asarray, (x, dt, A, B, C))
    D = None if D is None else jnp.asarray(D)
    h0 = None if h0 is None else jnp.asarray(h0)
    _check_shapes(x, dt, A, B, C, D, h0, chunk_size)
    b, _, h, p = x.shape
    n = B.shape[-1]
    inputs = [x, dt, A, B, C] + [a for a in (D, h0) if a is not None]
    dtype = jnp.result_type(jnp.float32, *(a.dtype for a in inputs))
    args = tuple(a.astype(dtype) for a in (x, dt, A, B, C))
    h0 = jnp.zeros((b, h, p, n), dtype) if h0 is None else h0.astype(dtype)

    y, final = dispatch(
        "ssd", implementation, _IMPLEMENTATIONS, _AUTO, *args, h0, chunk_size=chunk_size
    )
    if D is not None:
        D = D.astype(dtype).reshape(1, 1, h, math.prod(D.shape[1:]))
        y = y + D * args[0]
    y = y.astype(x.dtype)
    return (y, final) if return_final_state else y
