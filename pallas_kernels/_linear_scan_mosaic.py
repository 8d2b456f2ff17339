"""The diagonal linear recurrence as Pallas Mosaic GPU kernels (``layout="mosaic"``, Hopper).

The Triton ``linear_scan`` forward is latency-bound (1.75x its HBM floor on the H100,
BENCHMARKS.md): each program keeps only a block of prefetched rows in flight, in registers.
Here, as in :mod:`pallas_kernels._selective_scan_mosaic`, the sequences are staged by TMA into
shared memory ``stages`` tiles of ``tile`` steps ahead, one channel per thread of a
128-thread warpgroup, one program per (128 channels, batch row). On the H100 the fp32 forward
moves 2.9 TB/s of device time, within 4-12% of torch's, Triton's and XLA's streaming kernels
on the same arrays (BENCHMARKS.md, tenth session; ``experiments/bench/bandwidth.py``), and
neither deeper rings, other tiles, TMA-stored outputs nor more programs made it faster
(ninth session; ``experiments/bench/linear_mosaic.py``).

Forward: ``h_t = a_t h_{t-1} + b_t`` (planes: 1 real or 2 for complex), ``h`` stored from
registers. Backward, in the opposite order: ``g_t = dh_t + c``, ``da_t = g_t conj(h_prev)``,
``c = g_t conj(a_t)``, with ``h_prev`` the state before step ``t`` in scan order, read from
the staged ``h`` tile except at the tile's edge, where it is one row of the neighbouring tile
(or ``h0``), loaded at the tile's start. A time-invariant ``a`` (``(Ba, d)``) is one row per
program and its gradient is summed in registers.

Lengths that are not whole tiles are padded on the side the forward scans last (the end, or
the start when ``reverse``): the forward's outputs there are dropped, and the backward meets
them first with ``dh = 0`` and ``c = 0``, so they contribute nothing. The default on Hopper
where it runs (``pallas_kernels.linear_scan.auto_layout``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._mosaic_common import (
    BLOCK_D,
    SMEM_BYTES,
    Ops,
    TileRing,
    launch,
    on_hopper,
    plgpu,
    staging,
)

_F32 = jnp.float32
TILE = 32  # steps per TMA tile
MAX_STAGES = 3  # tiles in flight at most (fewer when shared memory is short)


def _mul(x, y, conj=False):
    """``x * y`` (or ``x * conj(y)``) of plane lists (1 plane: real, 2: complex)."""
    if len(x) == 1:
        return [x[0] * y[0]]
    if conj:
        return [x[0] * y[0] + x[1] * y[1], x[1] * y[0] - x[0] * y[1]]
    return [x[0] * y[0] - x[1] * y[1], x[0] * y[1] + x[1] * y[0]]


def _add(x, y):
    return [u + v for u, v in zip(x, y, strict=True)]


def _stages(tile: int, staged) -> int:
    """Tiles in flight (at most ``MAX_STAGES``) that fit in shared memory (``staged``: the
    dtypes of one slot's buffers)."""
    per_stage = sum(tile * BLOCK_D * jnp.dtype(dt).itemsize for dt in staged)
    return max(1, min(MAX_STAGES, SMEM_BYTES // per_stage))


def supported(
    d: int, unroll: int, chunks: int, interpret: bool, lti: bool = False, length: int = 0
) -> str | None:
    """Why the Mosaic kernels cannot run this call (``None`` when they can); ``lti``: the
    ``a`` is time-invariant, ``length`` the sequence's (``chunks > 1`` needs both, and
    chunks of whole tiles: a partial tile would put its padding between a chunk and the
    carry it receives)."""
    if plgpu is None:
        return "jax.experimental.pallas.mosaic_gpu cannot be imported"
    if not interpret and not on_hopper():
        return "needs a compute capability 9.0 GPU (H100/H200)"
    if d % BLOCK_D:
        return f"the flattened state size {d} is not a multiple of {BLOCK_D}"
    if chunks != 1 and not lti:
        return "the L-parallel (chunks > 1) Mosaic scan needs a time-invariant a"
    if chunks != 1 and (length // chunks) % TILE:
        return f"chunks of {length / chunks:g} steps are not whole {TILE}-step tiles"
    if TILE % unroll:
        return f"unroll={unroll} does not divide the tile ({TILE} steps)"
    return None


def _fwd_kernel(*refs, p, lti, reverse, n_tiles, unroll, ops, final_only=False):
    na = p
    a_refs, b_refs, h0_refs, h_refs = (
        refs[:na],
        refs[na : na + p],
        refs[na + p : na + 2 * p],
        refs[na + 2 * p : na + 3 * p],
    )
    rest = refs[na + 3 * p :]
    n_slots = p if lti else 2 * p
    slots, bars = rest[:n_slots], (None if ops.interpret else rest[n_slots])
    di, b = ops.program_ids()
    cols = pl.ds(di * BLOCK_D, BLOCK_D)
    seqs = tuple(b_refs) if lti else (*a_refs, *b_refs)
    order = (lambda k: n_tiles - 1 - k) if reverse else (lambda k: k)
    sources = [lambda rows, ref=ref: ref.at[b, rows, cols] for ref in seqs]
    tiles = TileRing(ops, sources, slots, bars, TILE, n_tiles, order)
    tiles.prologue()
    a_row = (0 if a_refs[0].shape[0] == 1 else b) if lti else None  # Ba in {1, batch}
    a_lti = [ops.vec(r.at[a_row, cols]).astype(_F32) for r in a_refs] if lti else None
    h = [ops.vec(r.at[b, cols]) for r in h0_refs]
    a_slots, b_slots = ((), slots) if lti else (slots[:p], slots[p:])

    def tile_body(tile, slot, h):
        def group(i, h):
            h = list(h)
            for u in range(unroll):
                j = i * unroll + u
                t = TILE - 1 - j if reverse else j
                a = a_lti or [ops.vec(s.at[slot, t]).astype(_F32) for s in a_slots]
                x = [ops.vec(s.at[slot, t]).astype(_F32) for s in b_slots]
                h = _add(_mul(a, h), x)
                if not final_only:
                    for r, v in zip(h_refs, h, strict=True):
                        r[b, tile * TILE + t, cols] = v.astype(r.dtype)
            return tuple(h)

        return lax.fori_loop(0, TILE // unroll, group, h)

    h = tiles.loop(tile_body, tuple(h))
    if final_only:  # only the state after the last step, (batch, d) fp32
        for r, v in zip(h_refs, h, strict=True):
            r[b, cols] = v.astype(r.dtype)


def _bwd_kernel(*refs, p, lti, reverse, n_tiles, unroll, ops):
    a_refs, h_refs, dh_refs, h0_refs, c0_refs = (refs[i * p : (i + 1) * p] for i in range(5))
    g_refs, da_refs, dh0_refs = (refs[(5 + i) * p : (6 + i) * p] for i in range(3))
    rest = refs[8 * p :]
    n_slots = 2 * p if lti else 3 * p
    slots, bars = rest[:n_slots], (None if ops.interpret else rest[n_slots])
    di, b = ops.program_ids()
    cols = pl.ds(di * BLOCK_D, BLOCK_D)
    seqs = (*h_refs, *dh_refs) if lti else (*a_refs, *h_refs, *dh_refs)
    # The adjoint runs against the scan: tiles and rows backwards (forwards when reverse).
    order = (lambda k: k) if reverse else (lambda k: n_tiles - 1 - k)
    sources = [lambda rows, ref=ref: ref.at[b, rows, cols] for ref in seqs]
    tiles = TileRing(ops, sources, slots, bars, TILE, n_tiles, order)
    tiles.prologue()
    a_row = (0 if a_refs[0].shape[0] == 1 else b) if lti else None
    a_lti = [ops.vec(r.at[a_row, cols]).astype(_F32) for r in a_refs] if lti else None
    h0 = [ops.vec(r.at[b, cols]) for r in h0_refs]
    a_slots = () if lti else slots[:p]
    h_slots, dh_slots = slots[-2 * p : -p], slots[-p:]
    step = 1 if reverse else -1  # row of the previous state in scan order, within a tile

    def tile_body(tile, slot, carry):
        c, da_sum = list(carry[0]), carry[1]
        # The state before the tile's edge row (the last one processed): the neighbour
        # tile's row, or h0 at the scan's start.
        start = tile * TILE
        # (No scalar min/max or select: integer and float arithmetic on the flag only.)
        first = (tile == n_tiles - 1) if reverse else (tile == 0)
        first_i = first.astype(jnp.int32)
        edge_row = (start + TILE - first_i) if reverse else (start - 1 + first_i)
        f = first.astype(_F32)
        edge = [ops.vec(r.at[b, edge_row, cols]).astype(_F32) for r in h_refs]
        edge = [e * (1.0 - f) + x0 * f for e, x0 in zip(edge, h0, strict=True)]

        def row(t, h_prev, c, da_sum):
            a = a_lti or [ops.vec(s.at[slot, t]).astype(_F32) for s in a_slots]
            g = _add([ops.vec(s.at[slot, t]).astype(_F32) for s in dh_slots], c)
            da = _mul(g, h_prev, conj=True)
            for r, v in zip(g_refs, g, strict=True):
                r[b, start + t, cols] = v.astype(r.dtype)
            if lti:
                da_sum = tuple(_add(da_sum, da))
            else:
                for r, v in zip(da_refs, da, strict=True):
                    r[b, start + t, cols] = v.astype(r.dtype)
            return _mul(g, a, conj=True), da_sum

        def t_of(j):
            return j if reverse else TILE - 1 - j

        def group(i, carry):
            c, da_sum = list(carry[0]), carry[1]
            for u in range(unroll):
                t = t_of(i * unroll + u)
                h_prev = [ops.vec(s.at[slot, t + step]).astype(_F32) for s in h_slots]
                c, da_sum = row(t, h_prev, c, da_sum)
            return tuple(c), da_sum

        # All groups but the last read h_prev from the tile; the last group's last row
        # (the tile's edge) takes it from the neighbour row loaded above.
        carry = lax.fori_loop(0, TILE // unroll - 1, group, (tuple(c), da_sum))
        c, da_sum = list(carry[0]), carry[1]
        for u in range(unroll):
            j = TILE - unroll + u
            t = t_of(j)
            if j == TILE - 1:
                h_prev = edge
            else:
                h_prev = [ops.vec(s.at[slot, t + step]).astype(_F32) for s in h_slots]
            c, da_sum = row(t, h_prev, c, da_sum)
        return tuple(c), da_sum

    # The adjoint's carry into the scan's last step: 0 for a whole sequence, the next
    # chunk's for a chunk of the L-parallel scan (_linear_scan_mosaic_chunked).
    c0 = [ops.vec(r.at[b, cols]).astype(_F32) for r in c0_refs]
    zeros = [h * 0.0 for h in h0]  # in the registers' layout
    c, da_sum = tiles.loop(tile_body, (tuple(c0), tuple(zeros) if lti else None))
    if lti:
        for r, v in zip(da_refs, da_sum, strict=True):
            r[b, cols] = v
    for r, v in zip(dh0_refs, c, strict=True):
        r[b, cols] = v.astype(r.dtype)


def _pad(x, pad: int, reverse: bool):
    """Pad the time axis (1) to whole tiles on the side the forward scans last."""
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (pad, 0) if reverse else (0, pad)
    return jnp.pad(x, widths)


def _unpad(x, length: int, pad: int, reverse: bool):
    if pad == 0:
        return x
    return x[:, pad:] if reverse else x[:, :length]


def _tiling(length: int) -> tuple[int, int]:
    """``(tiles, padded steps)`` of a sequence of ``length`` steps."""
    n_tiles = -(-length // TILE)
    return n_tiles, n_tiles * TILE - length


def _call(cfg, body, staged, out_shape, n_in: int, grid, name: str):
    """``body(*refs, ops=...)`` launched with one ring slot per dtype of ``staged`` (the
    staged arrays, in slot order), as many tiles in flight as fit."""
    slot_shapes = [((TILE, BLOCK_D), dt) for dt in staged]
    scratch = staging(slot_shapes, _stages(TILE, staged), cfg.interpret)
    ops = Ops(cfg.interpret)
    kernel = lambda *refs: body(*refs, ops=ops)
    return launch(
        kernel,
        out_shape=out_shape,
        scratch=scratch,
        n_in=n_in,
        grid=grid,
        interpret=cfg.interpret,
        name=name,
    )


def run_fwd_mosaic(cfg, ap, bp, h0p, final_only: bool = False):
    """The ``h`` planes ``(batch, l, d)`` (as ``linear_scan._run_fwd``); with
    ``final_only``, only the state after the scan's last step, ``(batch, d)`` fp32 planes
    (nothing but ``b`` is read: the chunk end states of the L-parallel scan). ``final_only``
    needs whole tiles (padding would be scanned last)."""
    batch, length, d = bp[0].shape
    p, lti = len(bp), ap[0].ndim == 2
    n_tiles, pad = _tiling(length)
    if final_only and pad:
        raise ValueError(f"final_only needs whole {TILE}-step tiles, got {length} steps")
    seq = lambda v: _pad(v, pad, cfg.reverse)
    ap = ap if lti else tuple(seq(v) for v in ap)
    bp = tuple(seq(v) for v in bp)
    staged = ([] if lti else [v.dtype for v in ap]) + [v.dtype for v in bp]  # slot order
    body = functools.partial(
        _fwd_kernel,
        p=p,
        lti=lti,
        reverse=cfg.reverse,
        n_tiles=n_tiles,
        unroll=cfg.unroll,
        final_only=final_only,
    )
    grid = (d // BLOCK_D, batch)
    if final_only:
        out_shape = [jax.ShapeDtypeStruct((batch, d), _F32)] * p
        call = _call(cfg, body, staged, out_shape, 3 * p, grid, "linear_scan_ends_mosaic")
        return tuple(call(*ap, *bp, *h0p))
    out_shape = [jax.ShapeDtypeStruct((batch, length + pad, d), bp[0].dtype)] * p
    call = _call(cfg, body, staged, out_shape, 3 * p, grid, "linear_scan_fwd_mosaic")
    hp = call(*ap, *bp, *h0p)
    return tuple(_unpad(h, length, pad, cfg.reverse) for h in hp)


def run_bwd_mosaic(cfg, ap, hp, dhp, h0p, b_dtype, c0p=None):
    """``(db, da, dh0)`` planes (as ``linear_scan._run_bwd``); ``c0p``: the adjoint's carry
    into the scan's last step, ``(batch, d)`` fp32 planes (default 0: a whole sequence)."""
    batch, length, d = hp[0].shape
    if c0p is None:
        c0p = tuple(jnp.zeros((batch, d), _F32) for _ in hp)
    p, lti = len(hp), ap[0].ndim == 2
    n_tiles, pad = _tiling(length)
    seq = lambda v: _pad(v, pad, cfg.reverse)
    ap = ap if lti else tuple(seq(v) for v in ap)
    hp, dhp = tuple(seq(v) for v in hp), tuple(seq(v) for v in dhp)
    staged = ([] if lti else [v.dtype for v in ap]) + [v.dtype for v in (*hp, *dhp)]
    body = functools.partial(
        _bwd_kernel, p=p, lti=lti, reverse=cfg.reverse, n_tiles=n_tiles, unroll=cfg.unroll
    )
    seq_shape = (batch, length + pad, d)
    da_type = jax.ShapeDtypeStruct((batch, d) if lti else seq_shape, _F32 if lti else ap[0].dtype)
    out_shape = (
        [jax.ShapeDtypeStruct(seq_shape, b_dtype)] * p
        + [da_type] * p
        + [jax.ShapeDtypeStruct((batch, d), h0p[0].dtype)] * p
    )
    grid = (d // BLOCK_D, batch)
    call = _call(cfg, body, staged, out_shape, 5 * p, grid, "linear_scan_bwd_mosaic")
    outs = call(*ap, *hp, *dhp, *h0p, *c0p)
    unpad = lambda vs: tuple(_unpad(v, length, pad, cfg.reverse) for v in vs)
    g = unpad(outs[:p])
    da = tuple(outs[p : 2 * p]) if lti else unpad(outs[p : 2 * p])
    return g, da, tuple(outs[2 * p :])
