"""The Pallas-Triton kernel bodies of the fused selective scan in the ``"split"`` register
layout (two threads per channel, ``n / 2`` states each), forward and backward; launched by
:mod:`pallas_kernels.selective_scan` with the same refs and array layouts as the
``"channel"`` kernels of :mod:`pallas_kernels._selective_scan_kernels`."""

import jax.numpy as jnp
from jax import lax

from pallas_kernels._intrinsics import shfl_xor
from pallas_kernels._selective_scan_common import (
    Lanes,
    _Config,
    _in_names,
    _packed,
    _split_refs,
    unpack_bf16_pair,
)
from pallas_kernels._selective_scan_kernels import bwd_body, fwd_body

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
    Same refs and array layouts as :func:`_fwd_kernel_channel`, on the shared body
    :func:`fwd_body`; ``y`` is stored by both threads of a pair (the same value).
    """
    r = _split_refs(refs, _in_names(cfg, backward=False))[0]
    ch, half, k_of = _split_index(cfg.block_d, n)
    packed = _packed(cfg)
    fwd_body(refs, cfg, length, save, _split_lanes(cfg, r, ch, half, k_of, packed))


def _split_lanes(cfg: _Config, r, ch, half, k_of, packed: bool) -> Lanes:
    return Lanes(
        cols=ch,
        k_of=k_of,
        join=lambda v: v + shfl_xor(v, 1, cfg.interpret),
        bc_now=lambda t: _bc_split(r, t, half, k_of, packed),
        masks=SPLIT_MASKS,
        width=2 * cfg.block_d,
    )


def _bwd_kernel_split(*refs, cfg: _Config, length: int, n: int):
    """Backward, split layout (see :func:`_fwd_kernel_split`): two threads per channel with
    ``n / 2`` states each, on the shared body :func:`bwd_body`. Per-channel sums over ``n``
    (``y``, ``adj . B``, ``dA . A``) add the partner's half by one lane shuffle; the ``n``
    per-thread ``dB``/``dC`` partials are summed over the warp's 16 channels by a butterfly
    over the lanes of equal parity and stored as one ``(2 BD,)`` vector per 16 sums. Values
    per channel are stored by both threads of a pair."""
    r = _split_refs(refs, _in_names(cfg, backward=True))[0]
    ch, half, k_of = _split_index(cfg.block_d, n)
    bwd_body(refs, cfg, length, _split_lanes(cfg, r, ch, half, k_of, _packed(cfg)))
