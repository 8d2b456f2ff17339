"""Pallas-Triton kernel for the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

Design (one kernel forward, one fused kernel backward):

* The state dims are flattened to one channel axis ``d`` (padded to a multiple of the
  channel block ``BD``); the grid is ``(batch, d / BD)`` and each program walks the whole
  sequence with its ``BD`` states in registers (fp32 carry, whatever the I/O dtype).
* Time steps are processed in blocks of ``unroll``: the rows of a block are loaded
  together, and the next block's rows before the current block's arithmetic
  (:func:`pallas_kernels._common.blocked_loop`), so the per-step HBM latency is hidden.
  Rows are loaded straight from the refs (``a_ref[t, :]``); ``reverse`` is index
  arithmetic.
* Complex64 is split into real and imaginary planes at the kernel boundary (Pallas has no
  complex dtype); the complex multiply is done in the kernel.
* Backward (custom VJP, same math as ``ssmjax.ops.scan._recurrence_bwd``): one kernel runs
  the adjoint recurrence ``g_t = dh_t + a_{t+1} g_{t+1}`` the other way in time, carrying
  ``c = a_t g_t`` (which is the shifted-``a`` recurrence without materialising a shifted
  copy), and writes ``db = g`` and ``da = g * h_{t-1}`` in the same pass; the final carry is
  ``dh0 = a_0 g_0``. JAX's convention for complex cotangents (transpose, no conjugation)
  is followed.
* bf16 I/O: ``a`` and ``b`` may be bf16; ``h`` is then written in bf16, the carry is fp32.

The reference this is tested against is ``ssmjax.ops.linear_recurrence(...,
implementation="sequential")``.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._common import blocked_loop, check_backend, is_pow2

__all__ = ["linear_scan"]

_F32 = jnp.float32
_IO_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.complex64))


class _Config(NamedTuple):
    block_d: int
    unroll: int
    num_warps: int
    num_stages: int
    reverse: bool
    interpret: bool


def _default_block_d(batch: int, d: int) -> int:
    """Widest power-of-two block (<= 256) that still gives >= 512 programs (>= 32 wide)."""
    bd = 256
    while bd > 32 and batch * (-(-d // bd)) < 512:
        bd //= 2
    return min(bd, max(8, pl.next_power_of_2(d)))


def _compiler_params(cfg: _Config):
    if cfg.interpret:
        return None
    from jax.experimental.pallas import triton as plt

    return plt.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _planes(x):
    if jnp.iscomplexobj(x):
        return [jnp.real(x), jnp.imag(x)]
    return [x]


def _unplanes(ps):
    return ps[0] if len(ps) == 1 else jax.lax.complex(ps[0], ps[1])


def _mul(x, y):
    """Product of two numbers given as plane lists (1 plane: real, 2 planes: complex)."""
    if len(x) == 1:
        return [x[0] * y[0]]
    return [x[0] * y[0] - x[1] * y[1], x[0] * y[1] + x[1] * y[0]]


def _add(x, y):
    return [u + v for u, v in zip(x, y, strict=True)]


def _f32(rows):
    return [r.astype(_F32) for r in rows]


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------


def _fwd_kernel(*refs, n_planes, length, unroll, reverse):
    p = n_planes
    a_refs, b_refs, h0_refs, h_refs = (refs[i * p : (i + 1) * p] for i in range(4))

    def time(s):
        return length - 1 - s if reverse else s

    def load(start, count):
        rows = []
        for u in range(count):
            t = time(start + u)
            rows.append(([r[t, :] for r in a_refs], [r[t, :] for r in b_refs]))
        return rows

    def body(start, rows, h):
        for u, (a, b) in enumerate(rows):
            h = _add(_mul(_f32(a), h), _f32(b))
            t = time(start + u)
            for r, v in zip(h_refs, h, strict=True):
                r[t, :] = v.astype(r.dtype)
        return h

    h = [r[...].astype(_F32) for r in h0_refs]
    blocked_loop(length, unroll, load, body, h)


def _bwd_kernel(*refs, n_planes, length, unroll, reverse):
    # Scan order s = 0..l-1 (time t = s, or l-1-s when reverse); the adjoint runs s = l-1..0.
    p = n_planes
    a_refs, h_refs, dh_refs, h0_refs, g_refs, da_refs, dh0_refs = (
        refs[i * p : (i + 1) * p] for i in range(7)
    )
    h0 = [r[...].astype(_F32) for r in h0_refs]

    def time(s):
        return length - 1 - s if reverse else s

    def load(start, count):
        rows = []
        for u in range(count):
            s = length - 1 - (start + u)
            t, t_prev = time(s), time(jnp.maximum(s - 1, 0))
            rows.append(
                (
                    [r[t, :] for r in a_refs],
                    [r[t, :] for r in dh_refs],
                    [r[t_prev, :] for r in h_refs],
                )
            )
        return rows

    def body(start, rows, c):
        for u, (a, dh, h_prev) in enumerate(rows):
            s = length - 1 - (start + u)
            t = time(s)
            first = s == 0
            h_prev = [jnp.where(first, x0, x.astype(_F32)) for x0, x in zip(h0, h_prev)]
            g = _add(_f32(dh), c)
            da = _mul(g, h_prev)
            c = _mul(_f32(a), g)
            for r, v in zip(g_refs, g, strict=True):
                r[t, :] = v.astype(r.dtype)
            for r, v in zip(da_refs, da, strict=True):
                r[t, :] = v.astype(r.dtype)
        return c

    c = [jnp.zeros_like(x) for x in h0]
    c = blocked_loop(length, unroll, load, body, c)
    for r, v in zip(dh0_refs, c, strict=True):
        r[...] = v.astype(r.dtype)


# ----------------------------------------------------------------------------------------
# pallas_call wrappers on flat (batch, l, d) arrays, d a multiple of block_d
# ----------------------------------------------------------------------------------------


def _specs(cfg: _Config, length: int, kinds: str):
    seq = pl.BlockSpec((None, length, cfg.block_d), lambda i, j: (i, 0, j))
    state = pl.BlockSpec((None, cfg.block_d), lambda i, j: (i, j))
    return [seq if k == "s" else state for k in kinds]


def _run_fwd(cfg: _Config, a, b, h0):
    batch, length, d = b.shape
    ap, bp, h0p = _planes(a), _planes(b), _planes(h0)
    n = len(bp)
    kernel = functools.partial(
        _fwd_kernel, n_planes=n, length=length, unroll=cfg.unroll, reverse=cfg.reverse
    )
    out_dtype = bp[0].dtype
    hp = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((batch, length, d), out_dtype)] * n,
        grid=(batch, d // cfg.block_d),
        in_specs=_specs(cfg, length, "s" * n + "s" * n + "h" * n),
        out_specs=_specs(cfg, length, "s" * n),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="linear_scan_fwd",
    )(*ap, *bp, *h0p)
    return _unplanes(hp)


def _run_bwd(cfg: _Config, a, h, dh, h0, b_dtype):
    batch, length, d = h.shape
    ap, hp, dhp, h0p = _planes(a), _planes(h), _planes(dh), _planes(h0)
    n = len(hp)
    real = lambda dt: jnp.real(jnp.zeros((), dt)).dtype
    kernel = functools.partial(
        _bwd_kernel, n_planes=n, length=length, unroll=cfg.unroll, reverse=cfg.reverse
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((batch, length, d), real(b_dtype))] * n
        + [jax.ShapeDtypeStruct((batch, length, d), real(a.dtype))] * n
        + [jax.ShapeDtypeStruct((batch, d), real(h0.dtype))] * n,
        grid=(batch, d // cfg.block_d),
        in_specs=_specs(cfg, length, "s" * n * 3 + "h" * n),
        out_specs=_specs(cfg, length, "s" * n * 2 + "h" * n),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="linear_scan_bwd",
    )(*ap, *hp, *dhp, *h0p)
    return _unplanes(outs[:n]), _unplanes(outs[n : 2 * n]), _unplanes(outs[2 * n :])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg: _Config, a, b, h0):
    return _run_fwd(cfg, a, b, h0)


def _scan_fwd(cfg: _Config, a, b, h0):
    h = _run_fwd(cfg, a, b, h0)
    return h, (a, h, h0, jnp.zeros((0,), b.dtype))


def _scan_bwd(cfg: _Config, residuals, dh):
    a, h, h0, b_like = residuals
    db, da, dh0 = _run_bwd(cfg, a, h, dh.astype(h.dtype), h0, b_like.dtype)
    return da.astype(a.dtype), db.astype(b_like.dtype), dh0.astype(h0.dtype)


_scan.defvjp(_scan_fwd, _scan_bwd)


# ----------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------


def linear_scan(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array | None = None,
    *,
    reverse: bool = False,
    interpret: bool = False,
    return_final_state: bool = False,
    block_d: int | None = None,
    unroll: int = 16,
    num_warps: int | None = None,
    num_stages: int = 1,
):
    """``h_t = a_t * h_{t-1} + b_t`` along axis 1 by a Pallas-Triton kernel (differentiable).

    Args:
      a: decays ``(batch, l, *s)`` (or broadcastable to ``b``): float32, bfloat16 or
        complex64.
      b: inputs ``(batch, l, *s)``, same kind as ``a``.
      h0: initial state ``(batch, *s)`` (float32 / complex64), zeros when ``None``. With
        ``reverse`` it is the state after the last step.
      reverse: run from the end, ``h_t = a_t * h_{t+1} + b_t``.
      interpret: run the kernel in the Pallas interpreter (CPU tests).
      return_final_state: also return the last state in scan order, ``(batch, *s)``.
      block_d: channels per program (power of two); default from the shape.
      unroll: time steps per loaded block.
      num_warps: Triton warps per program; default ``block_d // 32`` (at least 1).
      num_stages: Triton pipelining stages.

    Returns:
      ``h`` of shape ``b.shape`` in ``b``'s dtype (fp32 carry for bf16 inputs); with
      ``return_final_state``, ``(h, h_last)``.

    Raises:
      NotImplementedError: dtypes, shapes or a device this kernel is not built for (raised
        before any work, so an automatic chain can fall through).
    """
    check_backend(interpret, "linear_scan")
    a, b = jnp.asarray(a), jnp.asarray(b)
    if b.ndim < 2 or b.shape[1] == 0:
        raise NotImplementedError(f"linear_scan needs (batch, l >= 1, *s); got {b.shape}")
    if b.dtype not in _IO_DTYPES or a.dtype not in _IO_DTYPES:
        raise NotImplementedError(f"linear_scan: untested dtypes a={a.dtype}, b={b.dtype}")
    if jnp.iscomplexobj(a) != jnp.iscomplexobj(b):
        raise NotImplementedError("linear_scan: a and b must both be real or both complex")
    batch, length = b.shape[:2]
    state_shape = b.shape[2:]
    d = 1
    for s in state_shape:
        d *= s
    if b.size >= 2**31 or length * max(d, 1) * batch >= 2**31:
        raise NotImplementedError("linear_scan: more than 2**31 elements (int32 offsets)")
    a = jnp.broadcast_to(a, b.shape)
    carry_dtype = jnp.complex64 if jnp.iscomplexobj(b) else jnp.float32
    if h0 is None:
        h0 = jnp.zeros((batch, *state_shape), carry_dtype)
    h0 = jnp.asarray(h0)
    if h0.shape != (batch, *state_shape):
        raise ValueError(f"h0 must have shape {(batch, *state_shape)}; got {h0.shape}")
    h0 = h0.astype(carry_dtype)

    bd = block_d or _default_block_d(batch, d)
    if not is_pow2(bd) or not is_pow2(unroll):
        raise NotImplementedError("linear_scan: block_d and unroll must be powers of two")
    cfg = _Config(
        block_d=bd,
        unroll=unroll,
        num_warps=num_warps or max(1, min(8, bd // 32)),
        num_stages=num_stages,
        reverse=bool(reverse),
        interpret=bool(interpret),
    )
    d_pad = -(-d // bd) * bd
    flat = lambda x: x.reshape(batch, length, d)
    af, bf, h0f = flat(a), flat(b), h0.reshape(batch, d)
    if d_pad != d:
        widths = ((0, 0), (0, 0), (0, d_pad - d))
        af, bf = jnp.pad(af, widths), jnp.pad(bf, widths)
        h0f = jnp.pad(h0f, ((0, 0), (0, d_pad - d)))
    h = _scan(cfg, af, bf, h0f)
    if d_pad != d:
        h = h[..., :d]
    h = h.reshape(b.shape)
    if return_final_state:
        return h, h[:, 0 if reverse else -1]
    return h
