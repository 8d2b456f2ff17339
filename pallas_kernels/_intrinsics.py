"""PTX intrinsics for the Pallas-Triton kernels, each with an interpret-mode twin.

Two groups:

* **Approximate transcendentals** (``fast=True``): ``ex2.approx.ftz``, ``lg2.approx.ftz``
  and ``rcp.approx.ftz`` (one MUFU instruction each) instead of the libdevice ``expf``,
  ``log1pf`` and IEEE division the Pallas-Triton lowering picks for ``jnp.exp``,
  ``jnp.log1p`` and ``/`` (tens of instructions for ``log1pf``). ``softplus`` and
  ``sigmoid`` below are written on them; with ``fast=False`` (and in interpret mode,
  where inline assembly cannot run) the same formulas run on ``jnp`` functions.
* **Warp shuffles**: :func:`butterfly_sums` sums ``m`` per-lane values over the 32 lanes
  of a warp by a butterfly reduce-scatter, ``m - 1`` shuffles for ``m <= 32`` values
  instead of the ``5 m`` of ``m`` separate reductions. It needs a one-warp program whose
  ``(32,)`` vectors hold element ``c`` in lane ``c`` (the Triton layout of a 32-element
  vector in a one-warp program); interpret mode emulates the shuffle with a gather.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32
_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)
WARP = 32

__all__ = [
    "ALL_LANES",
    "WARP",
    "butterfly_positions",
    "butterfly_sums",
    "ex2",
    "shfl_xor",
    "sigmoid",
    "softplus",
]


def _asm_f32(op: str, v):
    from jax.experimental.pallas import triton as plt

    [out] = plt.elementwise_inline_asm(
        f"{op} $0, $1;",
        args=[v],
        constraints="=f,f",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, _F32)],
    )
    return out


def ex2(v, fast: bool):
    """``2 ** v`` (fp32)."""
    return _asm_f32("ex2.approx.ftz.f32", v) if fast else jnp.exp2(v)


def _lg2(v, fast: bool):
    return _asm_f32("lg2.approx.ftz.f32", v) if fast else jnp.log2(v)


def _rcp(v, fast: bool):
    return _asm_f32("rcp.approx.ftz.f32", v) if fast else 1.0 / v


def softplus(v, fast: bool):
    """``log(1 + e^v)`` (fp32), as ``max(v, 0) + log1p(e^-|v|)``.

    ``log1p(e)`` is ``log2(1 + e) ln 2`` for ``e >= 1/8`` and its 7-term series below
    (truncation error < 1e-7 relative), where the rounding of ``1 + e`` and
    ``lg2.approx``'s absolute error (2^-22) would be large relative to the result.
    """
    e = ex2(-jnp.abs(v) * _LOG2E, fast)
    series = 1.0 / 7.0
    for k in range(6, 0, -1):
        series = (1.0 if k % 2 else -1.0) / k + e * series
    series = e * series
    return jnp.maximum(v, 0.0) + jnp.where(e < 0.125, series, _lg2(1.0 + e, fast) * _LN2)


def sigmoid(v, fast: bool):
    """``1 / (1 + e^-v)`` (fp32)."""
    return _rcp(1.0 + ex2(-v * _LOG2E, fast), fast)


# ----------------------------------------------------------------------------------------
# Warp shuffles


def shfl_xor(v, mask: int, interpret: bool):
    """Element ``e`` gets ``v[e ^ mask]`` (fp32 ``(E,)``, ``mask < 32``): one shuffle when
    element ``e`` is held by thread ``e`` (``E`` elements on ``E`` threads)."""
    if interpret:
        lane = lax.broadcasted_iota(jnp.int32, v.shape, 0)
        return jnp.take(v, lane ^ mask)
    from jax.experimental.pallas import triton as plt

    bits = lax.bitcast_convert_type(v, jnp.int32)
    [out] = plt.elementwise_inline_asm(
        f"shfl.sync.bfly.b32 $0, $1, {mask}, 31, 0xffffffff;",
        args=[bits],
        constraints="=r,r",
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, jnp.int32)],
    )
    return lax.bitcast_convert_type(out, _F32)


ALL_LANES = (16, 8, 4, 2, 1)


def butterfly_sums(vals, interpret: bool, masks=ALL_LANES):
    """Sums each of ``m`` fp32 ``(32,)`` vectors over its 32 lanes (``m`` a power of two).

    Returns ``max(m // 32, 1)`` ``(32,)`` vectors: slot ``s`` of lane ``c`` holds the sum of
    ``vals[butterfly_positions(m)[s, c]]``. At each of the 5 levels (lane masks 16 .. 1)
    every lane keeps half of its values, sends the other half to its partner and adds what
    it receives; once one value is left, the remaining levels all-reduce it. ``masks``: the
    lane bits to sum over (e.g. ``(16, 8, 4, 2)``: over the lanes of equal parity, which
    then hold ``max(m // 16, 1)`` sums each).
    """
    vals = list(vals)
    m = len(vals)
    if m < 1 or m & (m - 1):
        raise ValueError(f"butterfly_sums: {m} values (needs a power of two)")
    lane = lax.broadcasted_iota(jnp.int32, vals[0].shape, 0)
    for mask in masks:
        if len(vals) > 1:
            upper = (lane & mask) != 0
            half = len(vals) // 2
            new = []
            for i in range(half):
                lo, hi = vals[i], vals[i + half]
                keep = jnp.where(upper, hi, lo)
                send = jnp.where(upper, lo, hi)
                new.append(keep + shfl_xor(send, mask, interpret))
            vals = new
        else:
            vals = [vals[0] + shfl_xor(vals[0], mask, interpret)]
    return vals


def butterfly_positions(m: int, masks=ALL_LANES):
    """``(slots, 32)`` int array: which of the ``m`` inputs of :func:`butterfly_sums` (same
    ``masks``) slot ``s`` of lane ``c`` sums (several lanes hold the same sum when ``m`` is
    less than the number of lanes summed over)."""
    import numpy as np

    slots = max(m // 2 ** len(masks), 1)
    out = np.zeros((slots, WARP), np.int32)
    for c in range(WARP):
        for s in range(slots):
            idx, size = s, m
            for mask in masks:
                if size == 1:
                    break
                size //= 2
                if c & mask:
                    idx += size
            out[s, c] = idx
    return out
