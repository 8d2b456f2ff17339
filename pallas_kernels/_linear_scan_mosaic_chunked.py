"""The L-parallel Mosaic GPU linear scan for a time-invariant ``a`` (``layout="mosaic"``,
``chunks > 1``).

On a small grid (few sequences x 128-channel programs, e.g. S5/LRU at batch 8 and 256
states: 16 programs for 132 SMs) the single-pass Mosaic kernel cannot fill the GPU. Here the
time axis is cut into ``C`` chunks of ``T = l / C`` steps, and the single-pass kernels of
:mod:`pallas_kernels._linear_scan_mosaic` run on the free reshape ``(batch * C, T, d)``: ``C``
times the programs. A chunk needs its true start state, which a time-invariant ``a`` makes
cheap:

* forward: every chunk's end state from a zero start, ``E_c`` (``sum_k a^(T-1-k) b_{c,k}``),
  by the same kernel storing only its final state (``final_only``: one read of ``b``, on the
  ``C``-times grid); then a short scan over the chunks, ``S_{c+1} = a^T S_c + E_c`` from
  ``S_0 = h0`` (XLA, ``(batch, C, d)``), gives the start states, and the kernel rescans every
  chunk from its own (a second read of ``b``, one write of ``h``: 1.5x the single pass's
  traffic);
* backward: the adjoint ``g_t = dh_t + conj(a) g_{t+1}`` likewise, from the other end: its
  zero-start end state in every chunk, ``F_c`` (``sum_k conj(a)^k dh_{c,k}``), by the end-state
  kernel scanning ``dh`` the other way with ``conj(a)``, a scan over the chunks, and each
  chunk's backward kernel starts from the carry of the chunk after it (``c0``); its start
  state ``S_c`` is a row of the forward's ``h`` (the last row of the chunk before it, or
  ``h0``), so nothing extra is saved. ``da`` sums over the chunks.

``a^T`` is ``lax.integer_pow`` (repeated squaring, as in the Triton two-pass scan).
Planes: 1 (real) or 2 (real, imaginary) fp32 arrays, as everywhere in ``linear_scan``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from pallas_kernels._chunk_states import _planes, _unplanes, chunk_starts
from pallas_kernels._linear_scan_mosaic import run_bwd_mosaic, run_fwd_mosaic

_F32 = jnp.float32


def _ends(cfg, ap, xp, batch: int, chunks: int, reverse: bool):
    """Every chunk's zero-start end state ``(batch, C, d)`` (real, or complex from two
    planes) of the scan of ``xp`` (planes ``(batch, l, d)``) with the time-invariant ``ap``,
    in ``reverse`` order or not: the end-state kernel on ``(batch * C, T, d)``."""
    d = xp[0].shape[-1]
    rows = batch * chunks
    zeros = tuple(jnp.zeros((rows, d), _F32) for _ in xp)
    one = cfg._replace(chunks=1, reverse=reverse)
    ends = run_fwd_mosaic(
        one, _rows(ap, batch, chunks), _view(xp, (rows, -1, d)), zeros, final_only=True
    )
    return _unplanes(_view(ends, (batch, chunks, d)))


def _rows(ap, batch: int, chunks: int):
    """A time-invariant ``a`` (``(Ba, d)``) for the ``(batch * C)`` chunk rows."""
    if ap[0].shape[0] == 1:
        return ap
    return tuple(jnp.repeat(x, chunks, axis=0) for x in ap)


def _view(xp, shape):
    return tuple(x.reshape(shape) for x in xp)


def run_fwd_chunked(cfg, ap, bp, h0p):
    """The ``h`` planes ``(batch, l, d)`` of a time-invariant scan, ``cfg.chunks`` chunks."""
    batch, length, d = bp[0].shape
    chunks = cfg.chunks
    steps = length // chunks
    ends = _ends(cfg, ap, bp, batch, chunks, cfg.reverse)
    a_t = lax.integer_pow(_unplanes(ap).astype(ends.dtype), steps)  # (Ba, d)
    starts = chunk_starts(a_t[:, None], ends, _unplanes(h0p), cfg.reverse)
    single = cfg._replace(chunks=1)
    s0 = _view(_planes(starts), (batch * chunks, d))
    hp = run_fwd_mosaic(single, _rows(ap, batch, chunks), _view(bp, (-1, steps, d)), s0)
    return _view(hp, (batch, length, d))


def run_bwd_chunked(cfg, ap, hp, dhp, h0p, b_dtype):
    """``(db, da, dh0)`` planes of a time-invariant scan (as ``run_bwd_mosaic``; ``da`` the
    per-sequence ``(batch, d)`` sum)."""
    batch, length, d = hp[0].shape
    chunks = cfg.chunks
    steps = length // chunks
    # The adjoint g_t = dh_t + conj(a) g_{t+1} scans against the forward, with conj(a).
    a_c = jnp.conj(_unplanes(tuple(x.astype(_F32) for x in ap)))  # fp32 / complex64
    ends = _ends(cfg, _planes(a_c), dhp, batch, chunks, not cfg.reverse)
    # g at each chunk's last adjoint step, entering from the chunk after it (0 for the last).
    a_t = lax.integer_pow(a_c, steps)
    g_in = chunk_starts(a_t[:, None], ends, jnp.zeros_like(ends[:, 0]), not cfg.reverse)
    c0 = _view(_planes(a_c[:, None] * g_in), (batch * chunks, d))
    # Every chunk's start state: a row of h next to it, or h0 for the first chunk.
    h4 = _view(hp, (batch, chunks, steps, d))
    if cfg.reverse:
        starts = tuple(
            jnp.concatenate([x[:, 1:, 0], h0[:, None]], axis=1)
            for x, h0 in zip(h4, h0p, strict=True)
        )
    else:
        starts = tuple(
            jnp.concatenate([h0[:, None], x[:, :-1, steps - 1]], axis=1)
            for x, h0 in zip(h4, h0p, strict=True)
        )
    single = cfg._replace(chunks=1)
    g, da, dh0 = run_bwd_mosaic(
        single,
        _rows(ap, batch, chunks),
        _view(hp, (-1, steps, d)),
        _view(dhp, (-1, steps, d)),
        _view(starts, (batch * chunks, d)),
        b_dtype,
        c0p=c0,
    )
    first = chunks - 1 if cfg.reverse else 0  # the chunk that holds the scan's first step
    return (
        _view(g, (batch, length, d)),
        tuple(x.reshape(batch, chunks, d).sum(axis=1) for x in da),
        tuple(x.reshape(batch, chunks, d)[:, first] for x in dh0),
    )
