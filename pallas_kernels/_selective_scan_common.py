"""Shared pieces of the fused selective-scan kernels: configuration, input bundle, the
per-step math and the row loaders (see :mod:`pallas_kernels.selective_scan`)."""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels._intrinsics import ex2, sigmoid, softplus

_F32 = jnp.float32
_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)
# Forward layouts whose inputs, h0 / final state and checkpoints are in (n, d) order.
CHANNEL_LAYOUTS = ("channel", "split")
_IO_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class _Config(NamedTuple):
    block_d: int
    unroll: int  # steps per loaded block of this kernel
    ckpt_every: int  # checkpoint interval = the backward's block length (divides unroll)
    num_warps: int
    num_stages: int
    layout: str  # forward layout: "channel", "split", "state" or "mosaic"
    prefetch_bc: bool  # channel layout: prefetch the next block's B/C scalars too
    bwd_layout: str  # backward: "channel", "split", "state" (own launch config) or "mosaic"
    bwd_block_d: int
    bwd_num_warps: int
    groups: int
    softplus: bool
    has_D: bool
    has_z: bool
    has_bias: bool
    interpret: bool
    chunks: int = 1  # > 1: the two-pass L-parallel forward (not differentiated calls)
    bc_block: bool = False  # channel forward: load a block's B/C before its first store
    pack_bc: bool = False  # channel layouts: bf16 B/C passed as uint32 pairs
    bwd_prefetch_bc: bool = False  # channel backward: prefetch the next block's B/C
    fast_math: bool = False  # MUFU approximations for exp2 / softplus / sigmoid
    bwd_butterfly: bool = False  # channel backward: dB/dC by a warp reduce-scatter
    ckpt_late: bool = False  # channel/split forward: checkpoint after the step before it
    tile: int = 32  # mosaic forward: steps per TMA tile
    stages: int = 3  # mosaic forward: tiles in flight
    bwd_stages: int = 2  # mosaic backward: tiles in flight
    bwd_sub: int = 2  # mosaic backward: steps per recomputed sub-tile (held in registers)


class _Inputs(NamedTuple):
    x: jax.Array
    dt: jax.Array
    A: jax.Array
    B: jax.Array  # grouped: (b, l, g, n)
    C: jax.Array
    D: jax.Array | None
    z: jax.Array | None
    dt_bias: jax.Array | None
    h0: jax.Array


def sum_blocks(v, groups: int):
    """Per-channel-block partials ``(b, n_blocks, l, k)`` -> ``(b, g, l, k)``: the sum over
    each group's blocks."""
    b, n_blocks, length, k = v.shape
    return v.reshape(b, groups, n_blocks // groups, length, k).sum(2)


def to_blgn(v):
    """``(b, g, l, n)`` -> ``(b, l, g, n)`` (the layout of grouped ``B``/``C``)."""
    return jnp.transpose(v, (0, 2, 1, 3))


def _softplus(v):
    return jnp.maximum(v, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(v)))


def _sigmoid(v):
    return 1.0 / (1.0 + jnp.exp(-v))


def _fast(cfg) -> bool | None:
    """``None``: the libdevice forms; else the ``_intrinsics`` forms (PTX when ``True``)."""
    return (not cfg.interpret) if cfg.fast_math else None


def _exp2(v, cfg):
    fast = _fast(cfg)
    return jnp.exp2(v) if fast is None else ex2(v, fast)


def _sig(v, cfg):
    fast = _fast(cfg)
    return _sigmoid(v) if fast is None else sigmoid(v, fast)


def _tree_sum(terms):
    """Pairwise sum of a list of arrays (dependency depth ``log2(len)``, not ``len``)."""
    terms = list(terms)
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]


def _compiler_params(cfg: _Config):
    if cfg.interpret:
        return None
    from jax.experimental.pallas import triton as plt

    return plt.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _split_refs(refs, names):
    out = {}
    i = 0
    for name, present in names:
        if present:
            out[name] = refs[i]
            i += 1
        else:
            out[name] = None
    return out, refs[i:]


def _in_names(cfg: _Config, backward: bool):
    names = [("x", True), ("dt", True), ("A2", True), ("B", True), ("C", True)]
    names += [("D", cfg.has_D), ("z", cfg.has_z), ("bias", cfg.has_bias)]
    if backward:
        names += [("ckpt", True), ("dy", True), ("dh", True)]
    else:
        names += [("h0", True)]
    return names


def _load_rows(r, start, count, dy=False):
    """Loads the rows of steps ``start..start+count-1`` of every sequence input."""
    rows = []
    for u in range(count):
        t = start + u
        row = {
            "x": r["x"][t, :],
            "dt": r["dt"][t, :],
            "B": r["B"][t, :],
            "C": r["C"][t, :],
        }
        if r["z"] is not None:
            row["z"] = r["z"][t, :]
        if dy:
            row["dy"] = r["dy"][t, :]
        rows.append(row)
    return rows


def _step_inputs(row, bias, cfg):
    """``(x, dt_pre, dt, dt x)`` for one step, fp32 ``(BD,)``: ``dt_pre = dt + bias`` and
    ``dt = softplus(dt_pre)`` (or ``dt_pre``)."""
    x = row["x"].astype(_F32)
    dt_pre = row["dt"].astype(_F32)
    if bias is not None:
        dt_pre = dt_pre + bias
    if cfg.softplus:
        fast = _fast(cfg)
        dt = _softplus(dt_pre) if fast is None else softplus(dt_pre, fast)
    else:
        dt = dt_pre
    return x, dt_pre, dt, dt * x


def _discretize(row, A2, bias, cfg):
    """State layout: ``(x, dt_pre, dt, exp(dt A), dt x)`` for one step, all fp32."""
    x, dt_pre, dt, dtx = _step_inputs(row, bias, cfg)
    return x, dt_pre, dt, _exp2(dt[:, None] * A2, cfg), dtx


# ----------------------------------------------------------------------------------------
# Forward kernel


class Lanes(NamedTuple):
    """How a ``"channel"`` or ``"split"`` kernel maps its vectors onto the block: element
    ``e`` of every ``(width,)`` vector is channel ``cols[e]`` of the block (``slice(None)``:
    channel ``e``), holding the states ``k_of[j]`` in its slots ``j``."""

    cols: Any  # index of the vectors' channels in a block row: slice(None) or an array
    k_of: list  # state index of each per-thread slot (int, or per-element array)
    join: Callable  # a per-thread partial sum over states -> the channel's sum
    bc_now: Callable  # t -> (B_t, C_t) at the slots, loaded now
    masks: tuple | None  # dB/dC butterfly lane masks; None: one reduction per partial
    width: int  # elements per vector


def load_rows(r, start, count, cols, bc_now=None):
    """Rows of steps ``start..start+count-1``: ``x``/``dt``/``z`` at channels ``cols`` and,
    when ``bc_now`` is given, ``B_t``/``C_t`` from it."""
    rows = []
    for u in range(count):
        t = start + u
        row = {"x": r["x"][t, cols], "dt": r["dt"][t, cols]}
        if r["z"] is not None:
            row["z"] = r["z"][t, cols]
        if bc_now is not None:
            row["B"], row["C"] = bc_now(t)
        rows.append(row)
    return rows


def bc_scalars_now(r, t, n: int, packed: bool):
    """Step ``t``'s ``B_t``, ``C_t`` as ``n`` scalars each, loaded now (``packed``: from
    ``n / 2`` uint32 words each, unpacked to fp32)."""
    if not packed:
        return [r["B"][t, k] for k in range(n)], [r["C"][t, k] for k in range(n)]
    out = []
    for name in ("B", "C"):
        vals = []
        for j in range(n // 2):
            vals.extend(unpack_bf16_pair(r[name][t, j]))
        out.append(vals)
    return out[0], out[1]


def _packed(cfg: _Config) -> bool:
    """Whether this launch gets ``B``/``C`` as ``uint32`` pairs of bf16 (channel layout)."""
    return cfg.pack_bc and cfg.layout in CHANNEL_LAYOUTS


def pack_bf16_pairs(v: jax.Array) -> jax.Array:
    """``(..., n)`` bf16 -> ``(..., n / 2)`` uint32, element ``2j`` in the low half."""
    return jax.lax.bitcast_convert_type(v.reshape(*v.shape[:-1], v.shape[-1] // 2, 2), jnp.uint32)


def unpack_bf16_pair(w):
    """A ``uint32`` word of two bf16 -> the two values as fp32 (``2j``, ``2j + 1``): a bf16
    is the top half of the fp32 with the same bits."""
    lo = jax.lax.bitcast_convert_type(w << 16, jnp.float32)
    hi = jax.lax.bitcast_convert_type(w & jnp.uint32(0xFFFF0000), jnp.float32)
    return lo, hi


def _ckpt_channel(cfg: _Config) -> bool:
    """Whether the forward writes the checkpoints as ``(b, n_ckpt, n, d)`` (else ``d, n``)."""
    forward = cfg.layout in (*CHANNEL_LAYOUTS, "mosaic")
    return forward and cfg.bwd_layout in (*CHANNEL_LAYOUTS, "mosaic")
