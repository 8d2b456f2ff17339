"""Pallas kernels for the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``: Mosaic
GPU ones on Hopper where they run, Triton ones otherwise.

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
  ``dh0 = a_0 g_0``. The custom VJP is defined on real planes (complex values are
  ``(re, im)`` plane pairs, so complex inputs and outputs are split/merged outside it and
  :func:`linear_scan_planes` skips that). The gradient of real planes is the conjugate of
  JAX's complex cotangent, so the complex adjoint runs with ``conj(a)`` and
  ``da = g conj(h_{t-1})``.
* Time-invariant ``a`` (S4D/S5/LRU: ``(*s)``, ``(batch, *s)`` or any ``(Ba, 1, *s)``):
  ``a`` is not broadcast over time. It is passed as a ``(Ba, d)`` array (``Ba`` in
  ``{1, batch}``) whose block spec picks row ``i`` of the batch (row 0 when shared), and
  each program loads its ``BD`` decays once, before the time loop, in the forward and the
  backward kernel. The backward accumulates ``da = sum_t g_t h_{t-1}`` (the per-step
  product of the time-varying backward, summed) in fp32 registers and writes it once per
  program as a ``(batch, d)`` output; a shared ``a`` is then summed over the batch outside
  the kernel. HBM traffic drops from 3 to 2 sequence-sized arrays forward (``a``, ``b``
  in, ``h`` out become ``b`` in, ``h`` out) and from 5 to 3 backward. A time-varying ``a``
  with ``Ba == 1`` is broadcast over the batch and takes the time-varying path.
* L-parallel two-pass scan (``chunks > 1``; the default when the single-pass grid has
  fewer than 256 programs, e.g. batch-1 prefill, see :func:`default_chunks`): pass 1 scans
  every time chunk from a zero state (grid ``(batch, d / BD, chunks)``) and writes its end
  state and decay product; a short associative scan over the ``(batch, chunks, d)`` chunk
  states gives every chunk's true start state; pass 2 rescans every chunk from it and
  writes ``h``. The backward is the same two-pass scan of the adjoint (``a`` shifted by one
  step), with ``da``, ``dh0`` elementwise in XLA. ``a`` and ``b`` are read twice, so the
  single pass wins whenever its grid fills the GPU.
* bf16 I/O: ``a`` and ``b`` may be bf16; ``h`` is then written in bf16, the carry is fp32.
* ``layout="mosaic"`` (the default on compute capability 9.0 GPUs where it runs, see
  :func:`auto_layout`): the single-pass forward and backward as Pallas Mosaic GPU kernels
  with the sequences staged by TMA into shared memory
  (:mod:`pallas_kernels._linear_scan_mosaic`): tiles in flight where the Triton kernels
  keep a few rows. Same semantics and tests. On the H100 the fp32 forward moves 2.9 TB/s
  of device time (86% of DRAM peak by ``ncu``, as torch's and XLA's streaming kernels
  reach 90%); forward+backward faster than Triton at every benchmark shape (BENCHMARKS.md).
  With ``chunks > 1`` and a time-invariant ``a``, the L-parallel Mosaic scan
  (:mod:`pallas_kernels._linear_scan_mosaic_chunked`): every chunk's zero-start end state by
  an end-state kernel, then the scan kernels on ``(batch * chunks, l / chunks, d)``, each
  chunk carrying its start state in from those end states itself; for grids
  too small to fill the GPU: the default for time-invariant scans below 32 programs
  (:func:`auto_mosaic_chunks`; BENCHMARKS.md, eleventh to thirteenth sessions).
* ``layout="lookback"`` (opt-in, time-invariant ``a``): the single-read L-parallel scan
  (:mod:`pallas_kernels._linear_scan_lookback`, Triton): every chunk read once and kept in
  registers while its start state is found by a decoupled look-back over the earlier chunks'
  published end states. Fewest bytes, but on the H100 slower than the L-parallel Mosaic
  scan (forward+backward 0.182 vs 0.157 ms at (8, 4096, 256) complex; 1.16x faster than the
  Triton two-pass scan there; BENCHMARKS.md, sixteenth session), so never chosen
  automatically.
* ``layout="mosaic_lookback"`` (time-invariant ``a``; Hopper): the same single-read schedule
  as a Pallas Mosaic GPU kernel (:mod:`pallas_kernels._linear_scan_lookback_mosaic`): every
  chunk (default 64 steps) staged once by TMA into shared memory, the ticket and the status
  words in PTX through ``plgpu.inline_mgpu``. On the H100 forward+backward 0.1275 ms at
  (8, 4096, 256) complex, against 0.157 for the L-parallel Mosaic scan; the automatic
  choice for complex planes where that scan would be taken (:func:`auto_lookback`;
  BENCHMARKS.md, seventeenth to twenty-first sessions), and at 32-64 programs from 1024
  steps, where the single-pass Mosaic scan would be (:func:`auto_lookback_single_pass`:
  0.243 vs 0.261 ms at (8, 4096, 512), 0.1249 vs 0.1268 at (32, 1024, 256); twenty-second
  session).

The reference this is tested against is ``ssmjax.ops.linear_recurrence(...,
implementation="sequential")``.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._chunk_states import _planes, _unplanes, chunk_starts
from pallas_kernels._common import check_backend, is_pow2
from pallas_kernels._linear_scan_auto import (
    MOSAIC_CHUNKED_MIN_PROGRAMS,
    MOSAIC_CHUNKED_PROGRAMS,
    MOSAIC_MIN_CHUNK,
    MOSAIC_MIN_PROGRAMS,
    auto_layout,
    auto_lookback,
    auto_lookback_single_pass,
    auto_mosaic_chunks,
    default_chunks,
)
from pallas_kernels._linear_scan_kernels import (
    _bwd_kernel,
    _chunk_end_kernel,
    _fwd_kernel,
    _mul_conj,
)
from pallas_kernels._linear_scan_lookback import run_bwd_lookback, run_fwd_lookback
from pallas_kernels._linear_scan_lookback_mosaic import (
    run_bwd_lookback_mosaic,
    run_fwd_lookback_mosaic,
)
from pallas_kernels._linear_scan_lookback_mosaic import supported as lookback_mosaic_supported
from pallas_kernels._linear_scan_mosaic import BLOCK_D as MOSAIC_BLOCK_D
from pallas_kernels._linear_scan_mosaic import TILE as MOSAIC_TILE
from pallas_kernels._linear_scan_mosaic import run_bwd_mosaic, run_fwd_mosaic
from pallas_kernels._linear_scan_mosaic import supported as mosaic_supported
from pallas_kernels._linear_scan_mosaic_chunked import run_bwd_chunked, run_fwd_chunked

__all__ = [
    "MOSAIC_CHUNKED_MIN_PROGRAMS",
    "MOSAIC_CHUNKED_PROGRAMS",
    "MOSAIC_MIN_CHUNK",
    "MOSAIC_MIN_PROGRAMS",
    "auto_layout",
    "auto_lookback",
    "auto_lookback_single_pass",
    "auto_mosaic_chunks",
    "default_chunks",
    "linear_scan",
    "linear_scan_planes",
]

_F32 = jnp.float32
_IO_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.complex64))


class _Config(NamedTuple):
    block_d: int
    unroll: int
    num_warps: int
    num_stages: int
    reverse: bool
    interpret: bool
    chunks: int = 1  # > 1: the L-parallel scan with this many time chunks
    layout: str = "channel"  # "mosaic": the Mosaic GPU kernels (single pass)


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


def _each(f, ps) -> tuple:
    return tuple(f(x) for x in ps)


# ----------------------------------------------------------------------------------------
# pallas_call wrappers (kernel bodies: pallas_kernels._linear_scan_kernels) on flat
# (batch, l, d) planes, d a multiple of block_d. ``a`` is either (batch, l, d)
# (time-varying) or (Ba, d) with Ba in {1, batch} (time-invariant).
# ----------------------------------------------------------------------------------------


def _specs(cfg: _Config, length: int, kinds: str):
    """Block specs, one per character of ``kinds``.

    ``s``: a ``(batch, l, d)`` sequence; ``h``: a ``(batch, d)`` state (or a per-sequence
    time-invariant ``a``); ``r``: a ``(1, d)`` row shared by every batch row (a
    time-invariant ``a`` with ``Ba == 1``).
    """
    seq = pl.BlockSpec((None, length, cfg.block_d), lambda i, j: (i, 0, j))
    state = pl.BlockSpec((None, cfg.block_d), lambda i, j: (i, j))
    shared = pl.BlockSpec((None, cfg.block_d), lambda i, j: (0, j))
    return [{"s": seq, "h": state, "r": shared}[k] for k in kinds]


def _a_kind(a) -> str:
    """Spec kind of ``a``: a sequence, a per-sequence row or a row shared by the batch."""
    if a.ndim == 3:
        return "s"
    return "r" if a.shape[0] == 1 else "h"


def _run_fwd(cfg: _Config, ap, bp, h0p):
    """``h`` planes of the single-pass forward (all arguments are tuples of planes)."""
    if cfg.layout == "mosaic":
        return run_fwd_mosaic(cfg, ap, bp, h0p)
    batch, length, d = bp[0].shape
    n = len(bp)
    kernel = functools.partial(
        _fwd_kernel,
        n_planes=n,
        length=length,
        unroll=cfg.unroll,
        reverse=cfg.reverse,
        time_invariant=ap[0].ndim == 2,
    )
    out_dtype = bp[0].dtype
    hp = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((batch, length, d), out_dtype)] * n,
        grid=(batch, d // cfg.block_d),
        in_specs=_specs(cfg, length, _a_kind(ap[0]) * n + "s" * n + "h" * n),
        out_specs=_specs(cfg, length, "s" * n),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="linear_scan_fwd",
    )(*ap, *bp, *h0p)
    return tuple(hp)


def _run_bwd(cfg: _Config, ap, hp, dhp, h0p, b_dtype):
    """Returns the planes ``(db, da, dh0)``; ``da`` is ``(batch, l, d)`` in ``a``'s dtype for
    a time-varying ``a``, and the per-sequence sum ``(batch, d)`` in fp32 for a
    time-invariant one (the caller reduces it over the batch when ``a`` is shared)."""
    if cfg.layout == "mosaic":
        return run_bwd_mosaic(cfg, ap, hp, dhp, h0p, b_dtype)
    batch, length, d = hp[0].shape
    n = len(hp)
    lti = ap[0].ndim == 2
    kernel = functools.partial(
        _bwd_kernel,
        n_planes=n,
        length=length,
        unroll=cfg.unroll,
        reverse=cfg.reverse,
        time_invariant=lti,
    )
    # Time-invariant a: one fp32 da row per (batch row, channel block), summed over time.
    da_shape = (batch, d) if lti else (batch, length, d)
    da_dtype = _F32 if lti else ap[0].dtype
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((batch, length, d), b_dtype)] * n
        + [jax.ShapeDtypeStruct(da_shape, da_dtype)] * n
        + [jax.ShapeDtypeStruct((batch, d), h0p[0].dtype)] * n,
        grid=(batch, d // cfg.block_d),
        in_specs=_specs(cfg, length, _a_kind(ap[0]) * n + "s" * n * 2 + "h" * n),
        out_specs=_specs(cfg, length, "s" * n + ("h" if lti else "s") * n + "h" * n),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="linear_scan_bwd",
    )(*ap, *hp, *dhp, *h0p)
    return tuple(outs[:n]), tuple(outs[n : 2 * n]), tuple(outs[2 * n :])


# ----------------------------------------------------------------------------------------
# L-parallel two-pass scan (few programs: small batch x channels, e.g. inference prefill)
# ----------------------------------------------------------------------------------------


def _chunk_specs(cfg: _Config, chunk: int, kinds: str):
    """Block specs over the grid ``(batch, d / BD, chunks)``: ``s`` a ``(batch, l, d)``
    sequence (one time chunk per program), ``h`` a ``(batch, d)`` row, ``r`` a shared
    ``(1, d)`` row, ``c`` a ``(batch, chunks, d)`` per-chunk state."""
    bd = cfg.block_d
    return [
        {
            "s": pl.BlockSpec((None, chunk, bd), lambda i, j, c: (i, c, j)),
            "h": pl.BlockSpec((None, bd), lambda i, j, c: (i, j)),
            "r": pl.BlockSpec((None, bd), lambda i, j, c: (0, j)),
            "c": pl.BlockSpec((None, None, bd), lambda i, j, c: (i, c, j)),
        }[k]
        for k in kinds
    ]


def _two_pass(cfg: _Config, ap, bp, h0p, reverse: bool):
    """``h`` planes of the recurrence with ``cfg.chunks`` time chunks scanned in parallel.

    Pass 1 (kernel): per chunk, the end state from a zero start and the decay product.
    Pass 2 (XLA, ``(batch, chunks, d)`` only): the true start state of every chunk by an
    associative scan over the chunks. Pass 3 (kernel): every chunk rescanned from its
    start state, writing ``h``. ``a``, ``b`` are read twice, so this pays only when the
    single-pass grid ``(batch, d / BD)`` has too few programs to fill the GPU.
    """
    batch, length, d = bp[0].shape
    nc = cfg.chunks
    chunk = length // nc
    lti = ap[0].ndim == 2
    n = len(bp)
    grid = (batch, d // cfg.block_d, nc)
    a_kind = ("r" if ap[0].shape[0] == 1 else "h") if lti else "s"
    state = jax.ShapeDtypeStruct((batch, nc, d), _F32)
    kw = dict(n_planes=n, length=chunk, unroll=cfg.unroll, reverse=reverse, time_invariant=lti)
    outs = pl.pallas_call(
        functools.partial(_chunk_end_kernel, **kw),
        out_shape=[state] * (n if lti else 2 * n),
        grid=grid,
        in_specs=_chunk_specs(cfg, chunk, a_kind * n + "s" * n),
        out_specs=_chunk_specs(cfg, chunk, "c" * (n if lti else 2 * n)),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="linear_scan_chunk_ends",
    )(*ap, *bp)
    # Pass 2 on the small (batch, chunks, d) arrays, in complex arithmetic where complex.
    ends = _unplanes(outs[:n])
    if lti:
        a_c = _unplanes(_each(lambda x: x.astype(_F32), ap))
        prods = lax.integer_pow(a_c, chunk)[:, None]
    else:
        prods = _unplanes(outs[n:])
    starts = chunk_starts(prods, ends, _unplanes(h0p), reverse)
    # Pass 3: rescan every chunk from its start state.
    return tuple(
        pl.pallas_call(
            functools.partial(_fwd_kernel, **kw),
            out_shape=[jax.ShapeDtypeStruct((batch, length, d), bp[0].dtype)] * n,
            grid=grid,
            in_specs=_chunk_specs(cfg, chunk, a_kind * n + "s" * n + "c" * n),
            out_specs=_chunk_specs(cfg, chunk, "s" * n),
            compiler_params=_compiler_params(cfg),
            interpret=cfg.interpret,
            name="linear_scan_chunks",
        )(*ap, *bp, *_planes(starts))
    )


def _two_pass_bwd(cfg: _Config, ap, hp, dhp, h0p, b_dtype):
    """Planes ``(db, da, dh0)`` from the adjoint ``g_s = dh_s + a_{s+1} g_{s+1}`` (scan
    order ``s``), itself a two-pass scan the other way in time; ``da`` and ``dh0`` are
    elementwise in XLA (same conventions and shapes as :func:`_run_bwd`)."""
    lti = ap[0].ndim == 2
    rev = cfg.reverse
    if lti:
        a_next = ap
    else:  # a_{s+1} in scan order, in time order; its value at the last scan step is unused

        def shift(a):
            pad = jnp.zeros_like(a[:, :1])
            return (
                jnp.concatenate([pad, a[:, :-1]], 1) if rev else jnp.concatenate([a[:, 1:], pad], 1)
            )

        a_next = _each(shift, ap)
    if len(a_next) == 2:  # the adjoint runs with conj(a)
        a_next = (a_next[0], -a_next[1])
    zeros = _each(jnp.zeros_like, h0p)
    g = _two_pass(cfg, a_next, dhp, zeros, reverse=not rev)
    gf = _each(lambda x: x.astype(_F32), g)

    def prev(h, h0):
        h0c, hf = h0.astype(_F32)[:, None], h.astype(_F32)
        return (
            jnp.concatenate([hf[:, 1:], h0c], 1) if rev else jnp.concatenate([h0c, hf[:, :-1]], 1)
        )

    h_prev = tuple(prev(h, h0) for h, h0 in zip(hp, h0p, strict=True))
    da = _mul_conj(gf, h_prev)
    if lti:
        da = _each(lambda x: jnp.sum(x, axis=1), da)
    else:
        da = _each(lambda x: x.astype(ap[0].dtype), da)
    first = -1 if rev else 0
    a_first = _each(lambda x: x.astype(_F32), ap if lti else _each(lambda x: x[:, first], ap))
    dh0 = _mul_conj(_each(lambda x: x[:, first], gf), a_first)
    dh0 = _each(lambda x: x.astype(h0p[0].dtype), dh0)
    return _each(lambda x: x.astype(b_dtype), g), tuple(da), dh0


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg: _Config, ap, bp, h0p):
    """The differentiable kernel on tuples of planes (1: real, 2: real and imaginary) of
    flat ``(batch, l, d)`` arrays (``a``: ``(Ba, d)`` when time-invariant)."""
    return _forward(cfg, ap, bp, h0p)


def _forward(cfg: _Config, ap, bp, h0p):
    if cfg.layout == "lookback":
        return run_fwd_lookback(cfg, ap, bp, h0p)
    if cfg.layout == "mosaic_lookback":
        return run_fwd_lookback_mosaic(cfg, ap, bp, h0p, _lookback_chunk(cfg, bp[0].shape[1]))
    if cfg.chunks > 1 and cfg.layout == "mosaic":
        return run_fwd_chunked(cfg, ap, bp, h0p)
    if cfg.chunks > 1:
        return _two_pass(cfg, ap, bp, h0p, cfg.reverse)
    return _run_fwd(cfg, ap, bp, h0p)


def _scan_fwd(cfg: _Config, ap, bp, h0p):
    hp = _forward(cfg, ap, bp, h0p)
    return hp, (ap, hp, h0p, jnp.zeros((0,), bp[0].dtype))


def _scan_bwd(cfg: _Config, residuals, dhp):
    ap, hp, h0p, b_like = residuals
    run_bwd = _run_bwd
    if cfg.layout == "lookback":
        run_bwd = run_bwd_lookback
    elif cfg.layout == "mosaic_lookback":
        run_bwd = functools.partial(
            run_bwd_lookback_mosaic, chunk=_lookback_chunk(cfg, hp[0].shape[1])
        )
    elif cfg.chunks > 1:
        run_bwd = run_bwd_chunked if cfg.layout == "mosaic" else _two_pass_bwd
    dhp = tuple(dh.astype(h.dtype) for dh, h in zip(dhp, hp, strict=True))
    dbp, dap, dh0p = run_bwd(cfg, ap, hp, dhp, h0p, b_like.dtype)
    if ap[0].ndim == 2 and ap[0].shape[0] != dap[0].shape[0]:  # shared time-invariant a
        dap = _each(lambda x: jnp.sum(x, axis=0, keepdims=True), dap)
    return (
        tuple(x.astype(a.dtype) for x, a in zip(dap, ap, strict=True)),
        _each(lambda x: x.astype(b_like.dtype), dbp),
        tuple(x.astype(h.dtype) for x, h in zip(dh0p, h0p, strict=True)),
    )


_scan.defvjp(_scan_fwd, _scan_bwd)


# ----------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------


LOOKBACK_CHUNK = 32  # default steps per chunk of layout="lookback"
LOOKBACK_MAX_CHUNK = 128  # its chunks are unrolled and kept in registers
MOSAIC_LOOKBACK_CHUNK = 64  # default steps per chunk of layout="mosaic_lookback"


def _lookback_chunk(cfg: _Config, length: int) -> int:
    """Steps per chunk of ``layout="mosaic_lookback"``: ``l / chunks`` rounded up to whole
    ``MOSAIC_TILE``-step tiles."""
    chunk = -(-length // cfg.chunks)
    return -(-chunk // MOSAIC_TILE) * MOSAIC_TILE


def _compact_a(a: jax.Array, b_shape: tuple[int, ...]) -> jax.Array:
    """Brings ``a`` to ``(Ba, La, *s)`` with ``Ba in {1, batch}`` and ``La in {1, l}``.

    Args:
      a: ``(*s)``, ``(batch, *s)`` (time-invariant, shared / per sequence) or
        ``(Ba, La, *s')`` with ``*s'`` broadcastable to ``*s``.
      b_shape: ``(batch, l, *s)``.

    Returns:
      ``a`` of shape ``(Ba, La, *s)``; only the state axes are broadcast.

    Raises:
      ValueError: ``a`` does not broadcast to ``b_shape`` in one of these forms.
    """
    batch, length, *state = b_shape
    if a.ndim == len(state):
        a = a[None, None]
    elif a.ndim == len(state) + 1:
        a = a[:, None]
    if a.ndim != len(b_shape) or a.shape[0] not in (1, batch) or a.shape[1] not in (1, length):
        raise ValueError(
            f"linear_scan: a must have shape (Ba, La, *s), (batch, *s) or (*s) with Ba in "
            f"{{1, {batch}}}, La in {{1, {length}}} for b of shape {b_shape}; got {a.shape}"
        )
    try:
        return jnp.broadcast_to(a, (*a.shape[:2], *state))
    except ValueError as e:
        raise ValueError(
            f"linear_scan: a of shape {a.shape} does not broadcast to {b_shape}"
        ) from e


def _run_planes(
    ap: tuple,
    bp: tuple,
    h0p: tuple | None,
    *,
    reverse: bool,
    interpret: bool,
    block_d: int | None,
    unroll: int | None,
    num_warps: int | None,
    num_stages: int,
    chunks: int | None,
    layout: str | None = None,
) -> tuple:
    """Validates, flattens and pads the planes, runs the kernel; returns the ``h`` planes
    in ``b``'s shape. ``ap``/``bp``/``h0p`` are tuples of 1 (real) or 2 (complex) planes."""
    n = len(bp)
    b0 = bp[0]
    if b0.ndim < 2 or b0.shape[1] == 0:
        raise NotImplementedError(f"linear_scan needs (batch, l >= 1, *s); got {b0.shape}")
    for x in (*ap, *bp):
        if x.dtype not in _IO_DTYPES or jnp.iscomplexobj(x):
            raise NotImplementedError(f"linear_scan: untested dtype {x.dtype}")
    if any(x.shape != b0.shape or x.dtype != b0.dtype for x in bp):
        raise ValueError("linear_scan: the planes of b must have one shape and dtype")
    if len({(x.shape, x.dtype) for x in ap}) != 1:
        raise ValueError("linear_scan: the planes of a must have one shape and dtype")
    batch, length = b0.shape[:2]
    state_shape = b0.shape[2:]
    d = 1
    for s in state_shape:
        d *= s
    if b0.size >= 2**31 or length * max(d, 1) * batch >= 2**31:
        raise NotImplementedError("linear_scan: more than 2**31 elements (int32 offsets)")
    ap = _each(lambda x: _compact_a(x, b0.shape), ap)
    # La == 1: the time-invariant path, a stays (Ba, d). Otherwise a full (batch, l, d) copy.
    time_invariant = ap[0].shape[1] == 1
    if not time_invariant:
        ap = _each(lambda x: jnp.broadcast_to(x, b0.shape), ap)
    h0_given = h0p is not None
    if h0p is None:
        h0p = tuple(jnp.zeros((batch, *state_shape), _F32) for _ in range(n))
    for x in h0p:
        if x.shape != (batch, *state_shape):
            raise ValueError(f"h0 must have shape {(batch, *state_shape)}; got {x.shape}")
    h0p = _each(lambda x: x.astype(_F32), h0p)

    if layout is None:
        options = dict(block_d=block_d, unroll=unroll, num_warps=num_warps, chunks=chunks)
        options["num_stages"] = None if num_stages == 1 else num_stages
        layout = auto_layout(batch, d, interpret, options)
        lookback_ok = time_invariant and n == 2  # complex planes: the only ones timed
        if layout == "mosaic" and lookback_ok:
            if auto_lookback_single_pass(batch, d, length, bp[0].dtype):
                layout = "mosaic_lookback"  # measured faster at 32-64 programs
        if layout == "channel" and time_invariant:
            c = auto_mosaic_chunks(batch, d, length, interpret, options)
            if c > 1 and lookback_ok and auto_lookback(d, bp[0].dtype):
                layout = "mosaic_lookback"  # complex: measured faster than the chunked scan
            elif c > 1:
                layout, chunks = "mosaic", c
    if layout not in ("channel", "mosaic", "lookback", "mosaic_lookback"):
        raise NotImplementedError(f"linear_scan: layout={layout!r}")
    if layout == "mosaic_lookback":
        if not time_invariant:
            raise NotImplementedError(
                "linear_scan: layout='mosaic_lookback' needs a time-invariant a"
            )
        if chunks is None:
            chunks = -(-length // MOSAIC_LOOKBACK_CHUNK)
        if not isinstance(chunks, int) or not 1 <= chunks <= length:
            raise NotImplementedError(f"linear_scan: chunks={chunks!r} for l={length}")
        d_mosaic = -(-d // MOSAIC_BLOCK_D) * MOSAIC_BLOCK_D
        # (Chunks longer than shared memory holds are shortened by the kernel: one tile must
        # fit.)
        row_bytes = 2 * n * bp[0].dtype.itemsize  # the backward stages dh (and h)
        why = lookback_mosaic_supported(d_mosaic, MOSAIC_TILE, row_bytes, interpret)
        if why:
            raise NotImplementedError(f"linear_scan: layout='mosaic_lookback': {why}")
    mosaic = layout == "mosaic"
    lookback = layout == "lookback"
    mosaic_lookback = layout == "mosaic_lookback"
    if lookback:
        if not time_invariant:
            raise NotImplementedError("linear_scan: layout='lookback' needs a time-invariant a")
        if chunks is None:
            chunks = -(-length // LOOKBACK_CHUNK)
        if not isinstance(chunks, int) or not 1 <= chunks <= length:
            raise NotImplementedError(f"linear_scan: chunks={chunks!r} for l={length}")
        if -(-length // chunks) > LOOKBACK_MAX_CHUNK:
            raise NotImplementedError(
                f"linear_scan: layout='lookback' keeps a chunk in registers: at most "
                f"{LOOKBACK_MAX_CHUNK} steps, got chunks={chunks} for l={length}"
            )
    if mosaic:
        unroll = unroll or 8
        chunks = 1 if chunks is None else chunks
        # The channels are zero-padded to whole 128-channel programs (as for Triton blocks).
        d_mosaic = -(-d // MOSAIC_BLOCK_D) * MOSAIC_BLOCK_D
        why = mosaic_supported(
            d_mosaic, unroll, chunks, interpret, lti=time_invariant, length=length
        )
        if why:
            raise NotImplementedError(f"linear_scan: layout='mosaic': {why}")
    if mosaic or mosaic_lookback:
        bd = MOSAIC_BLOCK_D
    elif lookback:
        bd = block_d or min(128, max(8, pl.next_power_of_2(d)))
    else:
        bd = block_d or _default_block_d(batch, d)
    if unroll is None or lookback or mosaic_lookback:  # these unroll whole chunks themselves
        unroll = 16 if n == 2 else 32
    if not is_pow2(bd) or not is_pow2(unroll):
        raise NotImplementedError("linear_scan: block_d and unroll must be powers of two")
    if chunks is None:
        chunks = default_chunks(batch, -(-d // bd), length)
    if not (lookback or mosaic_lookback) and (
        not isinstance(chunks, int) or chunks < 1 or length % chunks
    ):
        raise NotImplementedError(f"linear_scan: chunks={chunks!r} must divide l={length}")
    cfg = _Config(
        chunks=chunks,
        block_d=bd,
        unroll=unroll,
        num_warps=num_warps or max(1, min(8, bd // 32)),
        num_stages=num_stages,
        reverse=bool(reverse),
        interpret=bool(interpret),
        layout=layout,
    )
    d_pad = -(-d // bd) * bd
    if mosaic_lookback and not h0_given:
        h0p = ()  # the kernel starts from zeros itself: no zero-filled h0 planes, no dh0

    def flat(x, rows):
        x = x.reshape(*rows, d)
        if d_pad != d:
            # Zero padding: padded channels have b = 0 and h0 = 0, so they stay 0.
            x = jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, d_pad - d),))
        return x

    af = _each(lambda x: flat(x, x.shape[:1] if time_invariant else (batch, length)), ap)
    hp = _scan(
        cfg,
        af,
        _each(lambda x: flat(x, (batch, length)), bp),
        _each(lambda x: flat(x, (batch,)), h0p),
    )
    return _each(lambda h: h[..., :d].reshape(b0.shape), hp)


def linear_scan(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array | None = None,
    *,
    reverse: bool = False,
    interpret: bool = False,
    return_final_state: bool = False,
    block_d: int | None = None,
    unroll: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 1,
    chunks: int | None = None,
    layout: str | None = None,
):
    """``h_t = a_t * h_{t-1} + b_t`` along axis 1 by a Pallas kernel (differentiable).

    Complex inputs are split into real and imaginary planes here and ``h`` is merged back
    (XLA copies of every sequence-sized array); :func:`linear_scan_planes` takes and returns
    the planes and skips those copies.

    Args:
      a: decays, float32, bfloat16 or complex64, of shape ``(Ba, La, *s)`` with
        ``Ba in {1, batch}``, ``La in {1, l}`` (state axes may be 1 and broadcast), or
        ``(batch, *s)`` / ``(*s)`` (time-invariant per sequence / shared by the batch, as
        in :func:`ssmjax.ops.linear_recurrence`). With ``La == 1`` (time-invariant) ``a``
        is not broadcast over time: each program loads its row once, and its gradient is
        reduced inside the kernel.
      b: inputs ``(batch, l, *s)``, same kind as ``a``.
      h0: initial state ``(batch, *s)`` (float32 / complex64), zeros when ``None``. With
        ``reverse`` it is the state after the last step.
      reverse: run from the end, ``h_t = a_t * h_{t+1} + b_t``.
      interpret: run the kernel in the Pallas interpreter (CPU tests).
      return_final_state: also return the last state in scan order, ``(batch, *s)``.
      block_d: channels per program (power of two); default from the shape.
      unroll: time steps per loaded block; default 32 for real, 16 for complex inputs (the
        fastest measured on the H100, ``experiments/bench/layouts.py``).
      num_warps: Triton warps per program; default ``block_d // 32`` (at least 1).
      num_stages: Triton pipelining stages.
      chunks: split the sequence into this many time chunks scanned in parallel (the
        L-parallel two-pass scan: chunk end states, a short scan over the chunks, then every
        chunk rescanned from its true start; ``a`` and ``b`` are read twice). For few
        programs (small ``batch * d``, e.g. inference prefill). Must divide ``l``; 1 is
        the single-pass kernel. Default: :func:`default_chunks`.
      layout: ``None`` (default): :func:`auto_layout` (``"mosaic"`` on an H100/H200 when
        none of the launch options above is given, the flattened state size is a multiple
        of 128 and ``batch * d / 128 >= 32``; below that, for a time-invariant ``a``, the
        L-parallel Mosaic scan where :func:`auto_mosaic_chunks` finds chunks (for complex
        planes the Mosaic look-back scan there, :func:`auto_lookback`);
        else ``"channel"``).
        ``"channel"``: the Pallas-Triton kernels above. ``"mosaic"``: Pallas Mosaic GPU
        kernels, one channel per thread of a 128-thread warpgroup, the sequences staged by
        TMA into shared memory 32-step tiles ahead
        (:mod:`pallas_kernels._linear_scan_mosaic`); compute capability 9.0 GPUs, single
        pass (``chunks`` 1, the default here) or, for a time-invariant ``a``, ``chunks``
        of whole 32-step tiles (``l / chunks`` a multiple of 32) scanned in parallel;
        ``unroll`` (default 8 here) dividing 32; the flattened state is zero-padded to a
        multiple of 128; ``block_d``/``num_warps``/``num_stages`` do not apply.
        ``"lookback"``: for a time-invariant ``a`` only, the single-read L-parallel scan
        (:mod:`pallas_kernels._linear_scan_lookback`): ``chunks`` chunks (default
        ``ceil(l / 32)``; at most 128 steps each, kept in registers; ``l`` need not divide)
        scanned in parallel, each chunk's start state found by a decoupled look-back over
        the earlier chunks' published end states, so ``b`` (and ``dh``) are read once;
        ``block_d`` default 128 (or the padded width below it), ``num_warps``
        ``block_d // 32``; ``unroll``/``num_stages`` do not apply.
        ``"mosaic_lookback"``: the same single-read look-back scan as a Pallas Mosaic GPU
        kernel (:mod:`pallas_kernels._linear_scan_lookback_mosaic`; compute capability 9.0,
        time-invariant ``a``): chunks of ``ceil(l / chunks)`` steps rounded up to whole
        32-step tiles (default ``chunks = ceil(l / 64)``; fewer steps where the staged chunk
        would not fit in shared memory), each staged once by TMA; the flattened state is
        zero-padded to a multiple of 128; ``block_d``/``unroll``/``num_warps``/
        ``num_stages`` do not apply. Taken by ``layout=None`` for complex planes where the
        L-parallel Mosaic scan would be (:func:`auto_lookback`).

    Returns:
      ``h`` of shape ``b.shape`` in ``b``'s dtype (fp32 carry for bf16 inputs); with
      ``return_final_state``, ``(h, h_last)``. The gradient w.r.t. ``a`` has ``a``'s shape
      and dtype.

    Raises:
      NotImplementedError: dtypes, shapes or a device this kernel is not built for (raised
        before any work, so an automatic chain can fall through).
      ValueError: ``a`` or ``h0`` of a shape that does not fit ``b``.
    """
    check_backend(interpret, "linear_scan")
    a, b = jnp.asarray(a), jnp.asarray(b)
    for x in (a, b):
        if x.dtype not in _IO_DTYPES:
            raise NotImplementedError(f"linear_scan: untested dtypes a={a.dtype}, b={b.dtype}")
    if jnp.iscomplexobj(a) != jnp.iscomplexobj(b):
        raise NotImplementedError("linear_scan: a and b must both be real or both complex")
    carry_dtype = jnp.complex64 if jnp.iscomplexobj(b) else jnp.float32
    h0p = None if h0 is None else _planes(jnp.asarray(h0).astype(carry_dtype))
    hp = _run_planes(
        _planes(a),
        _planes(b),
        h0p,
        reverse=reverse,
        interpret=interpret,
        block_d=block_d,
        unroll=unroll,
        num_warps=num_warps,
        num_stages=num_stages,
        chunks=chunks,
        layout=layout,
    )
    h = _unplanes(hp)
    if return_final_state:
        return h, h[:, 0 if reverse else -1]
    return h


def linear_scan_planes(
    a: tuple[jax.Array, jax.Array],
    b: tuple[jax.Array, jax.Array],
    h0: tuple[jax.Array, jax.Array] | None = None,
    *,
    reverse: bool = False,
    interpret: bool = False,
    return_final_state: bool = False,
    block_d: int | None = None,
    unroll: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 1,
    chunks: int | None = None,
    layout: str | None = None,
):
    """The complex recurrence of :func:`linear_scan` on real and imaginary planes.

    Same result as ``linear_scan(lax.complex(*a), lax.complex(*b), ...)`` split into planes,
    but the kernel reads and writes the planes directly: no complex array of the sequence's
    size is split or merged (S5/LRU layers produce ``B u`` and consume ``h`` as planes).

    Args:
      a: ``(a_re, a_im)``, float32 or bfloat16, each of a shape :func:`linear_scan` accepts
        for ``a`` (time-invariant ``(*s)`` / ``(batch, *s)`` or ``(Ba, La, *s)``).
      b: ``(b_re, b_im)``, float32 or bfloat16, each ``(batch, l, *s)``.
      h0: optional ``(h0_re, h0_im)``, each ``(batch, *s)``; zeros when ``None``.
      reverse, interpret, return_final_state, block_d, unroll, num_warps, num_stages,
        chunks, layout: as in :func:`linear_scan`.

    Returns:
      ``(h_re, h_im)``, each of ``b_re``'s shape and dtype; with ``return_final_state``,
      ``((h_re, h_im), (last_re, last_im))``. Differentiable in every plane.

    Raises:
      NotImplementedError: dtypes, shapes or a device this kernel is not built for.
      ValueError: planes of different shapes, or shapes that do not fit.

    >>> import jax.numpy as jnp
    >>> a = (jnp.full((2,), 0.5), jnp.zeros((2,)))  # a = 0.5 + 0j for both states
    >>> b = (jnp.ones((1, 3, 2)), jnp.ones((1, 3, 2)))  # b = 1 + 1j
    >>> h_re, h_im = linear_scan_planes(a, b, interpret=True)
    >>> h_re[0, :, 0], h_im[0, :, 0]
    (Array([1.  , 1.5 , 1.75], dtype=float32), Array([1.  , 1.5 , 1.75], dtype=float32))
    """
    check_backend(interpret, "linear_scan_planes")
    planes = []
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if x is None:
            planes.append(None)
            continue
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            raise ValueError(f"linear_scan_planes: {name} must be a (real, imaginary) pair")
        planes.append(tuple(jnp.asarray(v) for v in x))
    hp = _run_planes(
        *planes,
        reverse=reverse,
        interpret=interpret,
        block_d=block_d,
        unroll=unroll,
        num_warps=num_warps,
        num_stages=num_stages,
        chunks=chunks,
        layout=layout,
    )
    if return_final_state:
        i = 0 if reverse else -1
        return hp, (hp[0][:, i], hp[1][:, i])
    return hp
