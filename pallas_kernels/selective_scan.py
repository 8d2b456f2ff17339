"""Fused Mamba-1 selective scan, forward and backward: Pallas-Triton kernels, plus a Pallas
Mosaic GPU forward on Hopper.

Semantics are exactly those of ``ssmjax.ops.selective_scan`` (its ``"sequential"``
reference): ``dt = softplus(dt + dt_bias)`` (both optional), ``h_t = exp(dt_t A) h_{t-1} +
dt_t B_t x_t``, ``y_t = <C_t, h_t> + D x_t``, ``y_t *= silu(z_t)``, grouped ``B``/``C``,
``h0`` in and the final state out.

Forward kernel: grid ``(batch, d / BD)``; each program keeps the ``(BD, n)`` state of its
``BD`` channels in fp32 registers and walks the sequence. Per step it loads the ``x``,
``dt`` (and ``z``) rows of its channels and the ``B_t``, ``C_t`` rows of its group *once
for the whole channel block*, computes ``exp2(dt * A log2 e)`` (``A`` is pre-scaled), the
state update, the contraction with ``C``, ``D`` and the gate, and writes only ``y``: the
``(b, l, d, n)`` state never reaches HBM. Steps run in blocks of ``unroll`` with the next
block's rows prefetched (:func:`pallas_kernels._common.blocked_loop`). When differentiated,
the forward also writes the state every ``bwd_unroll`` steps (``l / bwd_unroll``
checkpoints, ``(b, ceil(l / bwd_unroll), d, n)`` fp32; ``bwd_unroll`` divides ``unroll``).

Two register layouts (``layout=`` for the forward, ``bwd_layout=`` for the backward):

* ``"state"`` -- the state is one ``(BD, n)`` block. Triton spreads each channel's ``n``
  states over several threads, so per-channel work (softplus, sigmoid, ``D``, ``z``) is
  repeated on each of them and ``y = sum_n C_n h_n`` needs cross-thread shuffles.
* ``"channel"`` -- the channels are ``(BD,)`` vectors (one channel per thread with the
  default ``num_warps = BD / 32``) and the state is ``n`` separate ``(BD,)`` vectors (the
  ``n`` loop unrolled in Python); ``B_t[k]``, ``C_t[k]`` are scalar loads, ``A`` comes
  transposed ``(n, d)`` so column ``k`` is a ``(BD,)`` load, and every sum over ``n`` is
  per-thread (a pairwise sum, dependency depth ``log2 n``). ``h0``/final state travel as
  ``(b, n, d)`` (transposed outside); the backward's checkpoints are ``(b, n_ckpt, n, d)``
  when both kernels use this layout. ``block_d / (32 num_warps)`` channels per thread:
  more than one gives each thread independent chains (instruction-level parallelism) and
  shares the scalar ``B_t``/``C_t`` loads between them.

* ``"split"`` -- the channel layout on twice the threads: two threads per channel, each
  with ``n / 2`` of its states (vectors of ``2 BD`` elements, element ``e`` = channel
  ``e // 2``, half ``e % 2``). Twice the warps to hide latency with half the registers per
  thread, at the price of repeating the per-channel work on both threads and one lane
  shuffle per sum over ``n`` (``y``; in the backward also ``adj . B`` and ``dA . A``).

* ``"mosaic"`` -- the channel layout (one channel per thread, 128 channels per program =
  one warpgroup) as a Pallas **Mosaic GPU** kernel: ``x``, ``dt``, ``z`` and ``B``/``C`` are
  staged by TMA into shared memory ``mosaic_stages`` tiles of ``mosaic_tile`` steps ahead,
  so nothing is prefetched through registers (:mod:`pallas_kernels._selective_scan_mosaic`).
  Compute capability 9.0 GPUs. The default forward wherever it runs (``layout=None``).
  As ``bwd_layout``: the Mosaic GPU backward
  (:mod:`pallas_kernels._selective_scan_mosaic_bwd`): 16-step tiles staged by TMA, one
  checkpoint per tile, the states entering 2-step sub-tiles kept in shared memory and
  recomputed into registers, ``dB``/``dC`` by inline warp shuffles and one partial per 128
  channels. The default backward after the Mosaic forward where it runs (``4 <= n <= 16``)
  and no Triton backward option is given; its checkpoints come from the Mosaic forward.

bf16 ``B``/``C`` with even ``n`` are passed to the channel kernels as ``uint32`` words of two
values (``pack_bc``; a shift and a bitcast unpack them), which halves their scalar loads and
the registers a prefetched block of them needs, so by default they are prefetched a block
ahead with the other rows.

Defaults: see :func:`selective_scan` (the channel backward holds ``~2 n bwd_unroll`` fp32
values per thread, so its block is short).

Two-pass forward (``chunks > 1``, calls that are not differentiated): the chunks become
extra batch rows; the kernel runs once from zero states for every chunk's end state, an
associative scan over the chunks gives the true start states, and the kernel runs again
from them (:func:`_run_fwd_two_pass`).

Triton backward kernels (``"channel"``, ``"split"``, ``"state"``; the Mosaic backward is
described in its module): same grid, blocks last-first. Per block it reloads the checkpoint,
recomputes the block's ``bwd_unroll`` states and decays *in registers* (fully unrolled, so no
state goes to HBM and no exp is recomputed twice), then runs the adjoint recurrence
``adj_t = C_t dy_t + exp(dt_{t+1} A) adj_{t+1}`` backwards through the block and writes
``dx``, ``ddt`` (through the softplus), ``dz``, and per-program partial ``dB_t``, ``dC_t``
rows (reduced over the program's ``BD`` channels; with ``bwd_butterfly`` and one warp of
32 channels, or the ``"split"`` backward, by a butterfly reduce-scatter of all ``2 n``
partials at once, ``2 n - 1`` lane shuffles instead of ``5`` per partial;
:mod:`pallas_kernels._intrinsics`).
``dA``, ``dD``, ``ddt_bias`` are accumulated in registers and written once. Partial
``dB``/``dC`` (one per channel block) and the per-batch parameter gradients are summed
outside the kernel -- no atomics.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from pallas_kernels._common import check_backend, is_pow2, pow2_divisor
from pallas_kernels._intrinsics import WARP, butterfly_positions
from pallas_kernels._selective_scan_common import (
    _F32,
    _IO_DTYPES,
    _LOG2E,
    CHANNEL_LAYOUTS,
    _ckpt_channel,
    _compiler_params,
    _Config,
    _Inputs,
    _packed,
    pack_bf16_pairs,
    sum_blocks,
    to_blgn,
)
from pallas_kernels._selective_scan_kernels import (
    _bwd_kernel,
    _bwd_kernel_channel,
    _fwd_kernel,
    _fwd_kernel_channel,
)
from pallas_kernels._selective_scan_mosaic import BLOCK_D as MOSAIC_BLOCK_D
from pallas_kernels._selective_scan_mosaic import run_fwd_mosaic
from pallas_kernels._selective_scan_mosaic import supported as mosaic_supported
from pallas_kernels._selective_scan_mosaic_bwd import TILE as MOSAIC_BWD_TILE
from pallas_kernels._selective_scan_mosaic_bwd import run_bwd_mosaic
from pallas_kernels._selective_scan_mosaic_bwd import supported as mosaic_bwd_supported
from pallas_kernels._selective_scan_split import (
    SPLIT_MASKS,
    _bwd_kernel_split,
    _fwd_kernel_split,
)
from pallas_kernels.linear_scan import default_chunks

__all__ = ["selective_scan"]

# ----------------------------------------------------------------------------------------
# pallas_call wrappers (kernel bodies: pallas_kernels._selective_scan_kernels, _split)
# ----------------------------------------------------------------------------------------


def _spec_fns(cfg: _Config, d: int, length: int, n: int):
    bd = cfg.block_d
    per_group = (d // cfg.groups) // bd  # channel blocks per B/C group
    n_bc = n // 2 if _packed(cfg) else n
    return {
        "seq": pl.BlockSpec((None, length, bd), lambda i, j: (i, 0, j)),
        "bc": pl.BlockSpec((None, length, None, n_bc), lambda i, j: (i, 0, j // per_group, 0)),
        "chan": pl.BlockSpec((bd,), lambda i, j: (j,)),
        "chan_n": pl.BlockSpec((bd, n), lambda i, j: (j, 0)),
        "n_chan": pl.BlockSpec((n, bd), lambda i, j: (0, j)),
        "state_t": pl.BlockSpec((None, n, bd), lambda i, j: (i, 0, j)),
        "state": pl.BlockSpec((None, bd, n), lambda i, j: (i, j, 0)),
        "vec": pl.BlockSpec((None, bd), lambda i, j: (i, j)),
        "part": pl.BlockSpec((None, None, length, n), lambda i, j: (i, j, 0, 0)),
    }


def _common_inputs(cfg: _Config, p: _Inputs, s, channel: bool = False):
    A2 = p.A.astype(_F32) * _LOG2E
    if _packed(cfg):
        p = p._replace(B=pack_bf16_pairs(p.B), C=pack_bf16_pairs(p.C))
    if channel:
        args = [p.x, p.dt, A2.T, p.B, p.C]
        specs = [s["seq"], s["seq"], s["n_chan"], s["bc"], s["bc"]]
    else:
        args = [p.x, p.dt, A2, p.B, p.C]
        specs = [s["seq"], s["seq"], s["chan_n"], s["bc"], s["bc"]]
    for v, spec in ((p.D, s["chan"]), (p.z, s["seq"]), (p.dt_bias, s["chan"])):
        if v is not None:
            args.append(v.astype(_F32) if spec is s["chan"] else v)
            specs.append(spec)
    return args, specs


def _run_fwd(cfg: _Config, p: _Inputs, save: bool):
    if cfg.layout == "mosaic":
        return run_fwd_mosaic(cfg, p, save)
    b, length, d = p.x.shape
    n = p.A.shape[1]
    s = _spec_fns(cfg, d, length, n)
    channel = cfg.layout in CHANNEL_LAYOUTS
    args, specs = _common_inputs(cfg, p, s, channel=channel)
    if channel:
        args.append(jnp.swapaxes(p.h0, 1, 2))  # (b, n, d)
        specs.append(s["state_t"])
        body = _fwd_kernel_split if cfg.layout == "split" else _fwd_kernel_channel
        kernel = functools.partial(body, cfg=cfg, length=length, save=save, n=n)
        h_shape, h_spec = (b, n, d), s["state_t"]
    else:
        args.append(p.h0)
        specs.append(s["state"])
        kernel = functools.partial(_fwd_kernel, cfg=cfg, length=length, save=save)
        h_shape, h_spec = (b, d, n), s["state"]
    out_shape = [
        jax.ShapeDtypeStruct((b, length, d), p.x.dtype),
        jax.ShapeDtypeStruct(h_shape, _F32),
    ]
    out_specs = [s["seq"], h_spec]
    if save:
        # ckpt_late: the state after every ckpt_every steps, so one more (the last unused)
        n_ckpt = -(-length // cfg.ckpt_every) + int(cfg.ckpt_late)
        bd = cfg.block_d
        if _ckpt_channel(cfg):
            out_shape.append(jax.ShapeDtypeStruct((b, n_ckpt, n, d), _F32))
            out_specs.append(pl.BlockSpec((None, n_ckpt, n, bd), lambda i, j: (i, 0, 0, j)))
        else:
            out_shape.append(jax.ShapeDtypeStruct((b, n_ckpt, d, n), _F32))
            out_specs.append(pl.BlockSpec((None, n_ckpt, bd, n), lambda i, j: (i, 0, j, 0)))
    outs = list(
        pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(b, d // cfg.block_d),
            in_specs=specs,
            out_specs=out_specs,
            compiler_params=_compiler_params(cfg),
            interpret=cfg.interpret,
            name=f"selective_scan_fwd_{cfg.layout}",
        )(*args)
    )
    if channel:
        outs[1] = jnp.swapaxes(outs[1], 1, 2)
    return outs


def _butterfly_width(cfg: _Config, n: int) -> int:
    """Columns per step of the backward's block of butterfly ``dB``/``dC`` sums."""
    if cfg.layout == "split":  # (2 BD,) vectors of 16 sums per warp and parity
        return 2 * cfg.block_d * max(n // 16, 1)
    return WARP * max(2 * n // WARP, 1)


def _unpermute_butterfly(cfg: _Config, v, n: int):
    """``(..., width)`` butterfly sums -> ``(..., 2 n)`` (``dB`` then ``dC``), summing the
    warps of a split-layout block."""
    if cfg.layout == "split":
        pos = butterfly_positions(n, SPLIT_MASKS)  # (slots, 32): index within a parity
        lead, slots, warps = v.shape[:-1], pos.shape[0], 2 * cfg.block_d // WARP
        v = v.reshape(*lead, slots, warps, WARP).sum(-2).reshape(*lead, slots * WARP)
        parity = np.arange(WARP) % 2
        n2 = n // 2  # per parity: its n / 2 dB states, then its n / 2 dC states
        pos = np.where(pos < n2, parity * n2 + pos, n + parity * n2 + pos - n2)
    else:
        pos = butterfly_positions(2 * n)
    first = np.zeros((2 * n,), np.int32)
    for flat in reversed(range(pos.size)):
        first[pos.reshape(-1)[flat]] = flat
    return jnp.take(v, jnp.asarray(first), axis=-1)


def _run_bwd(cfg: _Config, p: _Inputs, ckpt, dy, dh):
    b, length, d = p.x.shape
    n = p.A.shape[1]
    n_blocks = d // cfg.block_d
    channel = cfg.layout in CHANNEL_LAYOUTS
    bfly = cfg.bwd_butterfly or cfg.layout == "split"
    s = _spec_fns(cfg, d, length, n)
    args, specs = _common_inputs(cfg, p, s, channel=channel)
    st = s["state_t"] if channel else s["state"]
    if channel:
        dh = jnp.swapaxes(dh, 1, 2)
        ckpt_spec = pl.BlockSpec((None, ckpt.shape[1], n, cfg.block_d), lambda i, j: (i, 0, 0, j))
    else:
        ckpt_spec = pl.BlockSpec((None, ckpt.shape[1], cfg.block_d, n), lambda i, j: (i, 0, j, 0))
    args += [ckpt, dy.astype(p.x.dtype), dh.astype(_F32)]
    specs += [ckpt_spec, s["seq"], st]
    seq = lambda dtype: jax.ShapeDtypeStruct((b, length, d), dtype)
    part = jax.ShapeDtypeStruct((b, n_blocks, length, n), _F32)
    st_shape = jax.ShapeDtypeStruct((b, n, d) if channel else (b, d, n), _F32)
    out_shape = [seq(p.x.dtype), seq(p.dt.dtype)]
    out_specs = [s["seq"], s["seq"]]
    if cfg.has_z:
        out_shape.append(seq(p.z.dtype))
        out_specs.append(s["seq"])
    if bfly:  # dB and dC as one block of butterfly sums
        width = _butterfly_width(cfg, n)
        out_shape += [jax.ShapeDtypeStruct((b, n_blocks, length, width), _F32), st_shape]
        out_specs += [pl.BlockSpec((None, None, length, width), lambda i, j: (i, j, 0, 0)), st]
    else:
        out_shape += [part, part, st_shape]
        out_specs += [s["part"], s["part"], st]
    for present in (cfg.has_D, cfg.has_bias):
        if present:
            out_shape.append(jax.ShapeDtypeStruct((b, d), _F32))
            out_specs.append(s["vec"])
    out_shape.append(st_shape)
    out_specs.append(st)
    if channel:
        body = _bwd_kernel_split if cfg.layout == "split" else _bwd_kernel_channel
        kernel = functools.partial(body, cfg=cfg, length=length, n=n)
    else:
        kernel = functools.partial(_bwd_kernel, cfg=cfg, length=length)
    outs = list(
        pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=(b, n_blocks),
            in_specs=specs,
            out_specs=out_specs,
            compiler_params=_compiler_params(cfg),
            interpret=cfg.interpret,
            name=f"selective_scan_bwd_{cfg.layout}",
        )(*args)
    )
    if channel:  # dA and dh0 back to (b, d, n)
        outs[-1] = jnp.swapaxes(outs[-1], 1, 2)
        i_dA = 3 + cfg.has_z + (not bfly)  # after dx, ddt, dz, dB(C), dC
        outs[i_dA] = jnp.swapaxes(outs[i_dA], 1, 2)
    dx, ddt = outs.pop(0), outs.pop(0)
    dz = outs.pop(0) if cfg.has_z else None
    if bfly:  # summed over the blocks first: the permutation then moves 1 / n_blocks of it
        dBC = _unpermute_butterfly(cfg, sum_blocks(outs.pop(0), cfg.groups), n)
        dB, dC = dBC[..., :n], dBC[..., n:]
    else:
        dB, dC = sum_blocks(outs.pop(0), cfg.groups), sum_blocks(outs.pop(0), cfg.groups)
    dA_part = outs.pop(0)
    dD = outs.pop(0).sum(0) if cfg.has_D else None
    dbias = outs.pop(0).sum(0) if cfg.has_bias else None
    dh0 = outs.pop(0)

    return _Inputs(
        x=dx,
        dt=ddt,
        A=dA_part.sum(0),
        B=to_blgn(dB),
        C=to_blgn(dC),
        D=dD,
        z=dz,
        dt_bias=dbias,
        h0=dh0,
    )


def _run_fwd_two_pass(cfg: _Config, p: _Inputs):
    """Forward with ``cfg.chunks`` time chunks scanned in parallel (``(y, h_last)``).

    The chunks become extra batch rows (a free reshape of ``(b, l, ...)`` to
    ``(b * chunks, l / chunks, ...)``): pass 1 runs the forward kernel on every chunk from a
    zero state for its end state; an associative scan over the chunks (XLA, ``(b, chunks,
    d, n)``) turns those into every chunk's true start state, the chunk's decay being
    ``exp(A sum_t dt_t)``; pass 2 reruns the kernel from those states and writes ``y``. Twice
    the exps of the single pass, for ``chunks`` times more programs.
    """
    b, length, d = p.x.shape
    n = p.A.shape[1]
    nc = cfg.chunks
    rows = lambda v: None if v is None else v.reshape(b * nc, length // nc, *v.shape[2:])
    pc = p._replace(x=rows(p.x), dt=rows(p.dt), B=rows(p.B), C=rows(p.C), z=rows(p.z))
    # Pass 1 needs only the end states: no gate, no skip (their y is discarded).
    p1 = pc._replace(h0=jnp.zeros((b * nc, d, n), _F32), z=None, D=None)
    _, ends = _run_fwd(cfg._replace(has_z=False, has_D=False), p1, save=False)
    dt = p.dt.astype(_F32)
    if p.dt_bias is not None:
        dt = dt + p.dt_bias.astype(_F32)[None, None]
    if cfg.softplus:
        dt = jax.nn.softplus(dt)
    dt_sum = dt.reshape(b, nc, length // nc, d).sum(2)  # (b, nc, d)
    decay = jnp.exp(dt_sum[..., None] * p.A.astype(_F32)[None, None])  # (b, nc, d, n)
    ends = ends.reshape(b, nc, d, n)

    def combine(x, y):  # x earlier, y later
        return y[0] * x[0], y[0] * x[1] + y[1]

    cum_decay, cum_end = jax.lax.associative_scan(combine, (decay, ends), axis=1)
    h0 = p.h0.astype(_F32)[:, None]
    starts = jnp.concatenate([h0, cum_decay[:, :-1] * h0 + cum_end[:, :-1]], axis=1)
    y, h_last = _run_fwd(cfg, pc._replace(h0=starts.reshape(b * nc, d, n)), save=False)
    return y.reshape(p.x.shape), h_last.reshape(b, nc, d, n)[:, -1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg: _Config, p: _Inputs):
    # Not differentiated: the two-pass forward when chunks > 1 (the differentiated forward
    # below always runs the single pass, which saves the backward's checkpoints).
    if cfg.chunks > 1:
        return _run_fwd_two_pass(cfg, p)
    y, h_last = _run_fwd(cfg, p, save=False)
    return y, h_last


def _scan_fwd(cfg: _Config, p: _Inputs):
    y, h_last, ckpt = _run_fwd(cfg, p, save=True)
    return (y, h_last), (p._replace(h0=None), ckpt, p.h0)


def _scan_bwd(cfg: _Config, residuals, cotangents):
    p, ckpt, h0 = residuals
    dy, dh = cotangents
    p = p._replace(h0=h0)
    if cfg.bwd_layout == "mosaic":
        g = run_bwd_mosaic(cfg, p, ckpt, dy, dh)
    else:
        if cfg.bwd_layout in CHANNEL_LAYOUTS and not _ckpt_channel(cfg):
            ckpt = jnp.swapaxes(ckpt, 2, 3)
        bwd_cfg = cfg._replace(
            layout=cfg.bwd_layout,
            block_d=cfg.bwd_block_d,
            num_warps=cfg.bwd_num_warps,
            unroll=cfg.ckpt_every,
            prefetch_bc=cfg.bwd_prefetch_bc,
        )
        g = _run_bwd(bwd_cfg, p, ckpt, dy, dh)
    cast = lambda v, like: None if like is None else v.astype(like.dtype)
    return (_Inputs(*(cast(gv, pv) for gv, pv in zip(g, p, strict=True))),)


_scan.defvjp(_scan_fwd, _scan_bwd)


# ----------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------


def _groups(v) -> int:
    return 1 if v.ndim == 3 else v.shape[2]


def _to_groups(v, g):
    """B or C, ``(b, l, n)`` or ``(b, l, g_v, n)``, as ``(b, l, g, n)``."""
    if v.ndim == 3:
        v = v[:, :, None]
    return v if v.shape[2] == g else jnp.repeat(v, g // v.shape[2], axis=2)


def selective_scan(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None = None,
    z: jax.Array | None = None,
    dt_bias: jax.Array | None = None,
    dt_softplus: bool = False,
    *,
    h0: jax.Array | None = None,
    return_final_state: bool = False,
    interpret: bool = False,
    layout: str | None = None,
    block_d: int | None = None,
    unroll: int = 4,
    bwd_unroll: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 1,
    prefetch_bc: bool | None = None,
    bwd_layout: str | None = None,
    bwd_block_d: int | None = None,
    bwd_num_warps: int | None = None,
    chunks: int | None = None,
    bc_block: bool = False,
    pack_bc: bool | None = None,
    bwd_prefetch_bc: bool | None = None,
    fast_math: bool = True,
    bwd_butterfly: bool | None = None,
    ckpt_late: bool = False,
    mosaic_tile: int = 32,
    mosaic_stages: int = 3,
    mosaic_bwd_stages: int = 2,
    mosaic_bwd_sub: int = 2,
):
    """Mamba-1 selective scan by fused Pallas kernels (differentiable).

    Defaults: the forward is the Mosaic GPU kernel (``layout="mosaic"``, 128 channels per
    warpgroup, 32-step tiles staged 3 deep by TMA) on compute capability 9.0 GPUs where it
    runs (``d / g`` a multiple of 128, ``n >= 4``, no Triton launch options given), else
    the Triton ``"channel"`` kernel (64 channels on 2 warps per program, ``unroll=4``, bf16
    ``B``/``C`` packed in pairs and prefetched a block ahead). After the Mosaic forward the
    backward is the Mosaic one (``bwd_layout="mosaic"``, 16-step tiles) where it runs
    (``n <= 16``; no ``bwd_block_d``, ``bwd_num_warps``, ``bwd_butterfly``,
    ``bwd_prefetch_bc``, which are Triton's); otherwise, for ``n >= 4``,
    ``bwd_layout="split"``, 16 channels on 1 warp per program, ``bwd_unroll=4`` at ``n =
    16``; for ``n < 4`` ``"channel"``. ``fast_math``. At (8, 4096, 4096, 16) bf16 with z,
    D, dt_bias and softplus (``experiments/bench/kernels.py``, BENCHMARKS.md, H100, one
    run): forward 0.93 ms, forward+backward 5.06 ms with the Mosaic backward against 6.48
    ms with the split one (``jax-linear-attention``'s Mamba-1 kernel: 0.98 / 5.51 ms).

    Args:
      x, dt, z: ``(b, l, d)``, float32 or bfloat16 (``z`` optional).
      A: ``(d, n)``; ``n`` a power of two.
      B, C: ``(b, l, n)`` or ``(b, l, g, n)`` with ``d % g == 0``; float32 or bfloat16.
      D, dt_bias: ``(d,)`` or ``None``.
      dt_softplus: apply softplus to ``dt + dt_bias``.
      h0: initial state ``(b, d, n)``; zeros when ``None``.
      return_final_state: also return the final state ``(b, d, n)`` (float32).
      interpret: run in the Pallas interpreter (CPU tests).
      layout: the *forward* kernel; ``None`` (default): ``"mosaic"`` where it runs (see
        above), else ``"channel"``. ``"mosaic"``: the Pallas Mosaic GPU kernel, one channel
        per thread of a 128-thread warpgroup, inputs staged in shared memory by TMA
        (compute capability 9.0; ``d / g`` a multiple of 128, ``n >= 4``, ``mosaic_tile``
        a multiple of ``unroll`` and ``bwd_unroll``; a backward ``bwd_layout`` of
        ``"channel"`` or ``"split"``). ``"channel"``: each
        program holds its ``BD`` channels as 1-D vectors and the ``n`` states as ``n``
        separate ``(BD,)`` vectors (one channel per thread when ``num_warps = BD / 32``),
        ``B_t``/``C_t`` loaded as scalars, no reduction over ``n`` across threads.
        ``"split"``: the channel layout on twice the threads, two per channel
        with ``n / 2`` states each (their partial ``y`` summed by one lane shuffle;
        ``2 BD / 32`` warps; within 5% of ``"channel"`` on an H200, 9-13% slower on the
        H100). ``"state"``: the original ``(BD, n)`` 2-D state block.
      block_d: channels per forward program (power of two, dividing ``d / g``); default 64
        for ``"channel"``, 32 for ``"split"`` and for ``"state"`` (at ``n = 16``).
      unroll: time steps per loaded block of the forward kernel.
      bwd_unroll: time steps per block of the backward kernel, which is also the interval
        at which the differentiated forward saves the state (``(b, l / bwd_unroll, d, n)``
        fp32 checkpoints); must divide ``unroll`` (the Mosaic kernels: ``mosaic_tile``).
        Default: 16 for the ``"mosaic"`` backward (its tile); ``64 / n`` (4 at ``n = 16``)
        for the ``"split"`` backward, whose threads hold ``n / 2`` states (7.8 vs 10.4 ms
        forward+backward with 2, H200); 2 for the ``"channel"`` backward (4 holds ``~2 n
        4`` fp32 values per thread and spills: 16.1 vs 10.9 ms on the H100); ``unroll`` for
        the ``"state"`` backward (all capped at ``unroll``). Memory: the checkpoints,
        ``b l d n / bwd_unroll`` fp32, live until the backward (2.1 GB at (8, 4096, 4096,
        16) with 4, 0.54 GB with the Mosaic backward's 16); raise it, or use the XLA
        ``"chunked"`` form, when memory is short.
      num_warps, num_stages: Triton launch parameters of the forward (``num_warps``
        defaults to ``BD / 32`` for ``"channel"``, ``BD n / 128`` for ``"state"``).
      prefetch_bc: ``"channel"`` forward: also prefetch the next block's ``2 n unroll`` B/C
        scalars (more registers); otherwise they are loaded inside the block. Default: when
        ``pack_bc`` and ``n * unroll <= 64`` (unpacked, the prefetched scalars spilled
        registers: 11.7 ms forward; packed, 2.00 vs 2.30 ms on the H100 at n = 16).
      bwd_layout: the backward kernel: ``"mosaic"`` (the Pallas Mosaic GPU backward; the
        default after the Mosaic forward where it runs, see above; needs the Mosaic forward,
        ``4 <= n <= 16``, ``mosaic_tile`` a multiple of ``bwd_unroll``, ``bwd_unroll * 2 n``
        a multiple of 128), or a Triton register layout: ``"split"`` (default otherwise for
        ``n >= 4`` when ``d / g`` is a multiple of 16: two threads per channel as in the
        forward's ``"split"``, half the registers per thread; ``dB``/``dC`` always by a
        butterfly over the 16 channels of a warp; ``2 bwd_block_d / 32`` warps,
        ``bwd_block_d >= 16``, default 16), ``"channel"`` (the forward's idea; holds ``~2 n
        unroll`` fp32 values per channel, so prefer a smaller ``unroll``) or ``"state"``.
        Independent of ``layout``.
      chunks: ``> 1`` splits the sequence into this many time chunks scanned in parallel
        when the call is not differentiated (inference): chunk end states from a zero
        start, an associative scan over the chunks, then every chunk rescanned from its true
        start (twice the exps, ``chunks`` times the programs; for grids too small to fill
        the GPU, e.g. long sequences at batch 1-2). Must divide ``l``. Differentiated calls
        always run the single pass. Default: :func:`pallas_kernels.linear_scan.default_chunks`
        of a grid of 64-channel blocks, the channel layout's, where it was measured
        (H100, (2, 16384, 4096): 16 chunks 3.81 ms vs 7.95 ms single pass; at (8, 4096,
        4096) the single pass, 2.28 ms, beats 2 or 4 chunks).
      bc_block: ``"channel"`` forward: load all ``B_t``/``C_t`` scalars of a block at its
        start, before any of its stores (inline loads cannot be moved above the previous
        step's stores, so each step would wait for its own loads).
      pack_bc: ``"channel"`` kernels with bf16 ``B``/``C`` and even ``n``: pass them as
        ``uint32`` words of two bf16 values (half the scalar loads and registers; unpacked
        by a shift). Default: whenever possible.
      bwd_prefetch_bc: ``"channel"`` backward: prefetch the next block's B/C scalars with
        its other rows (``prefetch_bc`` is the forward's). Default: when ``pack_bc`` and
        ``n * bwd_unroll <= 32``.
      fast_math: compute ``exp2``, softplus and sigmoid with the approximate MUFU
        instructions (``ex2``/``lg2``/``rcp.approx.ftz``, relative error ~1e-6; softplus
        switches to a series for small ``exp(-|v|)``) instead of libdevice ``expf``,
        ``log1pf`` and IEEE division (default; 8.48 vs 8.89 ms forward+backward with the
        channel layouts, H200). Interpret mode runs the same formulas exactly.
      bwd_butterfly: ``"channel"`` backward with one warp of 32 channels: sum the ``2 n``
        per-step ``dB``/``dC`` partials over the warp by one butterfly reduce-scatter
        (``2 n - 1`` shuffles for ``n <= 16``, instead of ``5`` per partial) and store
        them with one vector store per 32 sums. Default: whenever the channel backward runs
        as one such warp (its default launch; 8.89 vs 9.83 ms forward+backward, H200).
      ckpt_late: ``"channel"``/``"split"`` forward of a differentiated call: store each checkpoint
        after the last step before it (the state entering the next block; plus ``h0`` before
        the loop and one unused checkpoint at the end) instead of at the start of its
        block. Same values; the compiled channel loop then keeps the plain forward's
        registers (168 instead of 255 at (8, 4096, 4096, 16), counted by
        ``experiments/bench/sass.py --grad`` with Triton 3.6 standing in for XLA's). Off
        by default: on the H100 it measured 8.34 vs 8.09 ms forward+backward (the kernel
        benchmark) but 16.83 vs 17.56 ms per Mamba training step, i.e. no clear gain.
      mosaic_tile, mosaic_stages: ``"mosaic"`` forward: steps per TMA tile and tiles in
        flight (shared memory ``stages * tile * (128 * (bytes of x, dt, z) + 8 n)``;
        at most 227 KiB). 16/4 and 32/2 measured within 3% of the default 32/3 (H200).
      mosaic_bwd_stages, mosaic_bwd_sub: ``"mosaic"`` backward: tiles in flight (2; 3
        measured the same, H100) and steps per recomputed sub-tile (2; the states entering
        each sub-tile are kept in shared memory, ``bwd_unroll / sub * n * 512`` bytes, and a
        sub-tile's states and decays in registers: 1 was 16% slower, H100).
      bwd_block_d, bwd_num_warps: launch parameters of the backward kernel. Defaults:
        with ``layout = bwd_layout = "state"`` those of the forward (the original kernel);
        a ``"state"`` backward after a ``"channel"`` forward: 32 and ``BD n / 128`` (at
        ``n = 16``); a ``"channel"`` backward: 32 and ``BD / 32`` (one warp, so the
        per-step ``dB``/``dC`` sums over channels are warp shuffles); a ``"split"``
        backward: 16 and 1.

    Returns:
      ``y`` ``(b, l, d)`` in ``x.dtype``, or ``(y, h_last)``.

    Raises:
      NotImplementedError: dtypes, shapes or a device the kernel is not built for (raised
        before any work).
    """
    check_backend(interpret, "selective_scan")
    # The automatic backward: the Mosaic one after a Mosaic forward where it runs, unless an
    # option of the Triton backward was given (bwd_unroll is both kernels' tile).
    triton_bwd_opts = (bwd_block_d, bwd_num_warps, bwd_butterfly, bwd_prefetch_bc)
    auto_bwd = bwd_layout is None and all(v is None for v in triton_bwd_opts)
    bwd_tile = MOSAIC_BWD_TILE if bwd_unroll is None else bwd_unroll
    mosaic_bwd = bwd_layout == "mosaic"
    if mosaic_bwd and layout is None:  # its checkpoints come from the Mosaic forward
        layout = "mosaic"
    # Automatic forward: the Mosaic GPU kernel where it runs (checked once the call's
    # config is known, below) unless Triton launch options were given; else "channel".
    auto = layout is None
    auto_mosaic = auto and not interpret and block_d is None and num_warps is None
    auto_mosaic = auto_mosaic and not (ckpt_late or bc_block or prefetch_bc is not None)
    layout = "channel" if auto else layout
    layouts = ("channel", "split", "state")
    fwd_layouts = (*layouts, "mosaic")
    checks = (
        ("layout", layout, fwd_layouts),
        ("bwd_layout", bwd_layout, (None, *layouts, "mosaic")),
    )
    for name, v, ok in checks:
        if v not in ok:
            raise NotImplementedError(f"selective_scan kernel: {name}={v!r}")
    x, dt, A, B, C = (jnp.asarray(v) for v in (x, dt, A, B, C))
    b, length, d = x.shape
    n = A.shape[1]
    if length == 0:
        raise NotImplementedError("selective_scan kernel: empty sequence")
    for name, v in {"x": x, "dt": dt, "B": B, "C": C, "z": z}.items():
        if v is not None and jnp.asarray(v).dtype not in _IO_DTYPES:
            raise NotImplementedError(f"selective_scan kernel: untested dtype {name}={v.dtype}")
    for name, v in {"A": A, "D": D, "dt_bias": dt_bias, "h0": h0}.items():
        if v is not None and jnp.asarray(v).dtype not in _IO_DTYPES:
            raise NotImplementedError(f"selective_scan kernel: untested dtype {name}={v.dtype}")
    if not is_pow2(n) or n > 64:
        raise NotImplementedError(f"selective_scan kernel: n={n} (needs a power of two <= 64)")
    g_b, g_c = _groups(B), _groups(C)
    groups = g_b * g_c // math.gcd(g_b, g_c)
    if d % groups:
        raise NotImplementedError(f"selective_scan kernel: d={d} not divisible by g={groups}")
    state_default = max(16, min(32, 512 // n))
    if bwd_layout is None:  # the split backward needs whole warps: 16 channels per block
        bwd_layout = "split" if n >= 4 and (d // groups) % 16 == 0 else "channel"

    def resolve_bd(requested, default, name):
        bd = pow2_divisor(d // groups, requested or default)
        if requested is not None and bd != requested:
            raise NotImplementedError(f"selective_scan kernel: {name}={requested} must divide d/g")
        if not interpret and bd < 16:
            raise NotImplementedError(
                f"selective_scan kernel: channel block {bd} < 16 (d/g={d // groups}) is untested"
            )
        return bd

    channel = layout in CHANNEL_LAYOUTS
    split = layout == "split"
    mosaic = layout == "mosaic"
    if split and n < 4:
        raise NotImplementedError(f"selective_scan kernel: layout='split' needs n >= 4 (n={n})")
    if mosaic:
        if block_d not in (None, MOSAIC_BLOCK_D) or num_warps not in (None, 4):
            raise NotImplementedError(
                f"selective_scan kernel: layout='mosaic' runs {MOSAIC_BLOCK_D} channels on "
                "one warpgroup (block_d=128, num_warps=4)"
            )
        bd = MOSAIC_BLOCK_D
    else:
        bd = resolve_bd(block_d, (32 if split else 64) if channel else state_default, "block_d")
    bwd_split = bwd_layout == "split"
    if bwd_split and n < 4:
        raise NotImplementedError(f"selective_scan kernel: bwd_layout='split' needs n >= 4 (n={n})")
    bwd_channel = bwd_layout in CHANNEL_LAYOUTS
    if mosaic_bwd and (bwd_block_d is not None or bwd_num_warps is not None):
        raise NotImplementedError(
            "selective_scan kernel: bwd_layout='mosaic' runs 128 channels on one warpgroup "
            "(no bwd_block_d / bwd_num_warps)"
        )
    # All-"state": the backward inherits the forward's launch config (the original kernel).
    inherit = not channel and not bwd_channel
    bwd_default = (16 if bwd_split else 32) if bwd_channel else (bd if inherit else state_default)
    bwd_bd = resolve_bd(bwd_block_d, bwd_default, "bwd_block_d")
    if bwd_unroll is None:  # ~2 (states per thread) bwd_unroll fp32 registers: <= ~64
        if mosaic_bwd:  # the tile of the Mosaic backward (registers hold mosaic_bwd_sub steps)
            bwd_unroll = MOSAIC_BWD_TILE
        elif bwd_split:
            bwd_unroll = min(unroll, max(1, 64 // n))
        else:
            bwd_unroll = min(unroll, 2) if bwd_channel else unroll
    if not is_pow2(unroll) or not is_pow2(bwd_unroll):
        raise NotImplementedError("selective_scan kernel: unroll must be a power of two")
    # (the Mosaic kernels check mosaic_tile % bwd_unroll instead)
    if unroll % bwd_unroll and not (mosaic or mosaic_bwd):
        raise NotImplementedError(
            f"selective_scan kernel: bwd_unroll={bwd_unroll} must divide unroll={unroll}"
        )
    if b * length * d >= 2**31 or b * d * n * (-(-length // bwd_unroll)) >= 2**31:
        raise NotImplementedError("selective_scan kernel: more than 2**31 elements")
    state_warps = lambda block: max(1, min(8, block * n // 128))
    chan_warps = lambda block: max(1, min(8, block // 32))
    fwd_warps = num_warps or (chan_warps(bd) if channel or mosaic else state_warps(bd))
    if split:  # one thread per vector element: the y shuffle pairs threads e, e ^ 1
        if num_warps not in (None, 2 * bd // WARP) or (2 * bd < WARP and not interpret):
            raise NotImplementedError(
                f"selective_scan kernel: layout='split' runs 2 block_d / 32 warps "
                f"(block_d={bd} >= 16, num_warps={num_warps})"
            )
        fwd_warps = max(1, 2 * bd // WARP)
    if inherit and bwd_block_d in (None, bd):
        bwd_warps = fwd_warps
    else:
        bwd_warps = chan_warps(bwd_bd) if bwd_channel else state_warps(bwd_bd)
    if chunks is None:
        # Decided on 64-channel blocks whatever the layout: how it was measured (the
        # channel layout's default 2-warp programs).
        chunks = default_chunks(b, max(1, d // 64), length)
    if not isinstance(chunks, int) or chunks < 1 or length % chunks:
        raise NotImplementedError(
            f"selective_scan kernel: chunks={chunks!r} must divide l={length}"
        )
    packable = jnp.dtype(B.dtype) == jnp.bfloat16 and jnp.dtype(C.dtype) == jnp.bfloat16
    packable = packable and n % 2 == 0
    if pack_bc is None:
        pack_bc = packable
    if pack_bc and not packable:
        raise NotImplementedError("selective_scan kernel: pack_bc needs bf16 B and C, even n")
    # Prefetched B/C words take n * unroll / 2 registers per thread: only where measured
    # (n = 16 at the default unrolls); unpacked, they spilled registers at n = 16.
    if prefetch_bc is None:
        prefetch_bc = pack_bc and n * unroll <= 64
    if bwd_prefetch_bc is None:
        bwd_prefetch_bc = pack_bc and n * bwd_unroll <= 32
    if bwd_split:  # one thread per element, full warps: the dB/dC butterfly needs them
        if bwd_num_warps not in (None, 2 * bwd_bd // WARP) or 2 * bwd_bd < WARP:
            raise NotImplementedError(
                f"selective_scan kernel: bwd_layout='split' runs 2 bwd_block_d / 32 warps "
                f"(bwd_block_d={bwd_bd} >= 16, bwd_num_warps={bwd_num_warps})"
            )
        bwd_warps = 2 * bwd_bd // WARP
    one_warp = bwd_layout == "channel" and bwd_bd == WARP and (bwd_num_warps or bwd_warps) == 1
    if bwd_butterfly is None:
        bwd_butterfly = one_warp
    if bwd_butterfly and not one_warp and not bwd_split:
        raise NotImplementedError(
            "selective_scan kernel: bwd_butterfly needs the channel backward with "
            "bwd_block_d=32 and one warp"
        )
    if ckpt_late and layout not in CHANNEL_LAYOUTS:
        raise NotImplementedError(
            "selective_scan kernel: ckpt_late needs layout='channel' or 'split'"
        )
    cfg = _Config(
        ckpt_late=bool(ckpt_late),
        tile=mosaic_tile,
        stages=mosaic_stages,
        bwd_stages=mosaic_bwd_stages,
        bwd_sub=mosaic_bwd_sub,
        fast_math=bool(fast_math),
        bwd_butterfly=bool(bwd_butterfly),
        bc_block=bool(bc_block),
        bwd_prefetch_bc=bool(bwd_prefetch_bc),
        pack_bc=bool(pack_bc),
        chunks=chunks,
        block_d=bd,
        unroll=unroll,
        ckpt_every=bwd_unroll,
        num_warps=fwd_warps,
        num_stages=num_stages,
        layout=layout,
        prefetch_bc=bool(prefetch_bc),
        bwd_layout=bwd_layout,
        bwd_block_d=bwd_bd,
        bwd_num_warps=bwd_num_warps or bwd_warps,
        groups=groups,
        softplus=bool(dt_softplus),
        has_D=D is not None,
        has_z=z is not None,
        has_bias=dt_bias is not None,
        interpret=bool(interpret),
    )
    h0 = jnp.zeros((b, d, n), _F32) if h0 is None else jnp.asarray(h0)
    p = _Inputs(
        x=x,
        dt=dt,
        A=A,
        B=_to_groups(B, groups),
        C=_to_groups(C, groups),
        D=None if D is None else jnp.asarray(D),
        z=None if z is None else jnp.asarray(z),
        dt_bias=None if dt_bias is None else jnp.asarray(dt_bias),
        h0=h0.astype(_F32),
    )
    if auto_mosaic and mosaic_supported(cfg._replace(layout="mosaic"), p) is None:
        cfg = cfg._replace(layout="mosaic", block_d=MOSAIC_BLOCK_D, num_warps=4)
    elif mosaic:
        why = mosaic_supported(cfg, p)
        if why:
            raise NotImplementedError(f"selective_scan kernel: layout='mosaic': {why}")
    if auto_bwd and cfg.layout == "mosaic":
        both = cfg._replace(bwd_layout="mosaic", ckpt_every=bwd_tile)
        if mosaic_supported(both, p) is None and mosaic_bwd_supported(both, p) is None:
            cfg = both
    if mosaic_bwd:
        why = mosaic_bwd_supported(cfg, p)
        if why:
            raise NotImplementedError(f"selective_scan kernel: bwd_layout='mosaic': {why}")
    y, h_last = _scan(cfg, p)
    if return_final_state:
        return y, h_last
    return y
