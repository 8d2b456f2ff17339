"""The Pallas-Triton kernel bodies of the fused selective scan: forward and backward, each
in the ``"state"`` and the ``"channel"`` register layout. The design, layouts and
checkpointing are described in :mod:`pallas_kernels.selective_scan`, which launches them."""

import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import block_index, blocked_loop
from pallas_kernels._intrinsics import ALL_LANES, butterfly_sums
from pallas_kernels._selective_scan_common import (
    _F32,
    _LN2,
    Lanes,
    _ckpt_channel,
    _Config,
    _discretize,
    _exp2,
    _in_names,
    _load_rows,
    _packed,
    _sig,
    _split_refs,
    _step_inputs,
    _tree_sum,
    bc_scalars_now,
    load_rows,
)

# ----------------------------------------------------------------------------------------


def _fwd_kernel(*refs, cfg: _Config, length: int, save: bool):
    r, outs = _split_refs(refs, _in_names(cfg, backward=False))
    y_ref, hT_ref = outs[0], outs[1]
    ckpt_ref = outs[2] if save else None
    A2 = r["A2"][...].astype(_F32)
    D = r["D"][...].astype(_F32) if cfg.has_D else None
    bias = r["bias"][...].astype(_F32) if cfg.has_bias else None
    U = cfg.unroll

    def load(start, count):
        return _load_rows(r, start, count)

    K = cfg.ckpt_every

    def body(start, rows, h):
        for u, row in enumerate(rows):
            if save and u % K == 0:
                ckpt_ref[block_index(start, K) + u // K, :, :] = h
            x, _, _, dA, dtx = _discretize(row, A2, bias, cfg)
            B = row["B"].astype(_F32)
            C = row["C"].astype(_F32)
            h = dA * h + dtx[:, None] * B[None, :]
            y = jnp.sum(h * C[None, :], axis=1)
            if D is not None:
                y = y + D * x
            if cfg.has_z:
                z = row["z"].astype(_F32)
                y = y * (z * _sig(z, cfg))
            y_ref[start + u, :] = y.astype(y_ref.dtype)
        return h

    h = r["h0"][...].astype(_F32)
    h = blocked_loop(length, U, load, body, h)
    hT_ref[...] = h


def _fwd_kernel_channel(*refs, cfg: _Config, length: int, save: bool, n: int):
    """Forward, channel layout: one ``(BD,)`` register vector per state index.

    Every per-channel quantity (``dt``, softplus, ``D x``, the gate) is a ``(BD,)`` vector
    computed once per channel, the state is ``n`` separate ``(BD,)`` vectors (the ``n`` loop
    is unrolled in Python), ``B_t[k]``/``C_t[k]`` are scalar loads broadcast to the block
    and ``y_t = sum_k C_t[k] h_k`` is ``n`` fused multiply-adds with no cross-thread
    reduction. ``A`` comes transposed, ``(n, BD)``, pre-scaled by ``log2 e``; ``h0`` and the
    final state are ``(n, BD)`` blocks of ``(b, n, d)`` arrays (transposed outside). The
    checkpoints are ``(b, n_ckpt, n, d)`` for the channel-layout backward, or the
    ``(b, n_ckpt, d, n)`` of the state-layout backward (strided column stores, once per
    block of ``unroll`` steps). The body is :func:`fwd_body`.
    """
    r = _split_refs(refs, _in_names(cfg, backward=False))[0]
    fwd_body(refs, cfg, length, save, _channel_lanes(cfg, r, n, masks=None))


def _channel_lanes(cfg: _Config, r, n: int, masks) -> Lanes:
    """One thread per channel (``slice(None)``), all ``n`` states in its slots."""
    packed = _packed(cfg)
    return Lanes(
        cols=slice(None),
        k_of=list(range(n)),
        join=lambda v: v,
        bc_now=lambda t: bc_scalars_now(r, t, n, packed),
        masks=masks,
        width=cfg.block_d,
    )


def fwd_body(refs, cfg: _Config, length: int, save: bool, lanes: Lanes):
    """The forward of the ``"channel"`` and ``"split"`` layouts: each thread holds the
    states ``lanes.k_of`` of channel(s) ``lanes.cols`` of the block as separate vectors;
    ``y``'s per-thread partial sum over them is joined by ``lanes.join``.

    Steps run in blocks of ``cfg.unroll`` with the next block's rows (and, with
    ``prefetch_bc``, its ``B``/``C``) prefetched; ``bc_block`` loads a block's ``B``/``C``
    before its first store (loads are not moved across stores to refs that may alias, so
    inline loads would wait once per step). A differentiated call also stores the state
    every ``cfg.ckpt_every`` steps: at the start of each checkpoint block, or with
    ``ckpt_late`` after the step before it (``h0`` first; the last one unused).
    """
    r, outs = _split_refs(refs, _in_names(cfg, backward=False))
    y_ref, hT_ref = outs[0], outs[1]
    ckpt_ref = outs[2] if save else None
    cols, k_of, m = lanes.cols, lanes.k_of, len(lanes.k_of)
    A2 = [r["A2"][k, cols].astype(_F32) for k in k_of]
    D = r["D"][cols].astype(_F32) if cfg.has_D else None
    bias = r["bias"][cols].astype(_F32) if cfg.has_bias else None
    K = cfg.ckpt_every

    def load(start, count):
        return load_rows(r, start, count, cols, lanes.bc_now if cfg.prefetch_bc else None)

    def store_ckpt(blk, h):
        for j, k in enumerate(k_of):
            if _ckpt_channel(cfg):
                ckpt_ref[blk, k, cols] = h[j]
            else:
                ckpt_ref[blk, cols, k] = h[j]

    def body(start, rows, h):
        h = list(h)
        early = None
        if cfg.bc_block and not cfg.prefetch_bc:
            early = [lanes.bc_now(start + u) for u in range(len(rows))]
        for u, row in enumerate(rows):
            t = start + u
            if save and not cfg.ckpt_late and u % K == 0:
                store_ckpt(block_index(start, K) + u // K, h)
            x, _, dt, dtx = _step_inputs(row, bias, cfg)
            if cfg.prefetch_bc:
                Bs, Cs = row["B"], row["C"]
            else:
                Bs, Cs = early[u] if early is not None else lanes.bc_now(t)
            for j in range(m):
                h[j] = _exp2(dt * A2[j], cfg) * h[j] + dtx * Bs[j].astype(_F32)
            y = lanes.join(_tree_sum(h[j] * Cs[j].astype(_F32) for j in range(m)))
            if D is not None:
                y = y + D * x
            if cfg.has_z:
                z = row["z"].astype(_F32)
                y = y * (z * _sig(z, cfg))
            y_ref[t, cols] = y.astype(y_ref.dtype)
            if save and cfg.ckpt_late and (u + 1) % K == 0:  # the state entering t + 1
                store_ckpt(block_index(start, K) + (u + 1) // K, h)
        return tuple(h)

    h = tuple(r["h0"][k, cols].astype(_F32) for k in k_of)
    if save and cfg.ckpt_late:
        store_ckpt(0, h)
    h = blocked_loop(length, cfg.unroll, load, body, h)
    for j, k in enumerate(k_of):
        hT_ref[k, cols] = h[j]


# ----------------------------------------------------------------------------------------
# Backward kernel
# ----------------------------------------------------------------------------------------


def _input_grads(
    cfg: _Config, o, t, x, dt, dt_pre, dy, adj_b, dda, D, acc_D, acc_bias, cols=slice(None)
):
    """Writes step ``t``'s ``dx`` and ``ddt`` (through the softplus) and accumulates ``dD``
    and ``ddt_bias``; shared by the backward layouts. ``adj_b = sum_n adj_n B_n`` and
    ``dda = sum_n dL/d(dt A_n) A_n`` are ``(BD,)`` (or the split layout's ``(2 BD,)``,
    stored at channels ``cols``); returns ``(acc_D, acc_bias)``."""
    ddt = x * adj_b + dda
    if cfg.softplus:
        ddt = ddt * _sig(dt_pre, cfg)
    if acc_bias is not None:
        acc_bias = acc_bias + ddt
    dx = dt * adj_b
    if D is not None:
        acc_D = acc_D + dy * x
        dx = dx + D * dy
    o["dx"][t, cols] = dx.astype(o["dx"].dtype)
    o["ddt"][t, cols] = ddt.astype(o["ddt"].dtype)
    return acc_D, acc_bias


def _bwd_kernel(*refs, cfg: _Config, length: int):
    r, outs = _split_refs(refs, _in_names(cfg, backward=True))
    out_names = [("dx", True), ("ddt", True), ("dz", cfg.has_z), ("dB", True), ("dC", True)]
    out_names += [("dA", True), ("dD", cfg.has_D), ("dbias", cfg.has_bias), ("dh0", True)]
    o, _ = _split_refs(outs, out_names)
    A2 = r["A2"][...].astype(_F32)
    A = A2 * _LN2
    D = r["D"][...].astype(_F32) if cfg.has_D else None
    bias = r["bias"][...].astype(_F32) if cfg.has_bias else None
    U = cfg.unroll

    def load(start, count):
        return r["ckpt"][block_index(start, U), :, :], _load_rows(r, start, count, dy=True)

    def body(start, loaded, carry):
        h_in, rows = loaded
        adj, acc_A, acc_D, acc_bias = carry
        # Recompute the block's states (kept in registers).
        h = h_in
        steps = []
        for row in rows:
            x, dt_pre, dt, dA, dtx = _discretize(row, A2, bias, cfg)
            B = row["B"].astype(_F32)
            h_prev = h
            h = dA * h_prev + dtx[:, None] * B[None, :]
            steps.append((row, x, dt_pre, dt, dA, dtx, B, h_prev, h))
        # Adjoint, last step first.
        for u in reversed(range(len(rows))):
            row, x, dt_pre, dt, dA, dtx, B, h_prev, h = steps[u]
            t = start + u
            C = row["C"].astype(_F32)
            dy = row["dy"].astype(_F32)
            if cfg.has_z:
                z = row["z"].astype(_F32)
                y_pre = jnp.sum(h * C[None, :], axis=1)
                if D is not None:
                    y_pre = y_pre + D * x
                sig = _sig(z, cfg)
                o["dz"][t, :] = (dy * y_pre * sig * (1.0 + z * (1.0 - sig))).astype(o["dz"].dtype)
                dy = dy * (z * sig)
            adj = adj + dy[:, None] * C[None, :]
            o["dC"][t, :] = jnp.sum(dy[:, None] * h, axis=0)
            o["dB"][t, :] = jnp.sum(adj * dtx[:, None], axis=0)
            adj_b = jnp.sum(adj * B[None, :], axis=1)
            da_a = adj * h_prev * dA  # dL/d(dt A)
            acc_A = acc_A + da_a * dt[:, None]
            dda = jnp.sum(da_a * A, axis=1)
            acc_D, acc_bias = _input_grads(
                cfg, o, t, x, dt, dt_pre, dy, adj_b, dda, D, acc_D, acc_bias
            )
            adj = adj * dA
        return adj, acc_A, acc_D, acc_bias

    zeros_d = jnp.zeros((cfg.block_d,), _F32)
    carry = (
        r["dh"][...].astype(_F32),
        jnp.zeros_like(A2),
        zeros_d if cfg.has_D else None,
        zeros_d if cfg.has_bias else None,
    )
    adj, acc_A, acc_D, acc_bias = blocked_loop(length, U, load, body, carry, reverse_blocks=True)
    o["dh0"][...] = adj
    o["dA"][...] = acc_A
    if cfg.has_D:
        o["dD"][...] = acc_D
    if cfg.has_bias:
        o["dbias"][...] = acc_bias


def _bwd_kernel_channel(*refs, cfg: _Config, length: int, n: int):
    """Backward, channel layout: the state-layout backward with every ``(BD, n)`` array
    split into ``n`` ``(BD,)`` vectors. Sums over ``n`` (``adj . B``, ``dA . A``, ``y``) are
    per-thread; only the ``dB_t``/``dC_t`` partials reduce over the block's channels, stored
    as scalars (or, with ``bwd_butterfly``, by one butterfly over the warp). ``ckpt``,
    ``dh``, ``dh0``, ``dA`` are in ``(n, d)`` order."""
    r = _split_refs(refs, _in_names(cfg, backward=True))[0]
    masks = ALL_LANES if cfg.bwd_butterfly else None
    bwd_body(refs, cfg, length, _channel_lanes(cfg, r, n, masks))


def bwd_body(refs, cfg: _Config, length: int, lanes: Lanes):
    """The backward of the ``"channel"`` and ``"split"`` layouts: each thread holds the
    states ``lanes.k_of`` of channel(s) ``lanes.cols`` of the block as separate vectors.

    Per block of ``cfg.unroll`` steps (last first): reload the checkpoint, recompute the
    block's states and decays in registers, then run the adjoint backwards through it.
    Per-channel sums over the states are per-thread partials joined by ``lanes.join``;
    the per-step ``dB``/``dC`` partials are summed over the block's channels, one
    reduction each (``lanes.masks`` is ``None``; outputs ``dB``, ``dC``) or by one
    butterfly over those lane masks (output ``dB``: the ``(l, slots width)`` block of
    sums, lane order undone by the launcher).
    """
    r, outs = _split_refs(refs, _in_names(cfg, backward=True))
    bfly = lanes.masks is not None
    out_names = [("dx", True), ("ddt", True), ("dz", cfg.has_z), ("dB", True)]
    out_names += [("dC", not bfly), ("dA", True), ("dD", cfg.has_D)]
    out_names += [("dbias", cfg.has_bias), ("dh0", True)]
    o, _ = _split_refs(outs, out_names)
    cols, k_of, join, m = lanes.cols, lanes.k_of, lanes.join, len(lanes.k_of)
    A2 = [r["A2"][k, cols].astype(_F32) for k in k_of]
    A = [a * _LN2 for a in A2]
    D = r["D"][cols].astype(_F32) if cfg.has_D else None
    bias = r["bias"][cols].astype(_F32) if cfg.has_bias else None
    U = cfg.unroll

    def load(start, count):
        blk = block_index(start, U)
        h_in = [r["ckpt"][blk, k, cols] for k in k_of]
        rows = load_rows(r, start, count, cols, lanes.bc_now if cfg.prefetch_bc else None)
        for u, row in enumerate(rows):
            row["dy"] = r["dy"][start + u, cols]
        return h_in, rows

    def body(start, loaded, carry):
        h_in, rows = loaded
        adj, acc_A, acc_D, acc_bias = carry
        adj, acc_A = list(adj), list(acc_A)
        # Recompute the block's states and decays (kept in registers).
        hs = [list(h_in)]
        steps = []
        for u, row in enumerate(rows):
            t = start + u
            x, dt_pre, dt, dtx = _step_inputs(row, bias, cfg)
            Bs, Cs = (row["B"], row["C"]) if cfg.prefetch_bc else lanes.bc_now(t)
            Bs = [v.astype(_F32) for v in Bs]
            dA = [_exp2(dt * A2[k], cfg) for k in range(m)]
            hs.append([dA[k] * hs[-1][k] + dtx * Bs[k] for k in range(m)])
            steps.append((x, dt_pre, dt, dtx, Bs, Cs, dA))
        # Adjoint, last step first.
        for u in reversed(range(len(rows))):
            row = rows[u]
            x, dt_pre, dt, dtx, Bs, Cs, dA = steps[u]
            h_prev, h = hs[u], hs[u + 1]
            t = start + u
            Cs = [v.astype(_F32) for v in Cs]
            dy = row["dy"].astype(_F32)
            if cfg.has_z:
                z = row["z"].astype(_F32)
                y_pre = join(_tree_sum(h[k] * Cs[k] for k in range(m)))
                if D is not None:
                    y_pre = y_pre + D * x
                sig = _sig(z, cfg)
                dz = dy * y_pre * sig * (1.0 + z * (1.0 - sig))
                o["dz"][t, cols] = dz.astype(o["dz"].dtype)
                dy = dy * (z * sig)
            adj_b_terms, dda_terms, dB_terms, dC_terms = [], [], [], []
            for k in range(m):
                adj[k] = adj[k] + dy * Cs[k]
                if bfly:
                    dC_terms.append(dy * h[k])
                    dB_terms.append(adj[k] * dtx)
                else:
                    o["dC"][t, k] = jnp.sum(dy * h[k])
                    o["dB"][t, k] = jnp.sum(adj[k] * dtx)
                adj_b_terms.append(adj[k] * Bs[k])
                da_a = adj[k] * h_prev[k] * dA[k]  # dL/d(dt A)
                acc_A[k] = acc_A[k] + da_a * dt
                dda_terms.append(da_a * A[k])
                adj[k] = adj[k] * dA[k]
            if bfly:  # one vector store per vector of sums, lane order permuted
                sums = butterfly_sums(dB_terms + dC_terms, cfg.interpret, masks=lanes.masks)
                for j, v in enumerate(sums):
                    o["dB"][t, pl.ds(j * lanes.width, lanes.width)] = v
            adj_b, dda = join(_tree_sum(adj_b_terms)), join(_tree_sum(dda_terms))
            acc_D, acc_bias = _input_grads(
                cfg, o, t, x, dt, dt_pre, dy, adj_b, dda, D, acc_D, acc_bias, cols=cols
            )
        return tuple(adj), tuple(acc_A), acc_D, acc_bias

    zeros = jnp.zeros((lanes.width,), _F32)
    carry = (
        tuple(r["dh"][k, cols].astype(_F32) for k in k_of),
        tuple(jnp.zeros_like(A2[k]) for k in range(m)),
        zeros if cfg.has_D else None,
        zeros if cfg.has_bias else None,
    )
    adj, acc_A, acc_D, acc_bias = blocked_loop(length, U, load, body, carry, reverse_blocks=True)
    for j, k in enumerate(k_of):
        o["dh0"][k, cols] = adj[j]
        o["dA"][k, cols] = acc_A[j]
    if cfg.has_D:
        o["dD"][cols] = acc_D
    if cfg.has_bias:
        o["dbias"][cols] = acc_bias


# ----------------------------------------------------------------------------------------
# pallas_call wrappers
