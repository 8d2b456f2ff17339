"""The Pallas-Triton kernel bodies of the fused selective scan in the ``"split"`` register
layout (two threads per channel, ``n / 2`` states each), forward and backward; launched by
:mod:`pallas_kernels.selective_scan` with the same refs and array layouts as the
``"channel"`` kernels of :mod:`pallas_kernels._selective_scan_kernels`."""

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._common import block_index, blocked_loop
from pallas_kernels._intrinsics import butterfly_sums, shfl_xor
from pallas_kernels._selective_scan_common import (
    _F32,
    _LN2,
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
from pallas_kernels._selective_scan_kernels import _input_grads

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
    ``n / 2`` states each. Per-channel sums over ``n`` (``y``, ``adj . B``, ``dA . A``) add
    the partner's half by one lane shuffle; the ``n`` per-thread ``dB``/``dC`` partials are
    summed over the warp's 16 channels by a butterfly over the lanes of equal parity and
    stored as one ``(2 BD,)`` vector per ``16`` sums (``"dB"`` is that block, ``(l, slots
    2 BD)``). Same refs and array layouts as :func:`_bwd_kernel_channel` otherwise; values
    per channel are stored by both threads of a pair."""
    r, outs = _split_refs(refs, _in_names(cfg, backward=True))
    out_names = [("dx", True), ("ddt", True), ("dz", cfg.has_z), ("dB", True)]
    out_names += [("dA", True), ("dD", cfg.has_D), ("dbias", cfg.has_bias), ("dh0", True)]
    o, _ = _split_refs(outs, out_names)
    ch, half, k_of = _split_index(cfg.block_d, n)
    n2, E = n // 2, 2 * cfg.block_d
    A2 = [r["A2"][k_of[j], ch].astype(_F32) for j in range(n2)]
    A = [a * _LN2 for a in A2]
    D = r["D"][ch].astype(_F32) if cfg.has_D else None
    bias = r["bias"][ch].astype(_F32) if cfg.has_bias else None
    U = cfg.unroll
    packed = _packed(cfg)
    pair_sum = lambda v: v + shfl_xor(v, 1, cfg.interpret)

    def load(start, count):
        blk = block_index(start, U)
        h_in = [r["ckpt"][blk, k_of[j], ch] for j in range(n2)]
        rows = []
        for u in range(count):
            t = start + u
            row = {"x": r["x"][t, ch], "dt": r["dt"][t, ch], "dy": r["dy"][t, ch]}
            if r["z"] is not None:
                row["z"] = r["z"][t, ch]
            if cfg.prefetch_bc:
                row["B"], row["C"] = _bc_split(r, t, half, k_of, packed)
            rows.append(row)
        return h_in, rows

    def body(start, loaded, carry):
        h_in, rows = loaded
        adj, acc_A, acc_D, acc_bias = carry
        adj, acc_A = list(adj), list(acc_A)
        hs = [list(h_in)]
        steps = []
        for u, row in enumerate(rows):
            x, dt_pre, dt, dtx = _step_inputs(row, bias, cfg)
            if cfg.prefetch_bc:
                Bs, Cs = row["B"], row["C"]
            else:
                Bs, Cs = _bc_split(r, start + u, half, k_of, packed)
            Bs = [v.astype(_F32) for v in Bs]
            dA = [_exp2(dt * A2[j], cfg) for j in range(n2)]
            hs.append([dA[j] * hs[-1][j] + dtx * Bs[j] for j in range(n2)])
            steps.append((x, dt_pre, dt, dtx, Bs, Cs, dA))
        for u in reversed(range(len(rows))):
            row = rows[u]
            x, dt_pre, dt, dtx, Bs, Cs, dA = steps[u]
            h_prev, h = hs[u], hs[u + 1]
            t = start + u
            Cs = [v.astype(_F32) for v in Cs]
            dy = row["dy"].astype(_F32)
            if cfg.has_z:
                z = row["z"].astype(_F32)
                y_pre = pair_sum(_tree_sum(h[j] * Cs[j] for j in range(n2)))
                if D is not None:
                    y_pre = y_pre + D * x
                sig = _sig(z, cfg)
                dz = dy * y_pre * sig * (1.0 + z * (1.0 - sig))
                o["dz"][t, ch] = dz.astype(o["dz"].dtype)
                dy = dy * (z * sig)
            adj_b_terms, dda_terms, dB_terms, dC_terms = [], [], [], []
            for j in range(n2):
                adj[j] = adj[j] + dy * Cs[j]
                dC_terms.append(dy * h[j])
                dB_terms.append(adj[j] * dtx)
                adj_b_terms.append(adj[j] * Bs[j])
                da_a = adj[j] * h_prev[j] * dA[j]  # dL/d(dt A)
                acc_A[j] = acc_A[j] + da_a * dt
                dda_terms.append(da_a * A[j])
                adj[j] = adj[j] * dA[j]
            sums = butterfly_sums(dB_terms + dC_terms, cfg.interpret, masks=SPLIT_MASKS)
            for i, v in enumerate(sums):
                o["dB"][t, pl.ds(i * E, E)] = v
            adj_b = pair_sum(_tree_sum(adj_b_terms))
            dda = pair_sum(_tree_sum(dda_terms))
            acc_D, acc_bias = _input_grads(
                cfg, o, t, x, dt, dt_pre, dy, adj_b, dda, D, acc_D, acc_bias, cols=ch
            )
        return tuple(adj), tuple(acc_A), acc_D, acc_bias

    zeros = jnp.zeros((E,), _F32)
    carry = (
        tuple(r["dh"][k_of[j], ch].astype(_F32) for j in range(n2)),
        tuple(jnp.zeros_like(A2[j]) for j in range(n2)),
        zeros if cfg.has_D else None,
        zeros if cfg.has_bias else None,
    )
    adj, acc_A, acc_D, acc_bias = blocked_loop(length, U, load, body, carry, reverse_blocks=True)
    for j in range(n2):
        o["dh0"][k_of[j], ch] = adj[j]
        o["dA"][k_of[j], ch] = acc_A[j]
    if cfg.has_D:
        o["dD"][ch] = acc_D
    if cfg.has_bias:
        o["dbias"][ch] = acc_bias
