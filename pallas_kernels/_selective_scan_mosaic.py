"""The selective-scan forward as a Pallas Mosaic GPU kernel (``layout="mosaic"``, Hopper).

Why a second backend: the Triton forward prefetches each next block of ``x``, ``dt``,
``z`` and ``B``/``C`` through registers, which caps its occupancy (168 registers, 255 in the
forward that saves checkpoints; BENCHMARKS.md). Here the inputs are staged by TMA into
shared memory, ``cfg.stages`` tiles of ``cfg.tile`` steps ahead, so the time loop only ever waits on
shared-memory reads and holds little more than the state in registers.

One program = one warpgroup (128 threads) = ``BLOCK_D`` channels, thread ``i`` owning channel
``i`` and its ``n`` states as ``n`` separate ``(BLOCK_D,)`` vectors (the Triton
``"channel"`` layout). Per tile: wait for its TMA barrier, run its ``cfg.tile`` steps (``y``
stored straight to HBM, and when saving, the state entering every ``ckpt_every`` steps),
then -- after a warpgroup barrier that also orders our shared-memory reads before the
asynchronous copy -- refill the tile's slot with tile ``+ stages``.

``interpret=True`` runs the same program in the Pallas interpreter with the TMA copies,
barrier waits and register layouts replaced by plain reads and writes
(:class:`pallas_kernels._mosaic_common.Ops`), so the tile bookkeeping (slots, refills,
checkpoints, padding) is tested on a CPU; the Mosaic lowering itself is tested by lowering
for CUDA, and its numbers by the GPU benchmark.
"""

from __future__ import annotations

import math

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
from pallas_kernels._selective_scan_common import _F32, _Config, _Inputs

_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)


def _softplus(v):
    """``log(1 + exp(v))``: ``max(v, 0) + log1p(exp(-|v|))`` with ``log1p(e)`` as
    ``log2(1 + e) ln 2`` for ``e >= 1/8`` and its 7-term series below (the formula of
    :func:`pallas_kernels._intrinsics.softplus`; ``exp2``/``log2`` are MUFU approximations
    in the compiled kernel)."""
    e = jnp.exp2(-jnp.abs(v) * _LOG2E)
    series = 1.0 / 7.0
    for k in range(6, 0, -1):
        series = (1.0 if k % 2 else -1.0) / k + e * series
    series = e * series
    return jnp.maximum(v, 0.0) + jnp.where(e < 0.125, series, jnp.log2(1.0 + e) * _LN2)


def _sigmoid(v):
    return 1.0 / (1.0 + jnp.exp2(-v * _LOG2E))


def _names(cfg: _Config, save: bool):
    ins = ["x", "dt"] + (["z"] if cfg.has_z else []) + ["B", "C", "A2", "h0"]
    ins += (["D"] if cfg.has_D else []) + (["bias"] if cfg.has_bias else [])
    outs = ["y", "hT"] + (["ckpt"] if save else [])
    return ins, outs


def _kernel(*refs, cfg: _Config, ops: Ops, length: int, n: int, n_tiles: int, save: bool):
    ins, outs = _names(cfg, save)
    seq_names = ["x", "dt"] + (["z"] if cfg.has_z else [])
    n_arrays = len(ins) + len(outs)
    r = dict(zip(ins + outs, refs[:n_arrays], strict=True))
    smem_names = [s + "_s" for s in (*seq_names, "B", "C")]
    smem = dict(zip(smem_names, refs[n_arrays : n_arrays + len(smem_names)], strict=True))
    bars = None if ops.interpret else refs[-1]
    per_group = r["x"].shape[2] // BLOCK_D // cfg.groups  # channel blocks per B/C group
    di, b = ops.program_ids()
    cols = pl.ds(di * BLOCK_D, BLOCK_D)
    grp = lax.div(di, per_group)
    unroll = cfg.ckpt_every if save else cfg.unroll
    tile_len = cfg.tile
    sources = [lambda rows, ref=r[name]: ref.at[b, rows, cols] for name in seq_names]
    sources += [lambda rows, ref=r[name]: ref.at[b, grp, rows] for name in ("B", "C")]
    ring = TileRing(ops, sources, [smem[k] for k in smem_names], bars, tile_len, n_tiles)
    ring.prologue()
    a2 = [ops.vec(r["A2"].at[k, cols]) for k in range(n)]
    D = ops.vec(r["D"].at[cols]) if cfg.has_D else None
    bias = ops.vec(r["bias"].at[cols]) if cfg.has_bias else None
    h_init = tuple(ops.vec(r["h0"].at[b, k, cols]) for k in range(n))
    masked = length % tile_len != 0  # the last tile runs past the end: no decay, no input there

    def step(slot, pos, t, h):
        """Step ``pos`` (= tile start + ``t``) from the tile in ``slot``."""
        dt = ops.vec(smem["dt_s"].at[slot, t]).astype(_F32)
        x = ops.vec(smem["x_s"].at[slot, t]).astype(_F32)
        if bias is not None:
            dt = dt + bias
        if cfg.softplus:
            dt = _softplus(dt)
        if masked:
            dt = dt * (pos < length).astype(_F32)  # a scalar factor (no select's broadcast)
        dtx = dt * x
        y = None
        h = list(h)
        for k in range(n):
            h[k] = jnp.exp2(dt * a2[k]) * h[k] + dtx * smem["B_s"][slot, t, k]
            term = h[k] * smem["C_s"][slot, t, k]
            y = term if y is None else y + term
        if D is not None:
            y = y + D * x
        if cfg.has_z:
            z = ops.vec(smem["z_s"].at[slot, t]).astype(_F32)
            y = y * (z * _sigmoid(z))
        r["y"][b, pos, cols] = y.astype(r["y"].dtype)
        return tuple(h)

    def tile_body(tile, slot, h):
        start = tile * tile_len

        def group(i, h):
            t0 = i * unroll
            if save:  # the state entering steps start + t0 ...: checkpoint (start + t0) / unroll
                blk = lax.div(start + t0, unroll)
                for k in range(n):
                    r["ckpt"][b, blk, k, cols] = h[k]
            for u in range(unroll):
                h = step(slot, start + t0 + u, t0 + u, h)
            return h

        return lax.fori_loop(0, tile_len // unroll, group, h)

    h = ring.loop(tile_body, h_init)
    for k in range(n):
        r["hT"][b, k, cols] = h[k]


def pad_time(v, pad: int):
    """``v`` ``(b, l, ...)`` with ``pad`` zero steps appended (whole tiles)."""
    return v if pad == 0 else jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2))


def bc_tiles(v, pad: int):
    """``B`` or ``C`` ``(b, l, g, n)`` -> ``(b, g, l + pad, n)`` fp32, so a tile of one
    group is contiguous rows."""
    return jnp.transpose(pad_time(v.astype(_F32), pad), (0, 2, 1, 3))


def smem_bytes(cfg: _Config, p: _Inputs) -> int:
    """Shared memory of the staged tiles."""
    seq = [p.x, p.dt] + ([p.z] if p.z is not None else [])
    per_step = sum(BLOCK_D * v.dtype.itemsize for v in seq) + 2 * p.A.shape[1] * 4
    return cfg.stages * cfg.tile * per_step


def supported(cfg: _Config, p: _Inputs) -> str | None:
    """Why the Mosaic forward cannot run this call (``None`` when it can)."""
    d, n = p.x.shape[2], p.A.shape[1]
    if plgpu is None:
        return "jax.experimental.pallas.mosaic_gpu cannot be imported"
    if not cfg.interpret and not on_hopper():
        return "needs a compute capability 9.0 GPU (H100/H200)"
    if (d // cfg.groups) % BLOCK_D:
        return f"d / g = {d // cfg.groups} is not a multiple of {BLOCK_D}"
    if n < 4:  # TMA rows of B/C: at least 16 bytes
        return f"n = {n} < 4"
    if cfg.tile < 1 or cfg.stages < 1:
        return f"mosaic_tile={cfg.tile}, mosaic_stages={cfg.stages} must be positive"
    for u in (cfg.unroll, cfg.ckpt_every):
        if cfg.tile % u:
            return f"unroll {u} does not divide mosaic_tile={cfg.tile}"
    if cfg.bwd_layout not in ("channel", "split", "mosaic"):
        return "its checkpoints are in the channel layouts' (n, d) order"
    if smem_bytes(cfg, p) > SMEM_BYTES:
        return f"{smem_bytes(cfg, p)} bytes of staged tiles exceed {SMEM_BYTES}"
    return None


def kernel_inputs(p: _Inputs, pad: int) -> dict:
    """The inputs the Mosaic forward and backward both take: ``x``, ``dt``, ``z`` padded by
    ``pad`` steps at the end, ``B``/``C`` as :func:`bc_tiles`, ``A2`` = ``A log2(e)`` ``(n,
    d)`` fp32, ``D``, ``bias`` fp32 (``None`` where absent)."""
    seq = lambda v: pad_time(v, pad)
    return {
        "x": seq(p.x),
        "dt": seq(p.dt),
        "z": None if p.z is None else seq(p.z),
        "B": bc_tiles(p.B, pad),
        "C": bc_tiles(p.C, pad),
        "A2": (p.A.astype(_F32) * _LOG2E).T,
        "D": None if p.D is None else p.D.astype(_F32),
        "bias": None if p.dt_bias is None else p.dt_bias.astype(_F32),
    }


def run_fwd_mosaic(cfg: _Config, p: _Inputs, save: bool):
    """``[y (b, l, d), h_last (b, d, n) fp32]`` (+ ``ckpt (b, ceil(l / ckpt_every), n, d)``
    fp32 when ``save``), as ``selective_scan._run_fwd`` returns them; the call was checked
    by :func:`supported` at the entry point."""
    b, length, d = p.x.shape
    n = p.A.shape[1]
    n_tiles = -(-length // cfg.tile)
    pad = n_tiles * cfg.tile - length

    arrays = kernel_inputs(p, pad)
    arrays["h0"] = jnp.swapaxes(p.h0.astype(_F32), 1, 2)  # (b, n, d)
    ins, _ = _names(cfg, save)
    padded = n_tiles * cfg.tile
    out_shape = [
        jax.ShapeDtypeStruct((b, padded, d), p.x.dtype),
        jax.ShapeDtypeStruct((b, n, d), _F32),
    ]
    unroll = cfg.ckpt_every
    if save:
        out_shape.append(jax.ShapeDtypeStruct((b, padded // unroll, n, d), _F32))
    seq_names = ["x", "dt"] + (["z"] if cfg.has_z else [])
    slot_shapes = [((cfg.tile, BLOCK_D), arrays[s].dtype) for s in seq_names]
    slot_shapes += [((cfg.tile, n), _F32)] * 2  # B, C
    scratch = staging(slot_shapes, cfg.stages, cfg.interpret)
    ops = Ops(cfg.interpret)
    kernel = lambda *refs: _kernel(
        *refs, cfg=cfg, ops=ops, length=length, n=n, n_tiles=n_tiles, save=save
    )
    call = launch(
        kernel,
        out_shape=out_shape,
        scratch=scratch,
        n_in=len(ins),
        grid=(d // BLOCK_D, b),
        interpret=cfg.interpret,
        name="selective_scan_fwd_mosaic",
        approx_math=cfg.fast_math,
    )
    res = list(call(*(arrays[k] for k in ins)))
    if pad:
        res[0] = res[0][:, :length]
    res[1] = jnp.swapaxes(res[1], 1, 2)
    if save:
        n_ckpt = -(-length // unroll)
        if res[2].shape[1] != n_ckpt:
            res[2] = res[2][:, :n_ckpt]
    return res
