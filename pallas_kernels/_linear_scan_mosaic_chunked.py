"""The L-parallel Mosaic GPU linear scan for a time-invariant ``a`` (``layout="mosaic"``,
``chunks > 1``).

On a small grid (few sequences x 128-channel programs, e.g. S5/LRU at batch 8 and 256
states: 16 programs for 132 SMs) the single-pass Mosaic kernel cannot fill the GPU. Here the
time axis is cut into ``C`` chunks of ``T = l / C`` steps, and the single-pass kernels of
:mod:`pallas_kernels._linear_scan_mosaic` run on the free reshape ``(batch * C, T, d)``: ``C``
times the programs. A chunk needs its true start state, which a time-invariant ``a`` makes
cheap:

* forward: the end state from a zero start, ``E = sum_k a^(T'-1-k) b_k``, of every piece of
  ``T' = T / split`` steps that precedes a chunk (``split`` = 1 by default, :func:`end_split`;
  the last chunk precedes nothing and is not read), by the end-state kernel
  (``run_ends_mosaic``: one program a piece, walked against the scan's order so that what it
  reads last, the chunks' first steps, is still in L2 when the scan reads it first); then the
  scan kernel, whose every chunk carries its start state from ``h0`` through the pieces
  before it, ``S <- a^T' S + E_i`` (a few rows loaded at its start, while its first tiles
  arrive), and rescans the chunk from it (a second read of ``b`` but for the last chunk's,
  one write of ``h``);
* backward: the adjoint ``g_t = dh_t + conj(a) g_{t+1}`` likewise, from the other end: its
  zero-start end state in every piece that precedes a chunk in the adjoint's order,
  ``F = sum_k conj(a)^k dh_k``, by the end-state kernel on ``dh`` with ``conj(a)``, and each
  chunk's backward kernel carries the adjoint in from the pieces after it; its start state
  is a row of the forward's ``h`` (the last row of the chunk before it, or ``h0``), loaded by
  the kernel, so nothing extra is saved. ``da`` and ``dh0`` come per chunk (summed, and the
  first chunk's taken, in XLA).

Two kernels each way and no XLA work between them (the eleventh session's version had eight
small XLA kernels for the chunk scans, ``a^T`` and the start rows: 8% of its device time).
Planes: 1 (real) or 2 (real, imaginary) fp32 arrays, as everywhere in ``linear_scan``.
"""

from __future__ import annotations

from pallas_kernels._linear_scan_mosaic import (
    TILE,
    run_bwd_mosaic,
    run_ends_mosaic,
    run_fwd_mosaic,
)

END_SPLIT = 1  # pieces per chunk for the end-state kernels


def end_split(n_tiles: int) -> int:
    """Pieces of every chunk whose end states the end-state kernel computes, one program
    each: ``END_SPLIT`` (it must divide the chunk's ``n_tiles`` tiles). 1 on the H100: at
    (8, 4096, 256) complex, 2 and 4 pieces (one wave of 224 and two of 448 end-state
    programs) made the end-state kernel faster (0.023-0.028 ms against 0.025-0.028) but the
    scan that follows slower (0.041-0.042 against 0.038-0.039: the steps it reads first are
    no longer the ones read last), 0.165-0.167 ms forward+backward against 0.160 (BENCHMARKS.md,
    thirteenth session); the knob stays for ``experiments.bench.linear_mosaic``."""
    if n_tiles % END_SPLIT:
        raise ValueError(f"END_SPLIT={END_SPLIT} does not divide {n_tiles} tiles")
    return END_SPLIT


def _view(xp, shape):
    return tuple(x.reshape(shape) for x in xp)


def _split(cfg, batch: int, length: int, d: int) -> tuple[int, tuple]:
    """``(split, the (batch * chunks * split, l / (chunks * split), d) view's shape)``."""
    split = end_split(length // cfg.chunks // TILE)
    pieces = cfg.chunks * split
    return split, (batch * pieces, length // pieces, d)


def run_fwd_chunked(cfg, ap, bp, h0p):
    """The ``h`` planes ``(batch, l, d)`` of a time-invariant scan, ``cfg.chunks`` chunks."""
    batch, length, d = bp[0].shape
    chunks = cfg.chunks
    split, pieces = _split(cfg, batch, length, d)
    ends = run_ends_mosaic(cfg, ap, _view(bp, pieces), chunks, cfg.reverse, split=split)
    rows = _view(bp, (batch * chunks, length // chunks, d))
    hp = run_fwd_mosaic(cfg, ap, rows, h0p, chunks=chunks, ends=ends, split=split)
    return _view(hp, (batch, length, d))


def run_bwd_chunked(cfg, ap, hp, dhp, h0p, b_dtype):
    """``(db, da, dh0)`` planes of a time-invariant scan (as ``run_bwd_mosaic``; ``da`` the
    per-sequence ``(batch, d)`` sum)."""
    batch, length, d = hp[0].shape
    chunks = cfg.chunks
    view = (batch * chunks, length // chunks, d)
    split, pieces = _split(cfg, batch, length, d)
    # The adjoint g_t = dh_t + conj(a) g_{t+1} scans against the forward, with conj(a).
    ends = run_ends_mosaic(
        cfg, ap, _view(dhp, pieces), chunks, not cfg.reverse, conj=True, split=split
    )
    g, da, dh0 = run_bwd_mosaic(
        cfg,
        ap,
        _view(hp, view),
        _view(dhp, view),
        h0p,
        b_dtype,
        chunks=chunks,
        ends=ends,
        split=split,
    )
    first = chunks - 1 if cfg.reverse else 0  # the chunk that holds the scan's first step
    return (
        _view(g, (batch, length, d)),
        tuple(x.reshape(batch, chunks, d).sum(axis=1) for x in da),
        tuple(x.reshape(batch, chunks, d)[:, first] for x in dh0),
    )
