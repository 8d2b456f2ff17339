"""The single-read L-parallel linear scan for a time-invariant ``a`` as a Pallas Mosaic GPU
kernel (Hopper): every chunk staged once by TMA into shared memory, its start state found
by a decoupled look-back over the earlier chunks' published end states.

The same schedule as :mod:`pallas_kernels._linear_scan_lookback` (Triton), whose forward
moves only ~1.7 TB/s on the H100 (rows loaded one element per thread, the chunk held in
registers). Here, as in :mod:`pallas_kernels._linear_scan_mosaic`, a program is one
warpgroup, one channel per thread, 128 channels, and the chunk's ``chunk`` rows are staged
by TMA (``TILE``-row tiles, one barrier each, all issued at the start) into shared memory,
where they stay until the chunk is written:

1. The program takes a ticket from an atomic counter (one thread, shared through shared
   memory): chunks are handed out in scan order whatever order the GPU starts programs in,
   so a program only waits on programs that are already running.
2. Pass 1: scan the staged chunk from a zero state; publish its *aggregate* (that end state).
3. Look-back, per thread (its own channel): walk back over the earlier chunks of the
   sequence, adding each published value times ``A^k`` (``A = a^chunk``), until a chunk
   with a published *inclusive* end state (chunk 0's includes ``h0``); wait on unpublished
   ones. The sum is the chunk's start state.
4. Publish the inclusive end state ``A s + aggregate``; pass 2: rescan the staged chunk from
   ``s``, storing ``h`` (backward: ``db = g`` and ``da`` from the staged ``h``).

Status words: one int32 per channel and plane, the bitwise NOT of the fp32 value's bits, in a
zero-filled buffer: ``0`` (the NaN ``0xFFFFFFFF``, which GPU arithmetic never produces) means
unpublished, anything else is final; no flag, no fence. Written by ``st.relaxed.gpu`` and
polled by ``ld.relaxed.gpu`` (both served by L2) in PTX through ``plgpu.inline_mgpu``, since
Pallas Mosaic GPU has no load that sees other programs' writes and its atomics return
nothing. The wait is bounded (``SPIN_LIMIT`` polls; past it the state is NaN, never a hang).

In the Pallas interpreter (CPU tests) programs run one after another in grid order: the
ticket counter is a plain read and write (so the first program takes every ticket and the
others find none left), status words are plain stores and loads, and the same look-back runs
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

The status and counter buffers are ``pl.get_global`` semaphore arrays, which the Mosaic GPU
lowering passes in zero-filled to every call (checked in the lowered program by the tests;
``plgpu.kernel`` on JAX 0.11 has no input/output aliasing for buffers of our own, and
``pl.pallas_call`` no longer lowers to Mosaic GPU).

Measured on the H100 (BENCHMARKS.md, seventeenth and eighteenth sessions; device time,
complex time-invariant planes, 64-step chunks): forward+backward 0.140 ms at (8, 4096, 256)
(forward kernel 0.054, backward kernel 0.079 ms: ~2.5 and ~2.5 TB/s), against 0.145 with
neither ``TMA_STORE`` nor ``STREAM_H``, 0.157 for the two-read L-parallel Mosaic scan and
0.390 for plain ``lax.associative_scan`` (2.79x); 0.143 at (4, 8192, 256) and (1, 16384,
512). The persistent form (``PROGRAMS_PER_SM``: a resident grid looping over tickets, the
next chunk staged during the scan) measured slower (0.166-0.168 ms), and so did 32-step
chunks for the backward (0.155), a look-back window of 4 or 8 chunks was no faster
(0.147-0.148 against 0.148): all off.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._linear_scan_mosaic import TILE, _add, _mix, _mul, _pad, _pow, _unpad
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
# Chunks a compiled look-back trip polls at once (their words loaded together, then taken in
# order), cutting a walk over n published aggregates from n L2 round trips to ~n / window:
# 4 and 8 ran correct on the H100 and no faster than 1 (eighteenth session), so 1.
LOOK_BACK_WINDOW = 1
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


def _encode(x):
    return lax.bitwise_not(lax.bitcast_convert_type(x, _I32))


def _decode(w):
    return lax.bitcast_convert_type(lax.bitwise_not(w), _F32)


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
# The operations that differ between the compiled kernel (PTX through inline_mgpu) and its
# interpretation.
# ----------------------------------------------------------------------------------------


class _Interpret:
    """Programs run in grid order: ticket = program id; status words are plain refs."""

    interpret = True

    def ticket(self, counter_ref, tick_ref, slot):
        del tick_ref, slot
        t = counter_ref[0]
        counter_ref[0] = t + 1
        return t

    def release(self):
        pass

    def vec(self, ref):
        return ref[...]

    def stage(self, src, dst, bar):
        del bar
        dst[...] = src[...]

    def wait(self, bar):
        del bar

    def put(self, ref, v):
        """Nothing: :meth:`flush` stores the tile's rows at once (one store, where a store
        per row into shared memory made the interpreted tests ~2.5x slower)."""
        del ref, v

    def flush(self, src, dst, rows):
        del src
        dst[...] = jnp.stack(rows)

    def drain(self):
        pass

    def publish(self, status_ref, rows, cols, vals):
        for r, v in zip(rows, vals, strict=True):
            status_ref[r, cols] = _encode(v)

    def look_back(self, status_ref, k0, rows_of, cols, big_a, h0, spin_limit):
        """``start = sum_m A^m v_{k0-m}`` over the chunks back to the first inclusive one
        (``+ A^(k0+1) h0`` when none is)."""
        zeros = [x * 0.0 for x in h0]
        one = [zeros[0] + 1.0, *zeros[1:]]

        def peek(k, inclusive):
            return [status_ref[r, cols] for r in rows_of(k, inclusive)]

        def cond(state):
            k, _, _, done, spins = state
            return (k >= 0) & (jnp.min(done) == 0) & (spins < spin_limit)

        def body(state):
            k, acc, mult, done, spins = state
            inc, ag = peek(k, True), peek(k, False)
            inc_ok = functools.reduce(jnp.logical_and, [w != 0 for w in inc])
            ag_ok = functools.reduce(jnp.logical_and, [w != 0 for w in ag])
            ready = (done > 0) | inc_ok | ag_ok
            go = jnp.min(ready.astype(_I32)) > 0
            val = [_decode(jnp.where(inc_ok, w, v)) for w, v in zip(inc, ag, strict=True)]
            take = go & (done == 0)
            acc = [jnp.where(take, x + y, x) for x, y in zip(acc, _mul(mult, val), strict=True)]
            mult = [jnp.where(go, y, x) for x, y in zip(mult, _mul(mult, big_a), strict=True)]
            done = done | (take & inc_ok).astype(_I32)
            moved = go.astype(_I32)
            return k - moved, acc, mult, done, spins + (1 - moved)

        init = (k0, zeros, one, jnp.zeros(h0[0].shape, _I32), jnp.asarray(0, _I32))
        _, acc, mult, done, _ = lax.while_loop(cond, body, init)
        return [jnp.where(done > 0, x, x + y) for x, y in zip(acc, _mul(mult, h0), strict=True)]


class _Compiled:
    """The Mosaic GPU side: TMA staging, and PTX for the ticket and the status words."""

    interpret = False

    def __init__(self):
        self.vec_layout = plgpu.Layout.WG_STRIDED((BLOCK_D,), vec_size=1)
        self.scalar = plgpu.Layout.WG_SPLAT(())

    def vec(self, ref):
        return plgpu.load(ref, (), layout=self.vec_layout, optimized=False)

    def stage(self, src, dst, bar):
        plgpu.copy_gmem_to_smem(src, dst, bar)

    def wait(self, bar):
        plgpu.barrier_wait(bar)

    def release(self):
        """All threads are done reading shared memory before a copy into it (a warpgroup
        barrier and a proxy fence)."""
        plgpu.commit_smem()

    def put(self, ref, v):
        ref[...] = v

    def flush(self, src, dst, rows):
        """Stores a tile written to shared memory by TMA, once every thread wrote its column
        (a proxy fence and a warpgroup barrier first); ``rows``: its values (the
        interpreter's)."""
        del rows
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(src, dst)

    def drain(self):
        """Waits for this program's TMA stores (before its shared memory is staged again)."""
        plgpu.wait_smem_to_gmem(0)

    def ticket(self, counter_ref, tick_ref, slot):
        """One thread adds 1 to the counter (``atom.add``, its old value is the ticket) and
        shares it through word ``slot`` of ``tick_ref`` (alternate slots on consecutive
        calls: a word is rewritten only after every thread passed the barrier of the call in
        between, so after it read the word)."""
        from jax.experimental.mosaic import gpu as mgpu
        from jax.experimental.mosaic.gpu import utils as mu
        from jaxlib.mlir import ir
        from jaxlib.mlir.dialects import arith, llvm, memref

        @plgpu.inline_mgpu(
            arg_types=(plgpu.RefType(), plgpu.RefType(), self.scalar),
            return_type=plgpu.ShapeDtypeStruct((), _I32, self.scalar),
        )
        def take(ctx, counter, tick, k):
            del ctx
            i32 = ir.IntegerType.get_signless(32)
            zero = arith.index_cast(ir.IndexType.get(), k.registers.item())
            with mu.single_thread(mu.ThreadSubset.WARPGROUP):
                old = llvm.inline_asm(
                    i32,
                    [mu.memref_ptr(counter)],
                    "atom.relaxed.gpu.global.add.u32 $0, [$1], 1;",
                    "=r,l",
                    has_side_effects=True,
                )
                memref.store(old, tick, [zero])
            mu.warpgroup_barrier()
            t = memref.load(tick, [zero])
            return mgpu.FragmentedArray.splat(t, (), is_signed=True)

        return take(counter_ref, tick_ref, slot)

    def _lane_offset(self, layout):
        from jaxlib.mlir import ir
        from jaxlib.mlir.dialects import arith

        (idx,) = list(layout.linear_thread_idxs())
        return arith.index_cast(ir.IntegerType.get_signless(32), idx)

    def publish(self, status_ref, rows, cols, vals, *, d):
        """Each thread stores its channel's words (NOT of the bits) with ``st.relaxed.gpu``.
        ``rows``: one scalar row per plane of the ``(rows, d)`` status buffer; ``cols``: the
        program's ``pl.ds`` of channels."""
        from jax.experimental.mosaic.gpu import utils as mu
        from jaxlib.mlir import ir
        from jaxlib.mlir.dialects import arith, llvm, vector

        p = len(vals)
        offsets = [r * d + cols.start for r in rows]

        @plgpu.inline_mgpu(
            arg_types=(plgpu.RefType(), [self.scalar] * p, [self.vec_layout] * p),
            return_type=None,
        )
        def store(ctx, status, offs, vs):
            del ctx
            i32 = ir.IntegerType.get_signless(32)
            ptr = mu.memref_ptr(status)
            lane = self._lane_offset(vs[0].layout)
            for off, v in zip(offs, vs, strict=True):
                x = vector.extract(v.registers.item(), [], [0])
                word = arith.xori(arith.bitcast(i32, x), mu.c(-1, i32))
                addr = mu.getelementptr(ptr, [arith.addi(off.registers.item(), lane)], i32)
                llvm.inline_asm(
                    ir.Type.parse("!llvm.void"),
                    [addr, word],
                    "st.relaxed.gpu.global.b32 [$0], $1;",
                    "l,r",
                    has_side_effects=True,
                )

        store(status_ref, offsets, list(vals))

    def look_back(self, status_ref, k0, rows_of, cols, big_a, h0, spin_limit, *, d):
        """The interpreter's look-back as one ``scf.while`` per thread, polling its channel's
        words with ``ld.relaxed.gpu`` (L2 reads), ``LOOK_BACK_WINDOW`` chunks a trip (the same
        sum as the interpreter's chunk-at-a-time walk)."""
        from jax.experimental.mosaic import gpu as mgpu
        from jax.experimental.mosaic.gpu import utils as mu
        from jaxlib.mlir import ir
        from jaxlib.mlir.dialects import arith, llvm, scf, vector

        p = len(h0)
        # Row of chunk k (plane q) = base_row(q, inclusive) + k * row_step, affine in k.
        inc0, ag0 = rows_of(0, True), rows_of(0, False)
        row_step = rows_of(1, False)[0] - ag0[0]
        base = [r * d + cols.start for r in (*ag0, *inc0)]
        step = row_step * d
        window_size = LOOK_BACK_WINDOW

        @plgpu.inline_mgpu(
            arg_types=(
                plgpu.RefType(),
                self.scalar,
                self.scalar,
                [self.scalar] * (2 * p),
                [self.vec_layout] * p,
                [self.vec_layout] * p,
            ),
            return_type=[plgpu.ShapeDtypeStruct((BLOCK_D,), _F32, self.vec_layout)] * p,
        )
        def walk(ctx, status, k_start, k_step, bases, a_big, h_0):
            del ctx
            i32 = ir.IntegerType.get_signless(32)
            f32 = ir.F32Type.get()
            i1 = ir.IntegerType.get_signless(1)
            ptr = mu.memref_ptr(status)
            lane = self._lane_offset(a_big[0].layout)
            scal = lambda v: vector.extract(v.registers.item(), [], [0])
            A = [scal(v) for v in a_big]
            H0 = [scal(v) for v in h_0]
            offs = [arith.addi(b.registers.item(), lane) for b in bases]
            kst = k_step.registers.item()
            zero_f, one_f = mu.c(0.0, f32), mu.c(1.0, f32)
            zero_i = mu.c(0, i32)

            def cmul(x, y):
                if p == 1:
                    return [arith.mulf(x[0], y[0])]
                re = arith.subf(arith.mulf(x[0], y[0]), arith.mulf(x[1], y[1]))
                im = arith.addf(arith.mulf(x[0], y[1]), arith.mulf(x[1], y[0]))
                return [re, im]

            def load(off):
                addr = mu.getelementptr(ptr, [off], i32)
                return llvm.inline_asm(
                    i32,
                    [addr],
                    "ld.relaxed.gpu.global.b32 $0, [$1];",
                    "=r,l",
                    has_side_effects=True,
                )

            def all_set(words):
                ok = [arith.cmpi(arith.CmpIPredicate.ne, w, zero_i) for w in words]
                return functools.reduce(arith.andi, ok)

            sel = lambda c, x, y: [arith.select(c, u, v) for u, v in zip(x, y, strict=True)]
            # state: k, acc (p), mult (p), spins, done
            types = [i32] + [f32] * (2 * p) + [i32, i1]
            init = [k_start.registers.item()] + [zero_f] * p + [one_f] + [zero_f] * (p - 1)
            init += [zero_i, mu.c(0, i1)]
            loop = scf.WhileOp(types, init)
            before = loop.before.blocks.append(*types)
            with ir.InsertionPoint.at_block_begin(before):
                k, spins, done = before.arguments[0], before.arguments[-2], before.arguments[-1]
                go_on = arith.andi(
                    arith.cmpi(arith.CmpIPredicate.sge, k, zero_i),
                    arith.andi(
                        arith.xori(done, mu.c(1, i1)),
                        arith.cmpi(arith.CmpIPredicate.slt, spins, mu.c(spin_limit, i32)),
                    ),
                )
                scf.condition(go_on, list(before.arguments))
            after = loop.after.blocks.append(*types)
            with ir.InsertionPoint.at_block_begin(after):
                args = list(after.arguments)
                if window_size == 1:  # one chunk a trip (the form measured on the H100)
                    k, acc, mult, spins = (
                        args[0],
                        args[1 : 1 + p],
                        args[1 + p : 1 + 2 * p],
                        args[-2],
                    )
                    kk = arith.muli(k, kst)
                    ag = [load(arith.addi(o, kk)) for o in offs[:p]]
                    inc = [load(arith.addi(o, kk)) for o in offs[p:]]
                    inc_ok, ag_ok = all_set(inc), all_set(ag)
                    ready = arith.ori(inc_ok, ag_ok)
                    words = sel(inc_ok, inc, ag)
                    val = [arith.bitcast(f32, arith.xori(w, mu.c(-1, i32))) for w in words]
                    added = [arith.addf(x, y) for x, y in zip(acc, cmul(mult, val), strict=True)]
                    acc = sel(ready, added, acc)
                    mult = sel(ready, cmul(mult, A), mult)
                    one_i = arith.extui(i32, ready)
                    k = arith.subi(k, one_i)
                    spins = arith.addi(spins, arith.subi(mu.c(1, i32), one_i))
                    done = arith.andi(ready, inc_ok)
                    scf.yield_([k, *acc, *mult, spins, done])
                else:  # LOOK_BACK_WINDOW chunks a trip (not yet run on a GPU)
                    k, acc, mult = args[0], args[1 : 1 + p], args[1 + p : 1 + 2 * p]
                    spins, done = args[-2], args[-1]
                    # The words of chunks k, k-1, ... are all loaded first (2 p window loads
                    # in flight), then taken in order up to a chunk with nothing published
                    # (the next trip polls it again) or one with its inclusive state.
                    window = []
                    for w in range(window_size):
                        j = arith.subi(k, mu.c(w, i32))
                        jj = arith.muli(arith.maxsi(j, zero_i), kst)
                        ag = [load(arith.addi(o, jj)) for o in offs[:p]]
                        inc = [load(arith.addi(o, jj)) for o in offs[p:]]
                        window.append((j, ag, inc))
                    blocked, moved = mu.c(0, i1), zero_i
                    for j, ag, inc in window:
                        inc_ok, ag_ok = all_set(inc), all_set(ag)
                        ready = arith.ori(inc_ok, ag_ok)
                        active = arith.andi(
                            arith.xori(arith.ori(blocked, done), mu.c(1, i1)),
                            arith.cmpi(arith.CmpIPredicate.sge, j, zero_i),
                        )
                        take = arith.andi(active, ready)
                        words = sel(inc_ok, inc, ag)
                        val = [arith.bitcast(f32, arith.xori(w, mu.c(-1, i32))) for w in words]
                        added = [
                            arith.addf(x, y) for x, y in zip(acc, cmul(mult, val), strict=True)
                        ]
                        acc = sel(take, added, acc)
                        mult = sel(take, cmul(mult, A), mult)
                        done = arith.ori(done, arith.andi(take, inc_ok))
                        unready = arith.xori(ready, mu.c(1, i1))
                        blocked = arith.ori(blocked, arith.andi(active, unready))
                        moved = arith.addi(moved, arith.extui(i32, take))
                    k = arith.subi(k, moved)
                    stuck = arith.cmpi(arith.CmpIPredicate.eq, moved, zero_i)
                    spins = arith.addi(spins, arith.extui(i32, stuck))
                    scf.yield_([k, *acc, *mult, spins, done])
            res = list(loop.results)
            acc, mult, spins, done = res[1 : 1 + p], res[1 + p : 1 + 2 * p], res[-2], res[-1]
            # No inclusive value reached: the walk went back to the sequence's start (h0).
            start = sel(done, acc, [arith.addf(x, y) for x, y in zip(acc, cmul(mult, H0))])
            # Gave up (a status never published): NaN, never a hang.
            timed_out = arith.cmpi(arith.CmpIPredicate.sge, spins, mu.c(spin_limit, i32))
            nan = mu.c(float("nan"), f32)
            start = [arith.select(timed_out, nan, x) for x in start]
            vty = ir.VectorType.get((1,), f32)
            layout = a_big[0].layout
            return [
                mgpu.FragmentedArray(
                    _registers=np.array([vector.broadcast(vty, x)], dtype=object),
                    _layout=layout,
                    _is_signed=None,
                )
                for x in start
            ]

        return walk(status_ref, k0, step, base, list(big_a), list(h0))


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
    tma_store=False,
    stream_h=False,
):
    """Chunks of ``chunk`` steps of 128 channels of one sequence, picked by ticket, until the
    tickets run out (a program may take many: the grid can be smaller than the chunks).
    With ``buffers == 2`` the next chunk is staged while this one is scanned.

    Refs (lists of ``n_planes`` planes): inputs ``a`` ``(Ba, d)``, ``x`` ``(batch, length,
    d)`` (``b``, or ``dh`` when ``adjoint``), ``h`` (``adjoint`` only, for ``da``), ``h0``
    ``(batch, d)``, in the interpreter the counter ``(1,)`` and status ``(2 * n_planes *
    n_chunks * batch, d)`` int32 zeros; outputs ``y`` (``h`` or ``db``), ``da`` ``(n_chunks *
    batch, n_planes, d)`` (one array) and ``dh0`` (``adjoint`` only), in the interpreter
    then the counter and status (aliased to those inputs; compiled, both are zero-filled
    global semaphore arrays of ``pl.get_global``, the status one flat); scratch: the staged
    ``x`` (and ``h``, unless ``stream_h``) chunks
    ``(buffers, chunk / TILE, TILE, 128)``, two words for the ticket and, compiled, one TMA
    barrier per tile and buffer. Status row of (plane ``q``, chunk ``k`` in this kernel's
    order, sequence ``i``): ``((kind * n_planes + q) * n_chunks + k) * batch + i``, ``kind`` 0
    for aggregates, 1 for inclusive end states.
    """
    p, C = n_planes, chunk
    n_tiles = C // TILE
    it = iter(refs)
    take = lambda k: [next(it) for _ in range(k)]
    a_refs, x_refs = take(p), take(p)
    hp_refs = take(p) if adjoint else []
    h0_refs = take(p)
    if ops.interpret:
        take(2)  # counter and status inputs: aliased to the outputs below
    y_refs = take(p)
    da_ref, dh0_refs = (next(it), take(p)) if adjoint else (None, [])
    if ops.interpret:
        counter_ref, status_ref = take(2)
    else:  # zero-filled global semaphore arrays, one per call of the kernel
        counter_ref = pl.get_global(plgpu.SemaphoreType.REGULAR((1,)))
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
        h0 = [ops.vec(r.at[i, cols]).astype(_F32) for r in h0_refs]
        zeros = [v * 0.0 for v in a]
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

            @pl.when(cf == 0)
            def _():
                for r, v in zip(dh0_refs, _mul(h, a), strict=True):
                    r[i, cols] = v.astype(r.dtype)

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
        if buffers == 2:
            buf = k % 2
            t_next = next_ticket(k + 1, 1 - buf)
            process(t, buf)
        else:
            process(t, 0)
            t_next = next_ticket(k + 1, 0)
        return t_next, k + 1

    first = next_ticket(jnp.int32(0), 0)
    lax.while_loop(lambda s: s[0] < n_work, body, (first, jnp.int32(0)))


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
    )
    seq = jax.ShapeDtypeStruct((batch, lp, d), out_dtype)
    out_shape = [seq] * p
    if adjoint:
        out_shape.append(jax.ShapeDtypeStruct((n_chunks * batch, p, d), _F32))
        out_shape += [jax.ShapeDtypeStruct((batch, d), h0p[0].dtype)] * p
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
    ``(batch, l, d)``; ``h0p``: ``(batch, d)``)."""
    outs, _ = _call(cfg, ap, bp, (), h0p, False, bp[0].dtype, chunk, PROGRAMS_PER_SM)
    return tuple(outs)


def run_bwd_lookback_mosaic(cfg, ap, hp, dhp, h0p, b_dtype, chunk: int = CHUNK):
    """Planes ``(db, da, dh0)`` with :func:`pallas_kernels.linear_scan._run_bwd`'s
    conventions for a time-invariant ``a`` (``da`` per sequence, ``(batch, d)`` fp32)."""
    p = len(hp)
    batch, _, d = hp[0].shape
    outs, n_chunks = _call(cfg, ap, dhp, hp, h0p, True, b_dtype, chunk, PROGRAMS_PER_SM)
    db, (da,), dh0 = outs[:p], outs[p : p + 1], outs[p + 1 :]
    # One reduction for every plane (over the sequences too for a shared a: (1, d) planes).
    shared = ap[0].shape[0] == 1
    da = jnp.sum(da.reshape(n_chunks, batch, p, d), axis=(0, 1) if shared else 0)
    da = tuple(da[None, q] if shared else da[:, q] for q in range(p))
    return tuple(db), da, tuple(dh0)
