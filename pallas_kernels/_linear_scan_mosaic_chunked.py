"""The L-parallel Mosaic GPU linear scan for a time-invariant ``a`` (``layout="mosaic"``,
``chunks > 1``).

On a small grid (few sequences x 128-channel programs, e.g. S5/LRU at batch 8 and 256
states: 16 programs for 132 SMs) the single-pass Mosaic kernel cannot fill the GPU. Here the
time axis is cut into ``C`` chunks of ``T = l / C`` steps, and the single-pass kernels of
:mod:`pallas_kernels._linear_scan_mosaic` run on the free reshape ``(batch * C, T, d)``: ``C``
times the programs. A chunk needs its true start state, which a time-invariant ``a`` gives in
closed form, in XLA:

* forward: every chunk's end state from a zero start is a weighted sum of its inputs,
  ``E_c = sum_k a^(T-1-k) b_{c,k}`` (``a^k`` when ``reverse``): one read of ``b``; then a
  short scan over the chunks, ``S_{c+1} = a^T S_c + E_c`` from ``S_0 = h0``, gives the start
  states, and the kernel rescans every chunk from its own (a second read of ``b``, one write
  of ``h``: 1.5x the single pass's traffic);
* backward: the adjoint ``g_t = dh_t + conj(a) g_{t+1}`` likewise, from the other end:
  ``F_c = sum_k conj(a)^k dh_{c,k}`` (``conj(a)^(T-1-k)`` when ``reverse``), a reverse scan
  over the chunks, and each chunk's backward kernel starts from the carry of the chunk after
  it (``c0``); its start state ``S_c`` is a row of the forward's ``h`` (the last row of the
  chunk before it, or ``h0``), so nothing extra is saved. ``da`` sums over the chunks.

The powers ``a^k`` come from a cumulative product over ``T`` steps (``(Ba, T, d)``, small).
Planes: 1 (real) or 2 (real, imaginary) fp32 arrays, as everywhere in ``linear_scan``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from pallas_kernels._chunk_states import _planes, _unplanes, chunk_starts
from pallas_kernels._linear_scan_mosaic import run_bwd_mosaic, run_fwd_mosaic

_F32 = jnp.float32


def _powers(a, steps: int):
    """``a^k`` for ``k = 0..steps``: ``(Ba, steps + 1, d)`` (``a``: ``(Ba, d)``)."""
    run = jnp.broadcast_to(a[:, None], (a.shape[0], steps, a.shape[1]))
    ones = jnp.ones_like(a)[:, None]
    return jnp.concatenate([ones, jnp.cumprod(run, axis=1)], axis=1)


def _weighted_sums(xp, w):
    """``sum_k w[k] x[:, :, k]`` of the planes ``xp`` (each ``(batch, C, T, d)``) with the
    complex or real weights ``w`` (``(Ba, T, d)``): ``(batch, C, d)`` complex or real.
    Computed on the planes, so ``x`` is read once and never made complex."""
    w = w[:, None]  # (Ba, 1, T, d)
    if len(xp) == 1:
        return jnp.sum(xp[0] * w, axis=2)
    wr, wi = jnp.real(w), jnp.imag(w)
    re = jnp.sum(xp[0] * wr - xp[1] * wi, axis=2)
    im = jnp.sum(xp[0] * wi + xp[1] * wr, axis=2)
    return lax.complex(re, im)


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
    n, chunks = len(bp), cfg.chunks
    steps = length // chunks
    a = _unplanes(ap).astype(jnp.complex64 if n == 2 else _F32)
    pw = _powers(a, steps)
    # The chunk's last step in scan order weighs a^0: k = T-1 forward, k = 0 reversed.
    w = pw[:, :steps] if cfg.reverse else pw[:, steps - 1 :: -1]
    ends = _weighted_sums(_view(bp, (batch, chunks, steps, d)), w)
    starts = chunk_starts(pw[:, None, steps], ends, _unplanes(h0p), cfg.reverse)
    single = cfg._replace(chunks=1)
    s0 = _view(_planes(starts), (batch * chunks, d))
    hp = run_fwd_mosaic(single, _rows(ap, batch, chunks), _view(bp, (-1, steps, d)), s0)
    return _view(hp, (batch, length, d))


def run_bwd_chunked(cfg, ap, hp, dhp, h0p, b_dtype):
    """``(db, da, dh0)`` planes of a time-invariant scan (as ``run_bwd_mosaic``; ``da`` the
    per-sequence ``(batch, d)`` sum)."""
    batch, length, d = hp[0].shape
    n, chunks = len(hp), cfg.chunks
    steps = length // chunks
    a = _unplanes(ap).astype(jnp.complex64 if n == 2 else _F32)
    a_c = jnp.conj(a)
    pw = _powers(a_c, steps)
    # The adjoint runs against the scan: its last step in a chunk is k = 0 (k = T-1 reversed).
    w = pw[:, steps - 1 :: -1] if cfg.reverse else pw[:, :steps]
    ends = _weighted_sums(_view(dhp, (batch, chunks, steps, d)), w)
    # g at each chunk's last adjoint step, entering from the chunk after it (0 for the last).
    g_in = chunk_starts(pw[:, None, steps], ends, jnp.zeros_like(ends[:, 0]), not cfg.reverse)
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
