"""The single-read L-parallel linear scan for a time-invariant ``a`` as a Pallas Mosaic GPU
kernel (Hopper): every chunk staged once by TMA into shared memory, its start state found
by a decoupled look-back over the earlier chunks' published end states.

The same schedule as :mod:`pallas_kernels._linear_scan_lookback` (Triton), whose forward
moves only ~1.7 TB/s on the H100 (rows loaded one element per thread, the chunk held in
registers). Here, as in :mod:`pallas_kernels._linear_scan_mosaic`, a program is one
warpgroup, one channel per thread, 128 channels, and the chunk's ``chunk`` rows are staged
by TMA (``TILE``-row tiles, one barrier each, all issued at the start) into shared memory,
where they stay until the chunk is written:

1. The program's chunk is its grid index (``GRID_ORDER``, the default): chunks are numbered
   in scan order, and the GPU starts programs in grid order (as CUB's single-pass scan
   assumes), so a program only waits on programs that are already running. Off (and in the
   persistent form), it takes a ticket from an atomic counter instead (one thread, shared
   through shared memory), which needs no such assumption.
2. Pass 1: scan the staged chunk from a zero state; publish its *aggregate* (that end state).
3. Look-back, per thread (its own channel): walk back over the earlier chunks of the
   sequence, adding each published value times ``A^k`` (``A = a^chunk``), until a chunk
   with a published *inclusive* end state (chunk 0's includes ``h0``); wait on unpublished
   ones. The sum is the chunk's start state.
4. Publish the inclusive end state ``A s + aggregate``; pass 2: rescan the staged chunk from
   ``s``, storing ``h`` (backward: ``db = g``, and ``da`` from ``h``).

Status words: one int32 per channel and plane, the bitwise NOT of the fp32 value's bits, in a
zero-filled buffer: ``0`` (the NaN ``0xFFFFFFFF``, which GPU arithmetic never produces) means
unpublished, anything else is final; no flag, no fence. Written by ``st.relaxed.gpu`` and
polled by ``ld.relaxed.gpu`` (both served by L2) in PTX through ``plgpu.inline_mgpu``, since
Pallas Mosaic GPU has no load that sees other programs' writes and its atomics return
nothing. The wait is bounded (``SPIN_LIMIT`` polls; past it the state is NaN, never a hang).
Those operations, and their interpreter versions, live in
:mod:`pallas_kernels._lookback_mosaic_ops`.

In the Pallas interpreter (CPU tests) programs run one after another in grid order: the
ticket counter is a plain read and write (so program ``k`` takes ticket ``k``; in the
persistent form the first program takes every ticket and the other finds none left), status
words are plain stores and loads, and the same look-back runs
as a ``lax.while_loop``; ``INCLUSIVE_EVERY`` makes most chunks publish only aggregates so
that the look-back's accumulation is exercised there (and on the GPU by the bench's
check).

Pass 2 writes its rows over the staged chunk and stores each tile from shared memory by TMA
(``TMA_STORE``). The backward runs the same kernel the other way in time on the adjoint
``g_s = dh_s + conj(a) g_{s+1}`` (``db = g``), with its chunk of ``h`` loaded into registers
when the chunk starts (``STREAM_H``; staged beside ``dh`` when off) for ``da = sum_s g_s
conj(h_{s-1})`` (per chunk, all planes in one array summed by one XLA reduction), and writes
``dh0 = conj(a) g_0``. HBM traffic: ``b`` in, ``h`` out forward; ``dh``, ``h`` in, ``db``
out backward.

The status (and counter) buffers are ``pl.get_global`` semaphore arrays, which the Mosaic GPU
lowering passes in zero-filled to every call (checked in the lowered program by the tests;
``plgpu.kernel`` on JAX 0.11 has no input/output aliasing for buffers of our own, and
``pl.pallas_call`` no longer lowers to Mosaic GPU).

Measured on the H100 with tickets (BENCHMARKS.md, seventeenth to nineteenth sessions; device
time, complex time-invariant planes, 64-step chunks): forward+backward 0.139 ms at (8, 4096,
256) (forward kernel 0.055, backward kernel 0.076 ms: ~2.45 and ~2.6 TB/s), against 0.145
with neither ``TMA_STORE`` nor ``STREAM_H``, 0.157 for the two-read L-parallel Mosaic scan
and 0.390 for plain ``lax.associative_scan`` (2.81x); 0.143 at (4, 8192, 256) and (1, 16384,
512) (eighteenth session). Where the forward's time goes (``experiments/bench/
lookback_parts.py``): with neither the look-back nor the ticket it would move its bytes as
fast as a TMA copy of the same chunks or XLA's copy (0.048 ms, 2.8 TB/s); the look-back
(publish and wait) costs ~0.005 ms, the ticket ~0.0015. The persistent form
(``PROGRAMS_PER_SM``: a resident grid looping over tickets, the next chunk staged during the
scan) measured slower (0.166-0.168 ms), and so did 32-step chunks for the backward (0.155),
so both are off. Removed after measuring: a look-back polling 4 or 8 chunks a trip (no
faster), staging the grid index's chunk before the ticket comes (0.153: slower), TMA stores
waited for only until read (no faster) and sibling ``da`` reductions (no faster). The chunk
by grid index (``GRID_ORDER``) took the forward+backward from 0.136 to 0.1275 ms at (8, 4096,
256) on the H100 (forward kernel 0.050, backward kernel 0.072 ms; 2.85x to 3.04x plain
``lax.associative_scan``), to 0.129 at (4, 8192, 256) (3.02x) and (1, 16384, 512) (2.93x)
(twenty-first session); on an H200 from 0.112 to 0.103 ms (twentieth session). Removed after
measuring on the H200: ``da`` written with the chunks as the minor axis (a word a thread by
``st.global``) and summed by row reductions (the reductions saved 0.0012 ms, the backward
kernel took 0.003 longer). Removed after measuring on the H100 (twenty-second session):
``da`` summed inside the backward (each program's ``red.global.add.f32`` into zero-filled
words after the status words, a fence and a done-counter atomic, the last program writing
``da`` out): no reduction or copies after the kernel, but the backward kernel took 0.0049
ms longer (forward+backward 0.1328 vs 0.1290 ms at (1, 16384, 512)). At 32-64 programs
(from 1024 steps) the automatic choice takes this kernel over the single-pass Mosaic scan
too: 0.243 vs 0.261 ms at (8, 4096, 512) (3.18x plain ``lax.associative_scan``), 0.1249 vs
0.1268 at (32, 1024, 256) (2.99x).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._linear_scan_mosaic import TILE, _add, _mix, _mul, _pad, _pow, _unpad
from pallas_kernels._lookback_mosaic_ops import _Compiled, _Interpret
from pallas_kernels._mosaic_common import (
    BLOCK_D,
    SMEM_BYTES,
    device_unsupported,
    on_hopper,
    plgpu,
)

__all__ = [
    "CHUNK",
    "INCLUSIVE_EVERY",
    "SPIN_LIMIT",
    "run_bwd_lookback_mosaic",
    "run_fwd_lookback_mosaic",
    "supported",
]

_F32 = jnp.float32
_I32 = jnp.int32
CHUNK = 64  # steps per chunk (a multiple of TILE)
SPIN_LIMIT = 1 << 24  # polls without progress before a look-back gives up (NaN state)
# Chunks c with c % INCLUSIVE_EVERY == 0 publish their inclusive end state (1: all). Tests
# raise it so that look-backs must add up aggregates.
INCLUSIVE_EVERY = 1
# Two forms measured together 3% faster on the H100 (eighteenth session; off: bench configs
# without ``s`` / ``r``, tested both ways):
# TMA_STORE: pass 2 writes its rows over the staged chunk in shared memory and stores each
# tile by TMA (instead of one global store per row and thread).
TMA_STORE = True
# STREAM_H: the backward loads its chunk of ``h`` (for ``da``) from HBM into registers when
# the chunk starts instead of staging it in shared memory (half the shared memory a program
# takes, so more programs fit on an SM).
STREAM_H = True
# GRID_ORDER (forward+backward 6% faster than tickets side by side on the H100, twenty-first
# session; off: bench configs without ``n``, tested both ways): a program's chunk is
# its grid index, not a ticket from an atomic counter (no atomic before the first load,
# and no counter word: the zero-filled status buffer stays a whole number of 16-byte
# vectors, which XLA filled in half the time). It relies on the GPU starting programs in
# grid order, as CUB's single-pass scan does ("blocks are launched in increasing order"):
# then a program waits only on programs already running. Were that ever not so, a
# look-back that waits on a program which cannot start gives up after ``SPIN_LIMIT`` polls and
# the chunk's states are NaN; it never hangs. The persistent form (``PROGRAMS_PER_SM``)
# always takes tickets.
GRID_ORDER = True


def supported(d: int, chunk: int, staged_bytes: int, interpret: bool) -> str | None:
    """Why the kernel cannot run this call (``None`` when it can). ``staged_bytes``: the
    bytes one chunk row of the staged arrays takes per channel (summed over arrays)."""
    if why := device_unsupported(d, interpret, on_hopper):
        return why
    if chunk < TILE or chunk % TILE:
        return f"the chunk ({chunk} steps) is not a positive multiple of {TILE}"
    need = chunk * BLOCK_D * staged_bytes
    if need > SMEM_BYTES:
        return f"a chunk of {chunk} steps needs {need} bytes of shared memory (> {SMEM_BYTES})"
    return None


# ----------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------


def _kernel(
    *refs,
    ops,
    n_planes,
    length,
    chunk,
    n_chunks,
    batch,
    d,
    reverse,
    adjoint,
    shared_a,
    spin_limit,
    inclusive_every,
    buffers,
    tma_store,
    stream_h,
    grid_order,
    has_h0,
):
    """Chunks of ``chunk`` steps of 128 channels of one sequence: with ``grid_order`` the
    program's grid index, else picked by ticket until the tickets run out (a program may
    take many: the grid can be smaller than the chunks). With ``buffers == 2`` the next
    chunk is staged while this one is scanned; with ``buffers == 1`` (a program per chunk) a
    program takes one ticket.

    Refs (lists of ``n_planes`` planes): inputs ``a`` ``(Ba, d)``, ``x`` ``(batch, length,
    d)`` (``b``, or ``dh`` when ``adjoint``), ``h`` (``adjoint`` only, for ``da``), ``h0``
    ``(batch, d)`` (``has_h0`` only; zeros otherwise), in the interpreter the counter
    ``(1,)`` and status ``(2 * n_planes * n_chunks * batch, d)`` int32 zeros; outputs ``y``
    (``h`` or ``db``), ``da`` ``(n_chunks * batch, n_planes, d)`` (one array) and ``dh0``
    (``adjoint`` and ``has_h0`` only), in the interpreter then the counter and status
    (aliased to those inputs; compiled, both are zero-filled global semaphore arrays of
    ``pl.get_global``, the status one flat, the counter absent with ``grid_order``);
    scratch: the staged ``x`` (and ``h``, unless ``stream_h``) chunks ``(buffers, chunk /
    TILE, TILE, 128)``, two words for the ticket and, compiled, one TMA barrier per tile and
    buffer. Status row of (plane ``q``, chunk ``k`` in this kernel's order, sequence ``i``):
    ``((kind * n_planes + q) * n_chunks + k) * batch + i``, ``kind`` 0 for aggregates, 1 for
    inclusive end states.
    """
    p, C = n_planes, chunk
    n_tiles = C // TILE
    it = iter(refs)
    take = lambda k: [next(it) for _ in range(k)]
    a_refs, x_refs = take(p), take(p)
    hp_refs = take(p) if adjoint else []
    h0_refs = take(p) if has_h0 else []
    if ops.interpret:
        take(2)  # counter and status inputs: aliased to the outputs below
    y_refs = take(p)
    da_ref, dh0_refs = (next(it), take(p) if has_h0 else []) if adjoint else (None, [])
    if ops.interpret:
        counter_ref, status_ref = take(2)
    else:  # zero-filled global semaphore arrays, one per call of the kernel
        counter_ref = None if grid_order else pl.get_global(plgpu.SemaphoreType.REGULAR((1,)))
        n_status = 2 * p * n_chunks * batch * d
        status_ref = pl.get_global(plgpu.SemaphoreType.REGULAR((n_status,)))
    x_slots = take(p)
    h_slots = take(p) if adjoint and not stream_h else []
    (tick_ref,) = take(1)
    bars = None if ops.interpret else next(it)

    n_blocks = d // BLOCK_D
    per_chunk = batch * n_blocks
    n_work = n_chunks * per_chunk
    back = reverse != adjoint  # rows processed from the last time step down
    # Tiles and rows in processing order.
    tiles = list(range(n_tiles))[::-1] if back else list(range(n_tiles))
    rows_in = list(range(TILE))[::-1] if back else list(range(TILE))
    kw = {} if ops.interpret else {"d": d}

    def locate(ticket):
        """``(chunk in scan order, sequence, channels, first time row)`` of a ticket."""
        c = ticket // per_chunk
        i = (ticket % per_chunk) // n_blocks
        cols = pl.ds(pl.multiple_of((ticket % n_blocks) * BLOCK_D, BLOCK_D), BLOCK_D)
        r0 = ((n_chunks - 1 - c) if back else c) * C
        return c, i, cols, r0

    def bar(buf, u):
        return None if bars is None else bars.at[buf * n_tiles + u]

    def issue(ticket, buf):
        _, i, cols, r0 = locate(ticket)
        for u in tiles:
            src_rows = pl.ds(r0 + u * TILE, TILE)
            staged_refs = (*x_refs, *(hp_refs if h_slots else ()))
            for src, dst in zip(staged_refs, (*x_slots, *h_slots), strict=True):
                ops.stage(src.at[i, src_rows, cols], dst.at[buf, u], bar(buf, u))

    def process(ticket, buf):
        c, i, cols, r0 = locate(ticket)
        a_row = 0 if shared_a else i
        a = [ops.vec(r.at[a_row, cols]).astype(_F32) for r in a_refs]
        if adjoint and p == 2:
            a = [a[0], -a[1]]  # the adjoint runs with conj(a)
        zeros = [v * 0.0 for v in a]
        h0 = [ops.vec(r.at[i, cols]).astype(_F32) for r in h0_refs] if has_h0 else zeros
        big_a = _pow(a, C)
        xs = [s.at[buf] for s in x_slots]
        hs = [s.at[buf] for s in h_slots]
        order = [(u, t) for u in tiles for t in rows_in]
        if adjoint and stream_h:  # h of the rows after the first processed, into registers
            h_rows = [
                [ops.vec(r.at[i, r0 + u * TILE + t, cols]).astype(_F32) for r in hp_refs]
                for u, t in order[1:]
            ]

        # Pass 1: the zero-start scan of the chunk.
        y = zeros
        for u in tiles:
            ops.wait(bar(buf, u))
            for t in rows_in:
                x = [ops.vec(s.at[u, t]).astype(_F32) for s in xs]
                y = x if y is zeros else _add(_mul(a, y), x)

        def rows_of(k, inclusive):
            kind = 1 if inclusive else 0
            return [((kind * p + q) * n_chunks + k) * batch + i for q in range(p)]

        ops.publish(status_ref, rows_of(c, False), cols, y, **kw)
        h_in = zeros if adjoint else h0
        start = ops.look_back(status_ref, c - 1, rows_of, cols, big_a, h_in, spin_limit, **kw)
        end = _add(_mul(big_a, start), y)

        def publish_end():
            ops.publish(status_ref, rows_of(c, True), cols, end, **kw)

        if inclusive_every == 1:
            publish_end()
        else:  # tests: most chunks publish only their aggregate
            pl.when(c % inclusive_every == 0)(publish_end)

        # Pass 2: rescan from the start state, store y (and accumulate da).
        if adjoint:
            # h before the chunk's forward-first row (the last processed here): the row
            # just outside the chunk, or h0 at the sequence's forward start.
            first_f = (r0 == (length - C if reverse else 0)).astype(_I32)
            out_row = (r0 + C - first_f) if reverse else (r0 - 1 + first_f)
            edge = [ops.vec(r.at[i, out_row, cols]).astype(_F32) for r in hp_refs]
            edge = _mix(first_f.astype(_F32), h0, edge)
            da = zeros
        h = start
        tile_vals = [[None] * TILE for _ in xs]  # (the interpreter's TMA stores)
        for n, (u, t) in enumerate(order):
            x = [ops.vec(s.at[u, t]).astype(_F32) for s in xs]
            h = _add(_mul(a, h), x)
            if tma_store:  # over the staged row (read just above); the tile by TMA
                for s, v, rows in zip(xs, h, tile_vals, strict=True):
                    ops.put(s.at[u, t], v.astype(s.dtype))
                    rows[t] = v.astype(s.dtype)
                if t == rows_in[-1]:
                    tile_rows = pl.ds(r0 + u * TILE, TILE)
                    for s, r, rows in zip(xs, y_refs, tile_vals, strict=True):
                        ops.flush(s.at[u], r.at[i, tile_rows, cols], rows)
                    tile_vals = [[None] * TILE for _ in xs]
            else:
                for r, v in zip(y_refs, h, strict=True):
                    r[i, r0 + u * TILE + t, cols] = v.astype(r.dtype)
            if adjoint:
                if n + 1 == len(order):
                    h_prev = edge
                elif stream_h:
                    h_prev = h_rows[n]
                else:
                    un, tn = order[n + 1]  # the forward-previous row is the next one here
                    h_prev = [ops.vec(s.at[un, tn]).astype(_F32) for s in hs]
                da = _add(da, _mul(h, h_prev, conj=True))
        if tma_store:
            ops.drain()
        if adjoint:
            for q, v in enumerate(da):
                da_ref[c * batch + i, q, cols] = v
            cf = n_chunks - 1 - c  # the forward's chunk index

            def store_dh0():
                for r, v in zip(dh0_refs, _mul(h, a), strict=True):
                    r[i, cols] = v.astype(r.dtype)

            if has_h0:  # (no dh0 without h0)
                pl.when(cf == 0)(store_dh0)

    def next_ticket(k, buf):
        """Take the next ticket (shared through tick word ``k % 2``) and stage its chunk
        into ``buf`` (once every thread is done reading it)."""
        t = ops.ticket(counter_ref, tick_ref, k % 2)
        ops.release()

        @pl.when(t < n_work)
        def _():
            issue(t, buf)

        return t

    def body(state):
        t, k = state
        buf = k % 2
        t_next = next_ticket(k + 1, 1 - buf)
        process(t, buf)
        return t_next, k + 1

    if buffers == 2:  # persistent: loop over tickets, the next chunk staged during a scan
        first = next_ticket(jnp.int32(0), 0)
        lax.while_loop(lambda s: s[0] < n_work, body, (first, jnp.int32(0)))
        return
    # One chunk a program (the grid is the chunks: every ticket is below n_work).
    if grid_order:
        t = ops.grid_index()
        issue(t, 0)
        process(t, 0)
        return
    t = next_ticket(jnp.int32(0), 0)
    pl.when(t < n_work)(lambda: process(t, 0))


def _sm_count() -> int:
    """Streaming multiprocessors of the default device (132 on the H100 SXM)."""
    return int(getattr(jax.devices()[0], "core_count", 132) or 132)


def _call(cfg, ap, xp, hpp, h0p, adjoint: bool, out_dtype, chunk: int, programs_per_sm: int = 0):
    batch, length, d = xp[0].shape
    p = len(xp)
    buffers = 2 if programs_per_sm else 1
    stream_h = adjoint and STREAM_H
    # TMA stores go out of the staged buffer: same dtype.
    tma_store = TMA_STORE and jnp.dtype(out_dtype) == xp[0].dtype
    staged_in = xp if stream_h else (*xp, *hpp)
    # The largest chunk (whole tiles, at most ``chunk``) whose staged buffers fit.
    row_bytes = buffers * BLOCK_D * sum(v.dtype.itemsize for v in staged_in)
    chunk = min(chunk, (SMEM_BYTES - 1024) // row_bytes // TILE * TILE)
    if chunk < TILE:
        raise NotImplementedError(f"a {TILE}-step tile of {row_bytes} bytes a row does not fit")
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    xp = tuple(_pad(v, pad, cfg.reverse) for v in xp)  # (whole chunks, on the side scanned last)
    hpp = tuple(_pad(v, pad, cfg.reverse) for v in hpp)
    lp = length + pad
    interpret = cfg.interpret
    ops = _Interpret() if interpret else _Compiled()
    kernel = functools.partial(
        _kernel,
        ops=ops,
        n_planes=p,
        length=lp,
        chunk=chunk,
        n_chunks=n_chunks,
        batch=batch,
        d=d,
        reverse=cfg.reverse,
        adjoint=adjoint,
        shared_a=ap[0].shape[0] == 1,
        spin_limit=SPIN_LIMIT,
        inclusive_every=INCLUSIVE_EVERY,
        buffers=buffers,
        tma_store=tma_store,
        stream_h=stream_h,
        grid_order=GRID_ORDER and not programs_per_sm,  # (the persistent grid takes tickets)
        has_h0=bool(h0p),
    )
    seq = jax.ShapeDtypeStruct((batch, lp, d), out_dtype)
    out_shape = [seq] * p
    if adjoint:
        out_shape.append(jax.ShapeDtypeStruct((n_chunks * batch, p, d), _F32))
        out_shape += [jax.ShapeDtypeStruct((batch, d), v.dtype) for v in h0p]
    n_tiles = chunk // TILE
    staged = [v.dtype for v in (*xp, *(() if stream_h else hpp))]
    scratch = [plgpu.SMEM((buffers, n_tiles, TILE, BLOCK_D), dt) for dt in staged]
    scratch.append(plgpu.SMEM((2,), _I32))
    n_programs = n_chunks * batch * (d // BLOCK_D)
    if programs_per_sm:  # persistent: a resident grid that loops over the tickets
        n_programs = min(n_programs, programs_per_sm * (2 if interpret else _sm_count()))
    name = "linear_scan_lookback_mosaic_bwd" if adjoint else "linear_scan_lookback_mosaic"
    args = (*ap, *xp, *hpp, *h0p)
    if interpret:
        counter = jnp.zeros((1,), _I32)
        status = jnp.zeros((2 * p * n_chunks * batch, d), _I32)
        out_shape += [jax.ShapeDtypeStruct(x.shape, _I32) for x in (counter, status)]
        args = (*args, counter, status)
        n_in, n_out = len(args), len(out_shape)
        any_spec = pl.BlockSpec(memory_space=plgpu.GMEM)
        outs = pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(n_programs,),
            in_specs=[any_spec] * n_in,
            out_specs=[any_spec] * n_out,
            scratch_shapes=scratch,
            input_output_aliases={n_in - 2: n_out - 2, n_in - 1: n_out - 1},
            interpret=True,
            name=name,
        )(*args)
        outs = outs[:-2]
    else:
        scratch.append(plgpu.Barrier(num_arrivals=len(staged), num_barriers=buffers * n_tiles))
        # Each thread reads only its own channel's column of the staged chunk, and the one
        # cross-thread exchange (the ticket) has its own barrier: no automatic barriers.
        outs = plgpu.kernel(
            kernel,
            out_type=tuple(out_shape),
            scratch_types=scratch,
            grid=(n_programs,),
            grid_names=("p",),
            compiler_params=plgpu.CompilerParams(approx_math=True, unsafe_no_auto_barriers=True),
            kernel_name=name,
        )(*args)
    outs = list(outs)
    outs[:p] = [_unpad(v, length, pad, cfg.reverse) for v in outs[:p]]
    return outs, n_chunks


PROGRAMS_PER_SM = 0  # > 0: a persistent grid of this many programs per SM, double-buffered


def run_fwd_lookback_mosaic(cfg, ap, bp, h0p, chunk: int = CHUNK):
    """``h`` planes of the forward (``ap``: ``(Ba, d)`` time-invariant planes; ``bp``:
    ``(batch, l, d)``; ``h0p``: ``(batch, d)``, or ``()`` for zeros)."""
    outs, _ = _call(cfg, ap, bp, (), h0p, False, bp[0].dtype, chunk, PROGRAMS_PER_SM)
    return tuple(outs)


def run_bwd_lookback_mosaic(cfg, ap, hp, dhp, h0p, b_dtype, chunk: int = CHUNK):
    """Planes ``(db, da, dh0)`` with :func:`pallas_kernels.linear_scan._run_bwd`'s
    conventions for a time-invariant ``a`` (``da`` per sequence, ``(batch, d)`` fp32; no
    ``dh0`` planes for ``h0p = ()``, zeros)."""
    p = len(hp)
    batch, _, d = hp[0].shape
    outs, n_chunks = _call(cfg, ap, dhp, hp, h0p, True, b_dtype, chunk, PROGRAMS_PER_SM)
    db, (da,), dh0 = outs[:p], outs[p : p + 1], outs[p + 1 :]
    # One reduction for every plane (over the sequences too for a shared a: (1, d) planes).
    shared = ap[0].shape[0] == 1
    da = jnp.sum(da.reshape(n_chunks, batch, p, d), axis=(0, 1) if shared else 0)
    da = tuple(da[None, q] if shared else da[:, q] for q in range(p))
    return tuple(db), da, tuple(dh0)
