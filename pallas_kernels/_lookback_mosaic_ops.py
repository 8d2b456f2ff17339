"""The operations of :mod:`pallas_kernels._linear_scan_lookback_mosaic` that differ between
its compiled Mosaic GPU kernel and the Pallas interpreter: the ticket, staging, the status
words (published and polled) and the look-back walk; compiled, the ticket and the status
words are PTX through ``plgpu.inline_mgpu``, since Pallas Mosaic GPU has no load that sees
other programs' writes and its atomics return nothing.

Status words: one int32 per channel and plane, the bitwise NOT of the fp32 value's bits
(:func:`_encode`), ``0`` meaning unpublished.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._linear_scan_mosaic import _mul
from pallas_kernels._mosaic_common import BLOCK_D, plgpu

_F32 = jnp.float32
_I32 = jnp.int32


def _encode(x):
    return lax.bitwise_not(lax.bitcast_convert_type(x, _I32))


def _decode(w):
    return lax.bitcast_convert_type(lax.bitwise_not(w), _F32)


class _Interpret:
    """Programs run in grid order: tickets from a plain counter (the first program takes
    them all); status words are plain refs."""

    interpret = True

    def ticket(self, counter_ref, tick_ref, slot):
        del tick_ref, slot
        t = counter_ref[0]
        counter_ref[0] = t + 1
        return t

    def release(self):
        pass

    def grid_index(self):
        return pl.program_id(0)

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

    def grid_index(self):
        return lax.axis_index("p")

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
        words with ``ld.relaxed.gpu`` (L2 reads), one chunk a trip."""
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
