"""The complex time-invariant forward with a channel's two planes on a pair of lanes.

:mod:`pallas_kernels._linear_scan_mosaic` gives each thread one complex channel (both
planes), so ``(batch, l, d)`` complex inputs make ``batch * d / 128`` programs: 64 at the
S5/LRU benchmark shape, half an H100's SMs. Here a program covers 64 complex channels with
its 128 threads: lane ``16 p + c`` of warp ``w`` holds plane ``p`` (0 real, 1 imaginary) of
channel ``16 w + c``, so the programs double. Each step a lane takes its partner's state
(lane ``l ^ 16``, one warp shuffle) and computes its plane of
``h_t = a h_{t-1} + b_t``: ``h_p = ca h_p + cb h_{1-p} + b_p`` with ``ca = Re a`` and
``cb = -Im a`` for the real plane, ``+Im a`` for the imaginary one (per-lane constants).

The ``b`` planes are staged by TMA as ``(tile, 16)`` boxes, one per (warp, plane), into a
``(stages, 4, 2, tile, 16)`` shared-memory ring, so a time row of the ring read as a
``(4, 2, 16)`` array puts element ``(w, p, c)`` on thread ``32 w + 16 p + c``; the new
states are written to a ring of the same shape and stored by TMA a tile at a time. The
backward is the one-channel-per-thread kernel's (:func:`run_bwd_mosaic`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

import pallas_kernels._linear_scan_mosaic as lm
from pallas_kernels._mosaic_common import BLOCK_D, SMEM_BYTES, Ops, TileRing, launch, plgpu

_F32 = jnp.float32
WARPS = BLOCK_D // 32
LANES = 16  # channels per warp: each on two lanes
PAIR_D = WARPS * LANES  # complex channels per program
VIEW = (WARPS, 2, LANES)  # a row of a ring slot as the threads hold it
BOXES = [(w, p) for w in range(WARPS) for p in range(2)]


def _swap_planes(ops: Ops, x):
    """The partner lane's value (``l ^ 16``): the other plane of the same channel."""
    if ops.interpret:
        idx = jnp.arange(BLOCK_D) ^ LANES
        return x.reshape(BLOCK_D)[idx].reshape(x.shape)
    # Imported here: the Mosaic GPU internals load only when a compiled kernel is built.
    import numpy as np
    from jax.experimental.mosaic import gpu as mgpu
    from jax.experimental.mosaic.gpu import utils as mu
    from jaxlib.mlir import ir
    from jaxlib.mlir.dialects import vector

    layout = plgpu.Layout.WG_STRIDED(VIEW, vec_size=1)

    @plgpu.inline_mgpu(arg_types=(layout,), return_type=plgpu.ShapeDtypeStruct(VIEW, _F32, layout))
    def swap(ctx, arr):
        del ctx
        pos = ir.DenseI64ArrayAttr.get([0])
        out = np.empty_like(arr.registers)
        for i, reg in np.ndenumerate(arr.registers):
            s = vector.extract(reg, dynamic_position=[], static_position=pos)
            out[i] = vector.broadcast(reg.type, mu.shfl_bfly(s, LANES))
        return mgpu.FragmentedArray(_registers=out, _layout=arr.layout, _is_signed=None)

    return swap(x)


def _fwd_kernel(*refs, reverse, n_tiles, unroll, ops):
    b_re, b_im, ca_ref, cb_ref, h0_ref, h_re, h_im, ring, out = refs[:9]
    bars = None if ops.interpret else refs[9]
    di, bi = ops.program_ids()
    b_planes, h_planes = (b_re, b_im), (h_re, h_im)

    def cols(w):
        return pl.ds(di * PAIR_D + w * LANES, LANES)

    sources = [lambda rows, ref=b_planes[p], w=w: ref.at[bi, rows, cols(w)] for w, p in BOXES]
    order = (lambda k: n_tiles - 1 - k) if reverse else (lambda k: k)
    tiles = TileRing(
        ops, sources, [ring.at[:, w, p] for w, p in BOXES], bars, lm.TILE, n_tiles, order
    )
    tiles.prologue()
    a_row = 0 if ca_ref.shape[0] == 1 else bi
    ca = ops.vec(ca_ref.at[a_row, di])
    cb = ops.vec(cb_ref.at[a_row, di])
    h = ops.vec(h0_ref.at[bi, di])

    def tile_body(tile, slot, h):
        def group(i, h):
            for u in range(unroll):
                j = i * unroll + u
                t = lm.TILE - 1 - j if reverse else j
                x = ops.vec(ring.at[slot, :, :, t, :]).astype(_F32)
                h = ca * h + (cb * _swap_planes(ops, h) + x)
                out[slot, :, :, t, :] = h.astype(out.dtype)
            return h

        return lax.fori_loop(0, lm.TILE // unroll, group, h)

    def before_release(tile, slot):
        # The out slot the next tile writes was stored stages - 1 tiles ago (see
        # _linear_scan_mosaic._loop_storing).
        ops.wait_stores(len(BOXES) * (tiles.stages - 2))

    def after_release(tile, slot):
        rows = pl.ds(tile * lm.TILE, lm.TILE)
        for w, p in BOXES:
            ops.store(out.at[slot, w, p], h_planes[p].at[bi, rows, cols(w)])

    tiles.loop(tile_body, h, before_release, after_release)
    ops.wait_stores(0, read_only=False)


def _lanes(re, im):
    """``(rows, d)`` planes -> ``(rows, d / 64, 4, 2, 16)``: element ``(k, w, p, c)`` is
    plane ``p`` of channel ``64 k + 16 w + c`` (the threads' order)."""
    rows, d = re.shape
    shape = (rows, d // PAIR_D, WARPS, 1, LANES)
    return jnp.concatenate([re.reshape(shape), im.reshape(shape)], axis=3)


def stages(dtype) -> int:
    """Tiles in flight: input and output rings of ``8`` ``(tile, 16)`` boxes a slot."""
    per_stage = 2 * lm.TILE * BLOCK_D * jnp.dtype(dtype).itemsize
    return max(2, min(lm.MAX_STAGES, SMEM_BYTES // per_stage))


def run_fwd_pairs(cfg, ap, bp, h0p):
    """``(h_re, h_im)`` ``(batch, l, d)`` of a time-invariant complex ``a`` (``ap``: two
    ``(Ba, d)`` planes), as :func:`pallas_kernels._linear_scan_mosaic.run_fwd_mosaic`."""
    batch, length, d = bp[0].shape
    n_tiles, pad = lm._tiling(length)
    bp = tuple(lm._pad(v, pad, cfg.reverse) for v in bp)
    a_re, a_im = (v.astype(_F32) for v in ap)
    ca, cb = _lanes(a_re, a_re), _lanes(-a_im, a_im)
    h0 = _lanes(*(v.astype(_F32) for v in h0p))
    dtype = bp[0].dtype
    n = stages(dtype)
    ring_shape = (n, *VIEW[:2], lm.TILE, LANES)
    scratch = [plgpu.SMEM(ring_shape, dtype), plgpu.SMEM(ring_shape, dtype)]
    if not cfg.interpret:
        scratch.append(plgpu.Barrier(num_arrivals=len(BOXES), num_barriers=n))
    ops = Ops(cfg.interpret)
    body = functools.partial(
        _fwd_kernel, reverse=cfg.reverse, n_tiles=n_tiles, unroll=cfg.unroll, ops=ops
    )
    out_shape = [jax.ShapeDtypeStruct((batch, length + pad, d), dtype)] * 2
    call = launch(
        body,
        out_shape=out_shape,
        scratch=scratch,
        n_in=5,
        grid=(d // PAIR_D, batch),
        interpret=cfg.interpret,
        name="linear_scan_fwd_mosaic_pairs",
    )
    hp = call(*bp, ca, cb, h0)
    return tuple(lm._unpad(h, length, pad, cfg.reverse) for h in hp)
