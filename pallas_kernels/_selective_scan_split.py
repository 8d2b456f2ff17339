"""The Pallas-Triton kernel bodies of the fused selective scan in the ``"split"`` register
layout (two threads per channel, ``n / 2`` states each), forward and backward; launched by
:mod:`pallas_kernels.selective_scan` with the same refs and array layouts as the
``"channel"`` kernels of :mod:`pallas_kernels._selective_scan_kernels`."""

import jax.numpy as jnp
from jax import lax

from pallas_kernels._common import block_index, blocked_loop
from pallas_kernels._intrinsics import shfl_xor
from pallas_kernels._selective_scan_common import (
    _F32,
    Lanes,
    _ckpt_channel,
    _Config,
    _exp2,
    _in_names,
    _packed,
    _sig,
    _split_refs,
    _step_inputs,
    _tree_sum,
    unpack_bf16_pair,
)
from pallas_kernels._selective_scan_kernels import bwd_body

SPLIT_MASKS = (16, 8, 4, 2)  # split layout: lanes of one parity hold one state half


def _split_index(block_d: int, n: int):
    """Split layout: per element ``e`` of a ``(2 BD,)`` vector its channel ``e // 2``, its
    state half ``e % 2`` and the state index of each of its ``n / 2`` slots."""
    e = lax.broadcasted_iota(jnp.int32, (2 * block_d,), 0)
    ch, half = e // 2, e % 2
    return ch, half, [half * (n // 2) + j for j in range(n // 2)]


def _bc_split(r, t, half, k_of, packed: bool):
    """Split layout: step ``t``'s ``B_t``, ``C_t`` at each thread's ``n / 2`` states."""
    if not packed:
        return [r["B"][t, k] for k in k_of], [r["C"][t, k] for k in k_of]
    words = len(k_of) // 2
    out = []
    for name in ("B", "C"):
        vals = []
        for i in range(words):
            vals.extend(unpack_bf16_pair(r[name][t, half * words + i]))
        out.append(vals)
    return out[0], out[1]


def _fwd_kernel_split(*refs, cfg: _Config, length: int, save: bool, n: int):
    """Forward, split layout: two threads per channel, each with ``n / 2`` of its states.

    The channel layout with twice the threads: vectors have ``E = 2 BD`` elements, element
    ``e`` is channel ``e // 2``, state half ``e % 2`` (states ``half * n/2 + j``), so every
    input row is a gather of ``BD`` addresses, each pair of threads loads the same ``x``,
    ``dt``, ``z`` values and repeats the per-channel work, each thread runs ``n / 2`` state
    chains and loads only its half of ``B_t``/``C_t``, and ``y`` adds the partner's partial
    sum by one lane shuffle (``e ^ 1``; needs ``E`` threads, ``num_warps = E / 32``).
    Same refs and array layouts as :func:`_fwd_kernel_channel`; ``y`` is stored by both
    threads of a pair (the same value).
    """
    r, outs = _split_refs(refs, _in_names(cfg, backward=False))
    y_ref, hT_ref = outs[0], outs[1]
    ckpt_ref = outs[2] if save else None
    ch, half, k_of = _split_index(cfg.block_d, n)
    n2 = n // 2
    A2 = [r["A2"][k_of[j], ch].astype(_F32) for j in range(n2)]
    D = r["D"][ch].astype(_F32) if cfg.has_D else None
    bias = r["bias"][ch].astype(_F32) if cfg.has_bias else None
    packed = _packed(cfg)

    def bc_now(t):
        return _bc_split(r, t, half, k_of, packed)

    def load(start, count):
        rows = []
        for u in range(count):
            t = start + u
            row = {"x": r["x"][t, ch], "dt": r["dt"][t, ch]}
            if r["z"] is not None:
                row["z"] = r["z"][t, ch]
            if cfg.prefetch_bc:
                row["B"], row["C"] = bc_now(t)
            rows.append(row)
        return rows

    K = cfg.ckpt_every

    def body(start, rows, h):
        h = list(h)
        for u, row in enumerate(rows):
            t = start + u
            if save and u % K == 0:
                blk = block_index(start, K) + u // K
                for j in range(n2):
                    if _ckpt_channel(cfg):
                        ckpt_ref[blk, k_of[j], ch] = h[j]
                    else:
                        ckpt_ref[blk, ch, k_of[j]] = h[j]
            x, _, dt, dtx = _step_inputs(row, bias, cfg)
            Bs, Cs = (row["B"], row["C"]) if cfg.prefetch_bc else bc_now(t)
            for j in range(n2):
                h[j] = _exp2(dt * A2[j], cfg) * h[j] + dtx * Bs[j].astype(_F32)
            y = _tree_sum(h[j] * Cs[j].astype(_F32) for j in range(n2))
            y = y + shfl_xor(y, 1, cfg.interpret)
            if D is not None:
                y = y + D * x
            if cfg.has_z:
                z = row["z"].astype(_F32)
                y = y * (z * _sig(z, cfg))
            y_ref[t, ch] = y.astype(y_ref.dtype)
        return tuple(h)

    h = tuple(r["h0"][k_of[j], ch].astype(_F32) for j in range(n2))
    h = blocked_loop(length, cfg.unroll, load, body, h)
    for j in range(n2):
        hT_ref[k_of[j], ch] = h[j]


def _bwd_kernel_split(*refs, cfg: _Config, length: int, n: int):
    """Backward, split layout (see :func:`_fwd_kernel_split`): two threads per channel with
    ``n / 2`` states each, on the shared body :func:`bwd_body`. Per-channel sums over ``n``
    (``y``, ``adj . B``, ``dA . A``) add the partner's half by one lane shuffle; the ``n``
    per-thread ``dB``/``dC`` partials are summed over the warp's 16 channels by a butterfly
    over the lanes of equal parity and stored as one ``(2 BD,)`` vector per 16 sums. Values
    per channel are stored by both threads of a pair."""
    r = _split_refs(refs, _in_names(cfg, backward=True))[0]
    ch, half, k_of = _split_index(cfg.block_d, n)
    packed = _packed(cfg)
    lanes = Lanes(
        cols=ch,
        k_of=k_of,
        join=lambda v: v + shfl_xor(v, 1, cfg.interpret),
        bc_now=lambda t: _bc_split(r, t, half, k_of, packed),
        masks=SPLIT_MASKS,
        width=2 * cfg.block_d,
    )
    bwd_body(refs, cfg, length, lanes)
