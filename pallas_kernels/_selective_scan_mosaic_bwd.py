"""The selective-scan backward as a Pallas Mosaic GPU kernel (``bwd_layout="mosaic"``, Hopper).

Why: the Triton ``"split"`` backward holds 4 steps of states and decays in registers per
checkpoint, so the forward writes the state every 4 steps (``b l d n / 4`` fp32, 2.1 GB at
(8, 4096, 4096, 16)) and reads it back, and its ``dB``/``dC`` partials of 16 channels
(1.07 GB fp32) go through HBM to an XLA sum. Here shared memory holds what registers cannot:

* One program = one warpgroup = 128 channels (thread ``i`` owns channel ``i`` and its ``n``
  states as ``n`` separate ``(128,)`` vectors), as in the Mosaic forward. The sequence runs
  in tiles of ``T = cfg.ckpt_every`` steps, last first; a tile's ``x``, ``dt``, ``z``,
  ``dy``, ``B``, ``C`` rows and the checkpointed state entering it are staged by TMA,
  ``cfg.bwd_stages`` tiles ahead (the forward saves one state per tile: ``b l d n / T``).
* Per tile, phase 1 walks it forward from the checkpoint and writes the state entering every
  sub-tile of ``S = cfg.bwd_sub`` steps to a shared-memory history ``(T / S, n, 128)``
  (each thread only its own column). Phase 2 takes the sub-tiles last first: reload the
  entering state, recompute the ``S`` states and decays in registers, run the adjoint
  backwards over them, and store ``dx``, ``ddt`` (through the softplus), ``dz`` rows
  straight to HBM. ``dA``, ``dD``, ``ddt_bias`` accumulate in registers.
* ``dB_t``/``dC_t`` (sums over channels of ``adj_k dt x`` and ``dy h_k``): per step, the
  ``2 n`` products of each thread are summed over the warp's 32 lanes by one butterfly
  reduce-scatter (``2 n - 1`` shuffles at ``n = 16``, after which lane ``l`` holds the sum
  of product ``l``; inline Mosaic GPU code, :func:`_butterfly`) and stored to a per-warp row
  of a shared ``(4, T, 2 n)`` buffer; at the tile's end the four warp rows are added and
  stored, so HBM sees one ``(T, 2 n)`` partial per 128 channels (XLA adds the blocks).

Lengths that are not whole tiles are padded at the end with ``dt = 0`` (the forward's mask:
decay 1, no input) and ``dy = 0``, so the adjoint meets ``dh`` unchanged at the true end;
the padded steps' ``ddt`` is masked and their rows dropped.

``interpret=True`` runs the same program in the Pallas interpreter: TMA copies become plain
copies and the butterfly runs its shuffles as ``jnp`` gathers within each warp (the same
lane algebra as the compiled code, so its owner mapping is tested on the CPU).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
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
from pallas_kernels._selective_scan_common import (
    _F32,
    _Config,
    _Inputs,
    _tree_sum,
    sum_blocks,
    to_blgn,
)
from pallas_kernels._selective_scan_mosaic import (
    _LN2,
    _sigmoid,
    _softplus,
    kernel_inputs,
    pad_time,
)

WARP = 32
WARPS = BLOCK_D // WARP
MAX_N = WARP // 2  # 2 n products per step, at most one per lane
TILE = 16  # default steps per tile (= the forward's checkpoint interval)


# ----------------------------------------------------------------------------------------
# The per-step dB/dC warp reduction
# ----------------------------------------------------------------------------------------


def butterfly_plan(m: int):
    """The butterfly over a warp for ``m`` (a power of two <= 32) values per lane:
    ``(scatter, allreduce)`` lane distances. Each ``scatter`` stage halves the values a lane
    holds (lanes ``l`` and ``l ^ dist`` each keep one half, the one selected by bit ``dist``
    of ``l``, and add the partner's); the ``allreduce`` stages then add the one value of
    lanes ``l ^ dist``. Shuffles: ``m - 1 + len(allreduce)``."""
    scatter = [WARP >> (i + 1) for i in range(int(math.log2(m)))]
    allreduce = [d for d in (16, 8, 4, 2, 1) if d < (scatter[-1] if scatter else 32)]
    return scatter, allreduce


def butterfly_owner(m: int) -> np.ndarray:
    """Which of the ``m`` products lane ``l`` holds the warp sum of, after the butterfly."""
    scatter, _ = butterfly_plan(m)
    lanes = np.arange(WARP)
    owner = np.zeros(WARP, np.int64)
    size = m
    for dist in scatter:
        size //= 2
        owner += np.where(lanes & dist, size, 0)
    return owner


def _butterfly_math(vals, lane, shfl, select, nonzero, add, owner_of):
    """The butterfly on per-lane values ``vals`` (``m`` of them), generic over the ops so the
    compiled kernel (MLIR) and the interpreter (``jnp``) run the same algebra. Returns
    ``(sum, product index)`` of this lane."""
    m = len(vals)
    scatter, allreduce = butterfly_plan(m)
    vals = list(vals)
    for dist in scatter:
        upper = nonzero(lane, dist)
        half = len(vals) // 2
        out = []
        for i in range(half):
            lo, hi = vals[i], vals[i + half]
            send = select(upper, lo, hi)
            keep = select(upper, hi, lo)
            out.append(add(keep, shfl(send, dist)))
        vals = out
    (v,) = vals
    for dist in allreduce:
        v = add(v, shfl(v, dist))
    return v, owner_of(lane)


def _butterfly_interpret(part_t, prods):
    """Interpreter twin of :func:`_butterfly_store`: ``part_t`` ``(WARPS, m)`` gets each
    warp's sums of the ``m`` products ``(128,)``, through the same lane algebra."""
    m = len(prods)
    idx = jnp.arange(BLOCK_D)
    lane = idx % WARP
    shift = WARP.bit_length() - 1 - int(math.log2(m))  # owner = (lane >> shift) & (m - 1)
    v, owner = _butterfly_math(
        prods,
        lane,
        shfl=lambda x, d: x[idx ^ d],
        select=lambda c, a, b: jnp.where(c, a, b),
        nonzero=lambda lane, d: (lane & d) != 0,
        add=lambda a, b: a + b,
        owner_of=lambda lane: (lane >> shift) & (m - 1),
    )
    out = jnp.zeros((WARPS, m), _F32).at[idx // WARP, owner].set(v)
    part_t[...] = out


def _butterfly_store(part_t, prods):
    """Compiled: the butterfly by ``shfl.sync.bfly`` (inline Mosaic GPU), then lane ``l`` of
    warp ``w`` stores its sum at ``part_t[w, owner(l)]`` (``part_t``: a ``(WARPS, m)``
    shared-memory view; lanes holding the same product store the same value)."""
    # Imported here: the Mosaic GPU internals load only when a compiled kernel is built.
    from jax.experimental.mosaic.gpu import utils as mu
    from jaxlib.mlir import ir
    from jaxlib.mlir.dialects import arith, memref, vector

    m = len(prods)
    line = plgpu.Layout.WG_STRIDED((BLOCK_D,), vec_size=1)
    shift = WARP.bit_length() - 1 - int(math.log2(m))

    @plgpu.inline_mgpu(arg_types=(plgpu.RefType(),) + (line,) * m)
    def store(ctx, ref, *arrays):
        del ctx
        i32 = ir.IntegerType.get_signless(32)
        c = lambda v: mu.c(v, i32)
        tid = mu.thread_idx()
        lane = arith.andi(tid, c(WARP - 1))
        warp = arith.andi(arith.shrui(tid, c(5)), c(WARPS - 1))
        pos = [ir.DenseI64ArrayAttr.get([0])]
        scalars = [
            vector.extract(a.registers.flat[0], dynamic_position=[], static_position=pos[0])
            for a in arrays
        ]
        v, owner = _butterfly_math(
            scalars,
            lane,
            shfl=lambda x, d: mu.shfl_bfly(x, d),
            select=lambda cond, a, b: arith.select(cond, a, b),
            nonzero=lambda ln, d: arith.cmpi(arith.CmpIPredicate.ne, arith.andi(ln, c(d)), c(0)),
            add=lambda a, b: arith.addf(a, b),
            owner_of=lambda ln: arith.andi(arith.shrui(ln, c(shift)), c(m - 1)),
        )
        index = ir.IndexType.get()
        memref.store(v, ref, [arith.index_cast(index, warp), arith.index_cast(index, owner)])

    store(part_t, *prods)


# ----------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------


def _names(cfg: _Config):
    seq = ["x", "dt"] + (["z"] if cfg.has_z else []) + ["dy"]
    ins = [*seq, "B", "C", "ckpt", "A2", "dh"]
    ins += (["D"] if cfg.has_D else []) + (["bias"] if cfg.has_bias else [])
    outs = ["dx", "ddt"] + (["dz"] if cfg.has_z else []) + ["dbc", "dA"]
    outs += (["dD"] if cfg.has_D else []) + (["dbias"] if cfg.has_bias else []) + ["dh0"]
    return seq, ins, outs


def _kernel(*refs, cfg: _Config, ops: Ops, length: int, n: int, n_tiles: int):
    seq_names, ins, outs = _names(cfg)
    n_arrays = len(ins) + len(outs)
    r = dict(zip(ins + outs, refs[:n_arrays], strict=True))
    staged = [*seq_names, "B", "C", "ckpt"]
    s = dict(zip(staged, refs[n_arrays : n_arrays + len(staged)], strict=True))
    hist, part = refs[n_arrays + len(staged) : n_arrays + len(staged) + 2]
    bars = None if ops.interpret else refs[-1]
    T, S = cfg.ckpt_every, cfg.bwd_sub
    m = 2 * n
    per_group = r["x"].shape[2] // BLOCK_D // cfg.groups
    di, b = ops.program_ids()
    cols = pl.ds(di * BLOCK_D, BLOCK_D)
    grp = lax.div(di, per_group)
    sources = [lambda rows, ref=r[k]: ref.at[b, rows, cols] for k in seq_names]
    sources += [lambda rows, ref=r[k]: ref.at[b, grp, rows] for k in ("B", "C")]
    sources.append(lambda rows: r["ckpt"].at[b, lax.div(rows.start, T), :, cols])
    order = lambda k: n_tiles - 1 - k  # last tile first
    ring = TileRing(ops, sources, [s[k] for k in staged], bars, T, n_tiles, order)
    ring.prologue()
    a2 = [ops.vec(r["A2"].at[k, cols]) for k in range(n)]
    D = ops.vec(r["D"].at[cols]) if cfg.has_D else None
    bias = ops.vec(r["bias"].at[cols]) if cfg.has_bias else None
    masked = length % T != 0
    bfly = _butterfly_interpret if ops.interpret else _butterfly_store
    part_layout = None
    if not ops.interpret:
        part_layout = plgpu.Layout.WG_STRIDED((T, m), vec_size=max(1, min(4, T * m // BLOCK_D)))

    def inputs(slot, t, pos):
        """``(x, dt_pre, dt, dt x, mask)`` of step ``t`` of the tile (``pos`` in the sequence;
        ``mask``: 1 or 0 as a scalar where the last tile is padded, else ``None``)."""
        x = ops.vec(s["x"].at[slot, t]).astype(_F32)
        dt_pre = ops.vec(s["dt"].at[slot, t]).astype(_F32)
        if bias is not None:
            dt_pre = dt_pre + bias
        dt = _softplus(dt_pre) if cfg.softplus else dt_pre
        mask = None
        if masked:
            mask = (pos < length).astype(_F32)  # a scalar factor (no select's broadcast)
            dt = dt * mask
        return x, dt_pre, dt, dt * x, mask

    def tile_body(tile, slot, carry):
        start = tile * T

        # Phase 1: the states entering each sub-tile, from the tile's checkpoint.
        def fwd_sub(j, h):
            for k in range(n):
                hist[j, k] = h[k]
            h = list(h)
            for u in range(S):
                t = j * S + u
                _, _, dt, dtx, _ = inputs(slot, t, start + t)
                for k in range(n):
                    h[k] = jnp.exp2(dt * a2[k]) * h[k] + dtx * s["B"][slot, t, k]
            return tuple(h)

        h0 = tuple(ops.vec(s["ckpt"].at[slot, k]) for k in range(n))
        h_last = lax.fori_loop(0, T // S - 1, fwd_sub, h0)
        for k in range(n):
            hist[T // S - 1, k] = h_last[k]

        # Phase 2: sub-tiles last first: recompute, then the adjoint backwards.
        def bwd_sub(i, carry):
            j = T // S - 1 - i
            adj, acc_A, acc_D, acc_bias = (list(v) if isinstance(v, tuple) else v for v in carry)
            hs = [[ops.vec(hist.at[j, k]) for k in range(n)]]
            steps = []
            for u in range(S):
                t = j * S + u
                x, dt_pre, dt, dtx, mask = inputs(slot, t, start + t)
                dA = [jnp.exp2(dt * a2[k]) for k in range(n)]
                hs.append([dA[k] * hs[-1][k] + dtx * s["B"][slot, t, k] for k in range(n)])
                steps.append((t, x, dt_pre, dt, dtx, mask, dA))
            for u in reversed(range(S)):
                t, x, dt_pre, dt, dtx, mask, dA = steps[u]
                h_prev, h = hs[u], hs[u + 1]
                pos = start + t
                Cv = [s["C"][slot, t, k] for k in range(n)]
                dy = ops.vec(s["dy"].at[slot, t]).astype(_F32)
                if cfg.has_z:
                    z = ops.vec(s["z"].at[slot, t]).astype(_F32)
                    y = _tree_sum(h[k] * Cv[k] for k in range(n))
                    if D is not None:
                        y = y + D * x
                    sig = _sigmoid(z)
                    dz = dy * y * sig * (1.0 + z * (1.0 - sig))
                    r["dz"][b, pos, cols] = dz.astype(r["dz"].dtype)
                    dy = dy * (z * sig)
                for k in range(n):
                    adj[k] = adj[k] + dy * Cv[k]
                prods = [adj[k] * dtx for k in range(n)] + [dy * h[k] for k in range(n)]
                bfly(part.at[:, t], prods)
                adj_b = _tree_sum(adj[k] * s["B"][slot, t, k] for k in range(n))
                dda = []
                for k in range(n):
                    da = adj[k] * h_prev[k] * dA[k]  # dL / d(dt A_k)
                    acc_A[k] = acc_A[k] + da * dt
                    dda.append(da * a2[k])
                    adj[k] = adj[k] * dA[k]
                ddt = x * adj_b + _tree_sum(dda) * _LN2
                if cfg.softplus:
                    ddt = ddt * _sigmoid(dt_pre)
                if mask is not None:
                    ddt = ddt * mask
                dx = dt * adj_b
                if D is not None:
                    acc_D = acc_D + dy * x
                    dx = dx + D * dy
                if bias is not None:
                    acc_bias = acc_bias + ddt
                r["dx"][b, pos, cols] = dx.astype(r["dx"].dtype)
                r["ddt"][b, pos, cols] = ddt.astype(r["ddt"].dtype)
            return tuple(adj), tuple(acc_A), acc_D, acc_bias

        carry = lax.fori_loop(0, T // S, bwd_sub, carry)
        # The tile's dB/dC rows: the four warps' sums added (all warps' rows written first).
        ops.release()
        if ops.interpret:
            total = part[0] + part[1] + part[2] + part[3]
        else:
            rows = [
                plgpu.load(part.at[w], (), layout=part_layout, optimized=False)
                for w in range(WARPS)
            ]
            total = (rows[0] + rows[1]) + (rows[2] + rows[3])
        r["dbc"][b, di, pl.ds(start, T), :] = total
        return carry

    adj0 = tuple(ops.vec(r["dh"].at[b, k, cols]) for k in range(n))
    zeros = adj0[0] * 0.0  # in the registers' layout
    carry = (
        adj0,
        tuple(zeros for _ in range(n)),
        zeros if cfg.has_D else None,
        zeros if cfg.has_bias else None,
    )
    adj, acc_A, acc_D, acc_bias = ring.loop(tile_body, carry)
    for k in range(n):
        r["dA"][b, k, cols] = acc_A[k]
        r["dh0"][b, k, cols] = adj[k]
    if cfg.has_D:
        r["dD"][b, cols] = acc_D
    if cfg.has_bias:
        r["dbias"][b, cols] = acc_bias


# ----------------------------------------------------------------------------------------
# Limits and launch
# ----------------------------------------------------------------------------------------


def smem_bytes(cfg: _Config, p: _Inputs) -> int:
    """Shared memory: the staged tiles, the sub-tile history and the dB/dC warp rows."""
    T, n = cfg.ckpt_every, p.A.shape[1]
    seq = [p.x, p.dt, p.x] + ([p.z] if p.z is not None else [])  # x, dt, dy (x's dtype), z
    per_stage = T * sum(BLOCK_D * v.dtype.itemsize for v in seq) + 2 * T * n * 4 + n * BLOCK_D * 4
    history = (T // max(cfg.bwd_sub, 1)) * n * BLOCK_D * 4
    return cfg.bwd_stages * per_stage + history + WARPS * T * 2 * n * 4


def supported(cfg: _Config, p: _Inputs) -> str | None:
    """Why the Mosaic backward cannot run this call (``None`` when it can)."""
    d, n = p.x.shape[2], p.A.shape[1]
    T, S = cfg.ckpt_every, cfg.bwd_sub
    if plgpu is None:
        return "jax.experimental.pallas.mosaic_gpu cannot be imported"
    if not cfg.interpret and not on_hopper():
        return "needs a compute capability 9.0 GPU (H100/H200)"
    if cfg.layout != "mosaic":
        return "needs the Mosaic forward (layout='mosaic'): its checkpoints, one per tile"
    if (d // cfg.groups) % BLOCK_D:
        return f"d / g = {d // cfg.groups} is not a multiple of {BLOCK_D}"
    if not 4 <= n <= MAX_N:
        return f"n = {n} outside 4..{MAX_N} (2 n products per step, one per lane)"
    if S < 1 or T % S or T // S < 1:
        return f"mosaic_bwd_sub={S} must divide bwd_unroll={T}"
    if (T * 2 * n) % BLOCK_D:
        return f"bwd_unroll * 2 n = {T * 2 * n} is not a multiple of {BLOCK_D}"
    if cfg.tile % T:
        return f"bwd_unroll={T} must divide mosaic_tile={cfg.tile}"
    if cfg.bwd_stages < 1:
        return f"mosaic_bwd_stages={cfg.bwd_stages} must be positive"
    if smem_bytes(cfg, p) > SMEM_BYTES:
        return f"{smem_bytes(cfg, p)} bytes of shared memory exceed {SMEM_BYTES}"
    return None


def run_bwd_mosaic(cfg: _Config, p: _Inputs, ckpt, dy, dh) -> _Inputs:
    """Every input's gradient (as ``selective_scan._run_bwd``; ``A``, ``D``, ``dt_bias``
    summed over the batch, ``B``/``C`` over the channel blocks), from the Mosaic forward's
    checkpoints ``ckpt`` ``(b, ceil(l / T), n, d)``, ``dy`` ``(b, l, d)``, ``dh`` ``(b, d,
    n)``."""
    b, length, d = p.x.shape
    n = p.A.shape[1]
    T = cfg.ckpt_every
    n_tiles = -(-length // T)
    pad = n_tiles * T - length
    padded = length + pad

    arrays = kernel_inputs(p, pad)
    arrays["dy"] = pad_time(dy.astype(p.x.dtype), pad)
    arrays["ckpt"] = ckpt
    arrays["dh"] = jnp.swapaxes(dh.astype(_F32), 1, 2)  # (b, n, d)
    seq_names, ins, outs = _names(cfg)
    seq_shape = lambda dtype: jax.ShapeDtypeStruct((b, padded, d), dtype)
    shapes = {
        "dx": seq_shape(p.x.dtype),
        "ddt": seq_shape(p.dt.dtype),
        "dz": None if p.z is None else seq_shape(p.z.dtype),
        "dbc": jax.ShapeDtypeStruct((b, d // BLOCK_D, padded, 2 * n), _F32),
        "dA": jax.ShapeDtypeStruct((b, n, d), _F32),
        "dD": jax.ShapeDtypeStruct((b, d), _F32),
        "dbias": jax.ShapeDtypeStruct((b, d), _F32),
        "dh0": jax.ShapeDtypeStruct((b, n, d), _F32),
    }
    slot_shapes = [((T, BLOCK_D), arrays[k].dtype) for k in seq_names]
    slot_shapes += [((T, n), _F32)] * 2 + [((n, BLOCK_D), _F32)]  # B, C, checkpoint
    scratch = staging(slot_shapes, cfg.bwd_stages, cfg.interpret)
    bars = [] if cfg.interpret else [scratch.pop()]
    scratch += [
        plgpu.SMEM((T // cfg.bwd_sub, n, BLOCK_D), _F32),  # history
        plgpu.SMEM((WARPS, T, 2 * n), _F32),  # per-warp dB/dC sums of the tile
        *bars,
    ]
    ops = Ops(cfg.interpret)
    kernel = functools.partial(_kernel, cfg=cfg, ops=ops, length=length, n=n, n_tiles=n_tiles)
    call = launch(
        kernel,
        out_shape=[shapes[k] for k in outs],
        scratch=scratch,
        n_in=len(ins),
        grid=(d // BLOCK_D, b),
        interpret=cfg.interpret,
        name="selective_scan_bwd_mosaic",
        approx_math=cfg.fast_math,
    )
    res = dict(zip(outs, call(*(arrays[k] for k in ins)), strict=True))
    cut = lambda v: v if pad == 0 else v[:, :length]
    # (b, d / 128, l, 2 n): one row per channel block -> (b, g, l, 2 n)
    dbc = sum_blocks(res["dbc"][:, :, :length], cfg.groups)
    return _Inputs(
        x=cut(res["dx"]),
        dt=cut(res["ddt"]),
        A=res["dA"].sum(0).T,
        B=to_blgn(dbc[..., :n]),
        C=to_blgn(dbc[..., n:]),
        D=res["dD"].sum(0) if cfg.has_D else None,
        z=cut(res["dz"]) if cfg.has_z else None,
        dt_bias=res["dbias"].sum(0) if cfg.has_bias else None,
        h0=jnp.swapaxes(res["dh0"], 1, 2),
    )
