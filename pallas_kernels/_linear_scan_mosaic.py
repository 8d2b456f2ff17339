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

With ``chunks > 1`` (the L-parallel scan of :mod:`pallas_kernels._linear_scan_mosaic_chunked`,
time-invariant ``a``, whole tiles) every program row is one time chunk of a sequence:
:func:`_ends_kernel` gives the zero-start end state of every chunk that another follows
(or of its ``split`` pieces), and the forward and backward kernels carry each chunk's start
state (and the adjoint's carry) in from those themselves.
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
    device_unsupported,
    launch,
    on_hopper,
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


def _mix(f, x, y):
    """``x`` where the float flag ``f`` is 1, ``y`` where it is 0 (both finite), exactly:
    arithmetic, not a select."""
    return [f * u + (1.0 - f) * v for u, v in zip(x, y, strict=True)]


def _pow(a, n: int, conj=False):
    """``a**n`` (or ``conj(a)**n``) of a plane list by repeated squaring, ``n >= 1``
    static."""
    if conj and len(a) == 2:
        a = [a[0], -a[1]]
    out, sq = None, a
    while True:
        if n & 1:
            out = sq if out is None else _mul(out, sq)
        n >>= 1
        if not n:
            return out
        sq = _mul(sq, sq)


GROUP = 8  # chunk end states loaded together (unrolled) by the chunk-carry loop


def _chunk_carry(ops, e_refs, first, n_before, a_t, s, n_max, cols):
    """Horner over the pieces before a chunk in scan order: ``s <- a_t s + E_i`` for
    ``i < n_before``, earliest first, ``E_i`` row ``first + i`` of ``e_refs`` (a sequence's
    ``n_max`` rows start at ``first``; past ``n_before`` row ``first`` is loaded and
    dropped). ``GROUP`` rows a loop trip, loaded together."""

    def one(i, s):
        active = i < n_before
        e = [ops.vec(r.at[first + active.astype(jnp.int32) * i, cols]) for r in e_refs]
        return _mix(active.astype(_F32), _add(_mul(a_t, s), e), s)

    def group(g, s):
        s = list(s)
        for u in range(GROUP):
            s = one(g * GROUP + u, s)
        return tuple(s)

    if n_max <= GROUP:
        for i in range(n_max):
            s = one(i, s)
        return list(s)
    return list(lax.fori_loop(0, -(-n_max // GROUP), group, tuple(s)))


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
    if why := device_unsupported(d, interpret, on_hopper):
        return why
    if chunks != 1 and not lti:
        return "the L-parallel (chunks > 1) Mosaic scan needs a time-invariant a"
    if chunks != 1 and (length // chunks) % TILE:
        return f"chunks of {length / chunks:g} steps are not whole {TILE}-step tiles"
    if TILE % unroll:
        return f"unroll={unroll} does not divide the tile ({TILE} steps)"
    return None


def _chunk_of(ops, chunks: int):
    """``(channel block, row, sequence, chunk)`` of this program: ``row`` indexes the
    ``(batch * chunks, l / chunks, d)`` view, ``row = sequence * chunks + chunk``."""
    di, r = ops.program_ids()
    if chunks == 1:
        return di, r, r, 0
    return di, r, lax.div(r, chunks), lax.rem(r, chunks)


def _fwd_kernel(*refs, p, lti, reverse, n_tiles, unroll, ops, chunks=1, split=1):
    """``h`` of every program's rows; ``chunks > 1`` (the L-parallel scan, time-invariant
    ``a``): the rows are chunks of ``n_tiles`` tiles, and each chunk's start state is the
    sequence's ``h0`` carried through the zero-start end states of the ``split`` pieces of
    each chunk before it (the extra input ``E``, :func:`_ends_kernel`), ``s <- a^T' s + E_i``
    (``T'`` = the chunk's steps / ``split``)."""
    na = p
    a_refs, b_refs, h0_refs = refs[:na], refs[na : na + p], refs[na + p : na + 2 * p]
    n_e = p if chunks > 1 else 0
    e_refs = refs[na + 2 * p : na + 2 * p + n_e]
    h_refs = refs[na + 2 * p + n_e : na + 3 * p + n_e]
    rest = refs[na + 3 * p + n_e :]
    n_slots = p if lti else 2 * p
    slots, bars = rest[:n_slots], (None if ops.interpret else rest[n_slots])
    di, b, seq, c = _chunk_of(ops, chunks)
    cols = pl.ds(di * BLOCK_D, BLOCK_D)
    seqs = tuple(b_refs) if lti else (*a_refs, *b_refs)
    order = (lambda k: n_tiles - 1 - k) if reverse else (lambda k: k)
    sources = [lambda rows, ref=ref: ref.at[b, rows, cols] for ref in seqs]
    tiles = TileRing(ops, sources, slots, bars, TILE, n_tiles, order)
    tiles.prologue()
    a_row = (0 if a_refs[0].shape[0] == 1 else seq) if lti else None  # Ba in {1, batch}
    a_lti = [ops.vec(r.at[a_row, cols]).astype(_F32) for r in a_refs] if lti else None
    h = [ops.vec(r.at[seq, cols]).astype(_F32) for r in h0_refs]
    if chunks > 1:  # (while the first tiles arrive)
        a_t = _pow(a_lti, n_tiles * TILE // split)
        n_max = split * (chunks - 1)  # the pieces with an end state, in scan order
        n_before = split * (chunks - 1 - c if reverse else c)
        h = _chunk_carry(ops, e_refs, seq * n_max, n_before, a_t, h, n_max, cols)
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
                for r, v in zip(h_refs, h, strict=True):
                    r[b, tile * TILE + t, cols] = v.astype(r.dtype)
            return tuple(h)

        return lax.fori_loop(0, TILE // unroll, group, h)

    tiles.loop(tile_body, tuple(h))


def _ends_kernel(*refs, p, scan_reverse, n_tiles, unroll, ops, pieces, n_max, conj):
    """The zero-start end state ``E = sum_k a^(T-1-k) x_k`` (``k`` in scan order, ``T``
    steps; ``conj(a)`` with ``conj``) of the first ``n_max`` of each sequence's ``pieces``
    pieces in scan order (the last chunk's pieces precede nothing), fp32 ``(batch * n_max,
    d)``: row ``i`` of a sequence is its ``i``-th piece in scan order.

    The pieces are walked against the scan's order, ``E += w x``, ``w *= a`` from ``w = 1``,
    so that the steps read last here are the ones the scan that follows reads first (still
    in L2)."""
    a_refs, x_refs, e_refs = refs[:p], refs[p : 2 * p], refs[2 * p : 3 * p]
    slots, bars = refs[3 * p : 4 * p], (None if ops.interpret else refs[4 * p])
    di, r = ops.program_ids()
    seq, nth = lax.div(r, n_max), lax.rem(r, n_max)  # nth: the piece's place in scan order
    x_row = seq * pieces + ((pieces - 1 - nth) if scan_reverse else nth)
    cols = pl.ds(di * BLOCK_D, BLOCK_D)
    walk_back = not scan_reverse  # walk the time axis backwards
    order = (lambda k: n_tiles - 1 - k) if walk_back else (lambda k: k)
    sources = [lambda rows, ref=ref: ref.at[x_row, rows, cols] for ref in x_refs]
    tiles = TileRing(ops, sources, slots, bars, TILE, n_tiles, order)
    tiles.prologue()
    a_row = 0 if a_refs[0].shape[0] == 1 else seq
    a = [ops.vec(x.at[a_row, cols]).astype(_F32) for x in a_refs]
    zeros = [v * 0.0 for v in a]  # in the registers' layout
    ones = [zeros[0] + 1.0, *zeros[1:]]

    def tile_body(tile, slot, carry):
        def group(i, carry):
            e, w = list(carry[0]), list(carry[1])
            for u in range(unroll):
                j = i * unroll + u
                t = TILE - 1 - j if walk_back else j
                x = [ops.vec(s.at[slot, t]).astype(_F32) for s in slots]
                e = _add(e, _mul(w, x))
                w = _mul(w, a, conj=conj)
            return tuple(e), tuple(w)

        return lax.fori_loop(0, TILE // unroll, group, carry)

    e, _ = tiles.loop(tile_body, (tuple(zeros), tuple(ones)))
    for ref, v in zip(e_refs, e, strict=True):
        ref[r, cols] = v


def _bwd_kernel(*refs, p, lti, reverse, n_tiles, unroll, ops, chunks=1, split=1):
    """``(g, da, dh0)`` of every program's rows; ``chunks > 1`` (the L-parallel scan,
    time-invariant ``a``): the rows are chunks, each starting from the last state of the
    chunk before it (a row of ``h``, or ``h0``), and the adjoint enters each chunk with the
    carry of the chunks after it, from the zero-start adjoint end states of their ``split``
    pieces each (the extra input ``F``); ``da`` and ``dh0`` are then per chunk."""
    n_in = 5 if chunks > 1 else 4
    a_refs, h_refs, dh_refs, h0_refs = (refs[i * p : (i + 1) * p] for i in range(4))
    f_refs = refs[4 * p : 5 * p] if chunks > 1 else ()
    g_refs, da_refs, dh0_refs = (refs[(n_in + i) * p : (n_in + 1 + i) * p] for i in range(3))
    rest = refs[(n_in + 3) * p :]
    n_slots = 2 * p if lti else 3 * p
    slots, bars = rest[:n_slots], (None if ops.interpret else rest[n_slots])
    di, b, seq, c = _chunk_of(ops, chunks)
    cols = pl.ds(di * BLOCK_D, BLOCK_D)
    seqs = (*h_refs, *dh_refs) if lti else (*a_refs, *h_refs, *dh_refs)
    # The adjoint runs against the scan: tiles and rows backwards (forwards when reverse).
    order = (lambda k: k) if reverse else (lambda k: n_tiles - 1 - k)
    sources = [lambda rows, ref=ref: ref.at[b, rows, cols] for ref in seqs]
    tiles = TileRing(ops, sources, slots, bars, TILE, n_tiles, order)
    tiles.prologue()
    a_row = (0 if a_refs[0].shape[0] == 1 else seq) if lti else None
    a_lti = [ops.vec(r.at[a_row, cols]).astype(_F32) for r in a_refs] if lti else None
    h0 = [ops.vec(r.at[seq, cols]).astype(_F32) for r in h0_refs]
    zeros = [h * 0.0 for h in h0]  # in the registers' layout
    c0 = zeros  # the adjoint's carry into the scan's last step
    if chunks > 1:
        # The chunk's start state: the last state of the chunk before it in scan order, or
        # h0 for the sequence's first chunk (its own row is loaded then, and dropped).
        first_f = (c == (chunks - 1 if reverse else 0)).astype(_F32)
        nb = b + (1 if reverse else -1) * (1 - first_f.astype(jnp.int32))
        edge_t = 0 if reverse else n_tiles * TILE - 1
        before = [ops.vec(r.at[nb, edge_t, cols]).astype(_F32) for r in h_refs]
        h0 = _mix(first_f, h0, before)
        # The carry from the chunks after it in the adjoint's order (conj(a) throughout).
        a_t = _pow(a_lti, n_tiles * TILE // split, conj=True)
        n_max = split * (chunks - 1)  # the pieces with an end state, in the adjoint's order
        n_after = split * (c if reverse else chunks - 1 - c)
        g_in = _chunk_carry(ops, f_refs, seq * n_max, n_after, a_t, zeros, n_max, cols)
        c0 = _mul(g_in, a_lti, conj=True)
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
        edge = _mix(f, h0, edge)

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


def _scan_body(kernel, cfg, p: int, lti: bool, n_tiles: int, chunks: int, split: int):
    """The forward or backward kernel body with this call's static configuration."""
    return functools.partial(
        kernel,
        p=p,
        lti=lti,
        reverse=cfg.reverse,
        n_tiles=n_tiles,
        unroll=cfg.unroll,
        chunks=chunks,
        split=split,
    )


def run_fwd_mosaic(cfg, ap, bp, h0p, chunks: int = 1, ends=None, split: int = 1):
    """The ``h`` planes ``(rows, l, d)`` (as ``linear_scan._run_fwd``). With ``chunks > 1``
    (time-invariant ``a``, whole tiles): ``bp`` is the ``(batch * chunks, l / chunks, d)``
    view of the sequences, ``h0p`` ``(batch, d)``, and ``ends`` the zero-start end states of
    the ``split`` pieces of every chunk but the last in scan order (:func:`run_ends_mosaic`),
    from which each chunk's start state is carried in the kernel."""
    rows, length, d = bp[0].shape
    p, lti = len(bp), ap[0].ndim == 2
    n_tiles, pad = _tiling(length)
    seq = lambda v: _pad(v, pad, cfg.reverse)
    ap = ap if lti else tuple(seq(v) for v in ap)
    bp = tuple(seq(v) for v in bp)
    staged = ([] if lti else [v.dtype for v in ap]) + [v.dtype for v in bp]  # slot order
    body = _scan_body(_fwd_kernel, cfg, p, lti, n_tiles, chunks, split)
    extra = tuple(ends) if chunks > 1 else ()
    out_shape = [jax.ShapeDtypeStruct((rows, length + pad, d), bp[0].dtype)] * p
    n_in = 3 * p + len(extra)
    call = _call(cfg, body, staged, out_shape, n_in, (d // BLOCK_D, rows), "linear_scan_fwd_mosaic")
    hp = call(*ap, *bp, *h0p, *extra)
    return tuple(_unpad(h, length, pad, cfg.reverse) for h in hp)


def run_ends_mosaic(
    cfg, ap, xp, chunks: int, scan_reverse: bool, conj: bool = False, split: int = 1
):
    """The zero-start end states, ``(batch * n, d)`` fp32 planes with ``n = split * (chunks -
    1)``, of the time-invariant scan (``reverse`` = ``scan_reverse``; with ``conj(a)`` when
    ``conj``) of the first ``n`` pieces in scan order of every sequence: ``xp`` is the
    ``(batch * chunks * split, T, d)`` view of the sequences (pieces of ``T`` steps, whole
    tiles), ``ap`` ``(Ba, d)`` with ``Ba`` in ``{1, batch}``. Row ``seq * n + i`` is sequence
    ``seq``'s ``i``-th piece in scan order."""
    rows, length, d = xp[0].shape
    n_tiles, pad = _tiling(length)
    if pad:
        raise ValueError(f"the end states need whole {TILE}-step tiles, got {length} steps")
    pieces = chunks * split
    if chunks < 2 or rows % pieces:
        raise ValueError(
            f"{rows} rows are not sequences of {chunks} chunks (>= 2) x {split} pieces"
        )
    n_max = split * (chunks - 1)
    p = len(xp)
    body = functools.partial(
        _ends_kernel,
        p=p,
        scan_reverse=scan_reverse,
        n_tiles=n_tiles,
        unroll=cfg.unroll,
        pieces=pieces,
        n_max=n_max,
        conj=conj,
    )
    out_rows = rows // pieces * n_max
    out_shape = [jax.ShapeDtypeStruct((out_rows, d), _F32)] * p
    staged = [v.dtype for v in xp]
    call = _call(
        cfg, body, staged, out_shape, 2 * p, (d // BLOCK_D, out_rows), "linear_scan_ends_mosaic"
    )
    return tuple(call(*ap, *xp))


def run_bwd_mosaic(cfg, ap, hp, dhp, h0p, b_dtype, chunks: int = 1, ends=None, split: int = 1):
    """``(db, da, dh0)`` planes (as ``linear_scan._run_bwd``). With ``chunks > 1``: ``hp`` and
    ``dhp`` are ``(batch * chunks, l / chunks, d)`` views, ``h0p`` ``(batch, d)``, ``ends``
    the adjoint's zero-start end states in the ``split`` pieces of every chunk but the
    adjoint's last (:func:`run_ends_mosaic` of ``dh`` with ``conj(a)``, the other way), and
    ``da`` (time-invariant: summed over each chunk) and ``dh0`` come per chunk, ``(batch *
    chunks, d)``."""
    rows, length, d = hp[0].shape
    p, lti = len(hp), ap[0].ndim == 2
    n_tiles, pad = _tiling(length)
    seq = lambda v: _pad(v, pad, cfg.reverse)
    ap = ap if lti else tuple(seq(v) for v in ap)
    hp, dhp = tuple(seq(v) for v in hp), tuple(seq(v) for v in dhp)
    staged = ([] if lti else [v.dtype for v in ap]) + [v.dtype for v in (*hp, *dhp)]
    body = _scan_body(_bwd_kernel, cfg, p, lti, n_tiles, chunks, split)
    seq_shape = (rows, length + pad, d)
    da_type = jax.ShapeDtypeStruct((rows, d) if lti else seq_shape, _F32 if lti else ap[0].dtype)
    out_shape = (
        [jax.ShapeDtypeStruct(seq_shape, b_dtype)] * p
        + [da_type] * p
        + [jax.ShapeDtypeStruct((rows, d), h0p[0].dtype)] * p
    )
    extra = tuple(ends) if chunks > 1 else ()
    n_in = 4 * p + len(extra)
    call = _call(cfg, body, staged, out_shape, n_in, (d // BLOCK_D, rows), "linear_scan_bwd_mosaic")
    outs = call(*ap, *hp, *dhp, *h0p, *extra)
    unpad = lambda vs: tuple(_unpad(v, length, pad, cfg.reverse) for v in vs)
    g = unpad(outs[:p])
    da = tuple(outs[p : 2 * p]) if lti else unpad(outs[p : 2 * p])
    return g, da, tuple(outs[2 * p :])
