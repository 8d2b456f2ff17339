"""Pallas-Triton fused Mamba-1 selective scan, forward and backward.

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
the forward also writes the state at the start of every block (``l / unroll`` checkpoints,
``(b, ceil(l / unroll), d, n)`` fp32).

Backward kernel: same grid, blocks last-first. Per block it reloads the checkpoint,
recomputes the block's ``unroll`` states and decays *in registers* (fully unrolled, so no
state goes to HBM and no exp is recomputed twice), then runs the adjoint recurrence
``adj_t = C_t dy_t + exp(dt_{t+1} A) adj_{t+1}`` backwards through the block and writes
``dx``, ``ddt`` (through the softplus), ``dz``, and per-program partial ``dB_t``, ``dC_t``
rows (reduced over the program's ``BD`` channels in registers). ``dA``, ``dD``, ``ddt_bias``
are accumulated in registers and written once. Partial ``dB``/``dC`` (one per channel
block) and the per-batch parameter gradients are summed outside the kernel -- no atomics.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import block_index, blocked_loop, check_backend, is_pow2, pow2_divisor

__all__ = ["selective_scan"]

_F32 = jnp.float32
_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)
_IO_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class _Config(NamedTuple):
    block_d: int
    unroll: int
    num_warps: int
    num_stages: int
    groups: int
    softplus: bool
    has_D: bool
    has_z: bool
    has_bias: bool
    interpret: bool


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


def _softplus(v):
    return jnp.maximum(v, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(v)))


def _sigmoid(v):
    return 1.0 / (1.0 + jnp.exp(-v))


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


def _discretize(row, A2, bias, softplus):
    """``(x, dt_pre, dt, exp(dt A), dt x)`` for one step, all fp32."""
    x = row["x"].astype(_F32)
    dt_pre = row["dt"].astype(_F32)
    if bias is not None:
        dt_pre = dt_pre + bias
    dt = _softplus(dt_pre) if softplus else dt_pre
    dA = jnp.exp2(dt[:, None] * A2)
    return x, dt_pre, dt, dA, dt * x


# ----------------------------------------------------------------------------------------
# Forward kernel
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

    def body(start, rows, h):
        if save:
            ckpt_ref[block_index(start, U), :, :] = h
        for u, row in enumerate(rows):
            x, _, _, dA, dtx = _discretize(row, A2, bias, cfg.softplus)
            B = row["B"].astype(_F32)
            C = row["C"].astype(_F32)
            h = dA * h + dtx[:, None] * B[None, :]
            y = jnp.sum(h * C[None, :], axis=1)
            if D is not None:
                y = y + D * x
            if cfg.has_z:
                z = row["z"].astype(_F32)
                y = y * (z * _sigmoid(z))
            y_ref[start + u, :] = y.astype(y_ref.dtype)
        return h

    h = r["h0"][...].astype(_F32)
    h = blocked_loop(length, U, load, body, h)
    hT_ref[...] = h


# ----------------------------------------------------------------------------------------
# Backward kernel
# ----------------------------------------------------------------------------------------


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
            x, dt_pre, dt, dA, dtx = _discretize(row, A2, bias, cfg.softplus)
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
                sig = _sigmoid(z)
                o["dz"][t, :] = (dy * y_pre * sig * (1.0 + z * (1.0 - sig))).astype(o["dz"].dtype)
                dy = dy * (z * sig)
            adj = adj + dy[:, None] * C[None, :]
            o["dC"][t, :] = jnp.sum(dy[:, None] * h, axis=0)
            o["dB"][t, :] = jnp.sum(adj * dtx[:, None], axis=0)
            adj_b = jnp.sum(adj * B[None, :], axis=1)
            da_a = adj * h_prev * dA  # dL/d(dt A)
            acc_A = acc_A + da_a * dt[:, None]
            ddt = x * adj_b + jnp.sum(da_a * A, axis=1)
            if cfg.softplus:
                ddt = ddt * _sigmoid(dt_pre)
            if acc_bias is not None:
                acc_bias = acc_bias + ddt
            dx = dt * adj_b
            if D is not None:
                acc_D = acc_D + dy * x
                dx = dx + D * dy
            o["dx"][t, :] = dx.astype(o["dx"].dtype)
            o["ddt"][t, :] = ddt.astype(o["ddt"].dtype)
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


# ----------------------------------------------------------------------------------------
# pallas_call wrappers
# ----------------------------------------------------------------------------------------


def _spec_fns(cfg: _Config, d: int, length: int, n: int):
    bd = cfg.block_d
    per_group = (d // cfg.groups) // bd  # channel blocks per B/C group
    return {
        "seq": pl.BlockSpec((None, length, bd), lambda i, j: (i, 0, j)),
        "bc": pl.BlockSpec((None, length, None, n), lambda i, j: (i, 0, j // per_group, 0)),
        "chan": pl.BlockSpec((bd,), lambda i, j: (j,)),
        "chan_n": pl.BlockSpec((bd, n), lambda i, j: (j, 0)),
        "state": pl.BlockSpec((None, bd, n), lambda i, j: (i, j, 0)),
        "vec": pl.BlockSpec((None, bd), lambda i, j: (i, j)),
        "part": pl.BlockSpec((None, None, length, n), lambda i, j: (i, j, 0, 0)),
    }


def _common_inputs(cfg: _Config, p: _Inputs, s):
    args = [p.x, p.dt, p.A.astype(_F32) * _LOG2E, p.B, p.C]
    specs = [s["seq"], s["seq"], s["chan_n"], s["bc"], s["bc"]]
    for v, spec in ((p.D, s["chan"]), (p.z, s["seq"]), (p.dt_bias, s["chan"])):
        if v is not None:
            args.append(v.astype(_F32) if spec is s["chan"] else v)
            specs.append(spec)
    return args, specs


def _run_fwd(cfg: _Config, p: _Inputs, save: bool):
    b, length, d = p.x.shape
    n = p.A.shape[1]
    s = _spec_fns(cfg, d, length, n)
    args, specs = _common_inputs(cfg, p, s)
    args.append(p.h0)
    specs.append(s["state"])
    out_shape = [
        jax.ShapeDtypeStruct((b, length, d), p.x.dtype),
        jax.ShapeDtypeStruct((b, d, n), _F32),
    ]
    out_specs = [s["seq"], s["state"]]
    if save:
        n_ckpt = -(-length // cfg.unroll)
        out_shape.append(jax.ShapeDtypeStruct((b, n_ckpt, d, n), _F32))
        out_specs.append(pl.BlockSpec((None, n_ckpt, cfg.block_d, n), lambda i, j: (i, 0, j, 0)))
    outs = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, length=length, save=save),
        out_shape=out_shape,
        grid=(b, d // cfg.block_d),
        in_specs=specs,
        out_specs=out_specs,
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="selective_scan_fwd",
    )(*args)
    return outs


def _run_bwd(cfg: _Config, p: _Inputs, ckpt, dy, dh):
    b, length, d = p.x.shape
    n = p.A.shape[1]
    n_blocks = d // cfg.block_d
    s = _spec_fns(cfg, d, length, n)
    args, specs = _common_inputs(cfg, p, s)
    args += [ckpt, dy.astype(p.x.dtype), dh.astype(_F32)]
    specs += [
        pl.BlockSpec((None, ckpt.shape[1], cfg.block_d, n), lambda i, j: (i, 0, j, 0)),
        s["seq"],
        s["state"],
    ]
    seq = lambda dtype: jax.ShapeDtypeStruct((b, length, d), dtype)
    part = jax.ShapeDtypeStruct((b, n_blocks, length, n), _F32)
    out_shape = [seq(p.x.dtype), seq(p.dt.dtype)]
    out_specs = [s["seq"], s["seq"]]
    if cfg.has_z:
        out_shape.append(seq(p.z.dtype))
        out_specs.append(s["seq"])
    out_shape += [part, part, jax.ShapeDtypeStruct((b, d, n), _F32)]
    out_specs += [s["part"], s["part"], s["state"]]
    for present in (cfg.has_D, cfg.has_bias):
        if present:
            out_shape.append(jax.ShapeDtypeStruct((b, d), _F32))
            out_specs.append(s["vec"])
    out_shape.append(jax.ShapeDtypeStruct((b, d, n), _F32))
    out_specs.append(s["state"])
    outs = list(
        pl.pallas_call(
            functools.partial(_bwd_kernel, cfg=cfg, length=length),
            out_shape=out_shape,
            grid=(b, n_blocks),
            in_specs=specs,
            out_specs=out_specs,
            compiler_params=_compiler_params(cfg),
            interpret=cfg.interpret,
            name="selective_scan_bwd",
        )(*args)
    )
    dx, ddt = outs.pop(0), outs.pop(0)
    dz = outs.pop(0) if cfg.has_z else None
    dB_part, dC_part, dA_part = outs.pop(0), outs.pop(0), outs.pop(0)
    dD = outs.pop(0).sum(0) if cfg.has_D else None
    dbias = outs.pop(0).sum(0) if cfg.has_bias else None
    dh0 = outs.pop(0)

    def reduce_part(v):  # (b, n_blocks, l, n) -> (b, l, g, n)
        v = v.reshape(b, cfg.groups, n_blocks // cfg.groups, length, n).sum(2)
        return jnp.transpose(v, (0, 2, 1, 3))

    return _Inputs(
        x=dx,
        dt=ddt,
        A=dA_part.sum(0),
        B=reduce_part(dB_part),
        C=reduce_part(dC_part),
        D=dD,
        z=dz,
        dt_bias=dbias,
        h0=dh0,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg: _Config, p: _Inputs):
    y, h_last = _run_fwd(cfg, p, save=False)
    return y, h_last


def _scan_fwd(cfg: _Config, p: _Inputs):
    y, h_last, ckpt = _run_fwd(cfg, p, save=True)
    return (y, h_last), (p._replace(h0=None), ckpt, p.h0)


def _scan_bwd(cfg: _Config, residuals, cotangents):
    p, ckpt, h0 = residuals
    dy, dh = cotangents
    g = _run_bwd(cfg, p._replace(h0=h0), ckpt, dy, dh)
    cast = lambda v, like: None if like is None else v.astype(like.dtype)
    return (_Inputs(*(cast(gv, pv) for gv, pv in zip(g, p._replace(h0=h0), strict=True))),)


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
    block_d: int | None = None,
    unroll: int = 8,
    num_warps: int | None = None,
    num_stages: int = 1,
):
    """Mamba-1 selective scan by a fused Pallas-Triton kernel (differentiable).

    Args:
      x, dt, z: ``(b, l, d)``, float32 or bfloat16 (``z`` optional).
      A: ``(d, n)``; ``n`` a power of two.
      B, C: ``(b, l, n)`` or ``(b, l, g, n)`` with ``d % g == 0``; float32 or bfloat16.
      D, dt_bias: ``(d,)`` or ``None``.
      dt_softplus: apply softplus to ``dt + dt_bias``.
      h0: initial state ``(b, d, n)``; zeros when ``None``.
      return_final_state: also return the final state ``(b, d, n)`` (float32).
      interpret: run in the Pallas interpreter (CPU tests).
      block_d: channels per program (power of two, dividing ``d / g``); default 32.
      unroll: time steps per block, which is also the checkpoint interval of the backward.
      num_warps, num_stages: Triton launch parameters.

    Returns:
      ``y`` ``(b, l, d)`` in ``x.dtype``, or ``(y, h_last)``.

    Raises:
      NotImplementedError: dtypes, shapes or a device the kernel is not built for (raised
        before any work).
    """
    check_backend(interpret, "selective_scan")
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
    bd = pow2_divisor(d // groups, block_d or max(16, min(32, 512 // n)))
    if block_d is not None and bd != block_d:
        raise NotImplementedError(f"selective_scan kernel: block_d={block_d} must divide d/g")
    if not interpret and bd < 16:
        raise NotImplementedError(
            f"selective_scan kernel: channel block {bd} < 16 (d/g={d // groups}) is untested"
        )
    if not is_pow2(unroll):
        raise NotImplementedError("selective_scan kernel: unroll must be a power of two")
    if b * length * d >= 2**31 or b * d * n * (-(-length // unroll)) >= 2**31:
        raise NotImplementedError("selective_scan kernel: more than 2**31 elements")
    cfg = _Config(
        block_d=bd,
        unroll=unroll,
        num_warps=num_warps or max(1, min(8, bd * n // 128)),
        num_stages=num_stages,
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
    y, h_last = _scan(cfg, p)
    if return_final_state:
        return y, h_last
    return y
