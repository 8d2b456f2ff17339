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

The reference this is tested against is ``ssmjax.ops.linear_recurrence(...,
implementation="sequential")``.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._common import blocked_loop, check_backend, is_pow2

__all__ = ["default_chunks", "linear_scan"]

_F32 = jnp.float32
_IO_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.complex64))


class _Config(NamedTuple):
    block_d: int
    unroll: int
    num_warps: int
    num_stages: int
    reverse: bool
    interpret: bool
    chunks: int = 1  # > 1: the L-parallel two-pass scan with this many time chunks


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


def _row_reader(a_refs, b_refs, length, reverse, time_invariant):
    """``(time, load, decay)`` for a forward-type time loop over ``a``/``b`` refs.

    ``time(s)`` maps scan step ``s`` to the row index; ``load(start, count)`` loads the
    ``(a, b)`` plane rows of ``count`` steps (``a`` is ``None`` when time-invariant: its one
    ``(BD,)`` row per program is loaded once, here, before the time loop); ``decay(a)``
    gives the fp32 decay planes of a loaded step.
    """
    a_lti = [r[...].astype(_F32) for r in a_refs] if time_invariant else None

    def time(s):
        return length - 1 - s if reverse else s

    def load(start, count):
        rows = []
        for u in range(count):
            t = time(start + u)
            a = None if time_invariant else [r[t, :] for r in a_refs]
            rows.append((a, [r[t, :] for r in b_refs]))
        return rows

    def decay(a):
        return a_lti if time_invariant else _f32(a)

    return time, load, decay


def _fwd_kernel(*refs, n_planes, length, unroll, reverse, time_invariant):
    p = n_planes
    a_refs, b_refs, h0_refs, h_refs = (refs[i * p : (i + 1) * p] for i in range(4))
    time, load, decay = _row_reader(a_refs, b_refs, length, reverse, time_invariant)

    def body(start, rows, h):
        for u, (a, b) in enumerate(rows):
            h = _add(_mul(decay(a), h), _f32(b))
            t = time(start + u)
            for r, v in zip(h_refs, h, strict=True):
                r[t, :] = v.astype(r.dtype)
        return h

    h = [r[...].astype(_F32) for r in h0_refs]
    blocked_loop(length, unroll, load, body, h)


def _bwd_kernel(*refs, n_planes, length, unroll, reverse, time_invariant):
    # Scan order s = 0..l-1 (time t = s, or l-1-s when reverse); the adjoint runs s = l-1..0.
    # Time-invariant a: `a` is one (BD,) row loaded once, and da = sum_t g_t h_{t-1} is
    # accumulated in fp32 in the loop carry and written once as a (BD,) row.
    p = n_planes
    a_refs, h_refs, dh_refs, h0_refs, g_refs, da_refs, dh0_refs = (
        refs[i * p : (i + 1) * p] for i in range(7)
    )
    h0 = [r[...].astype(_F32) for r in h0_refs]
    a_lti = [r[...].astype(_F32) for r in a_refs] if time_invariant else None

    def time(s):
        return length - 1 - s if reverse else s

    def load(start, count):
        rows = []
        for u in range(count):
            s = length - 1 - (start + u)
            t, t_prev = time(s), time(jnp.maximum(s - 1, 0))
            rows.append(
                (
                    None if time_invariant else [r[t, :] for r in a_refs],
                    [r[t, :] for r in dh_refs],
                    [r[t_prev, :] for r in h_refs],
                )
            )
        return rows

    def body(start, rows, carry):
        c, da_sum = carry
        for u, (a, dh, h_prev) in enumerate(rows):
            s = length - 1 - (start + u)
            t = time(s)
            first = s == 0
            h_prev = [jnp.where(first, x0, x.astype(_F32)) for x0, x in zip(h0, h_prev)]
            g = _add(_f32(dh), c)
            da = _mul(g, h_prev)
            c = _mul(a_lti if time_invariant else _f32(a), g)
            for r, v in zip(g_refs, g, strict=True):
                r[t, :] = v.astype(r.dtype)
            if time_invariant:
                da_sum = _add(da_sum, da)
            else:
                for r, v in zip(da_refs, da, strict=True):
                    r[t, :] = v.astype(r.dtype)
        return c, da_sum

    zeros = [jnp.zeros_like(x) for x in h0]
    c, da_sum = blocked_loop(length, unroll, load, body, (zeros, zeros if time_invariant else None))
    if time_invariant:
        for r, v in zip(da_refs, da_sum, strict=True):
            r[...] = v.astype(r.dtype)
    for r, v in zip(dh0_refs, c, strict=True):
        r[...] = v.astype(r.dtype)


# ----------------------------------------------------------------------------------------
# pallas_call wrappers on flat (batch, l, d) arrays, d a multiple of block_d. ``a`` is
# either (batch, l, d) (time-varying) or (Ba, d) with Ba in {1, batch} (time-invariant).
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


def _run_fwd(cfg: _Config, a, b, h0):
    batch, length, d = b.shape
    ap, bp, h0p = _planes(a), _planes(b), _planes(h0)
    n = len(bp)
    kernel = functools.partial(
        _fwd_kernel,
        n_planes=n,
        length=length,
        unroll=cfg.unroll,
        reverse=cfg.reverse,
        time_invariant=a.ndim == 2,
    )
    out_dtype = bp[0].dtype
    hp = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((batch, length, d), out_dtype)] * n,
        grid=(batch, d // cfg.block_d),
        in_specs=_specs(cfg, length, _a_kind(a) * n + "s" * n + "h" * n),
        out_specs=_specs(cfg, length, "s" * n),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="linear_scan_fwd",
    )(*ap, *bp, *h0p)
    return _unplanes(hp)


def _run_bwd(cfg: _Config, a, h, dh, h0, b_dtype):
    """Returns ``(db, da, dh0)``; ``da`` is ``(batch, l, d)`` in ``a``'s real dtype for a
    time-varying ``a``, and the per-sequence sum ``(batch, d)`` in fp32 for a time-invariant
    one (the caller reduces it over the batch when ``a`` is shared)."""
    batch, length, d = h.shape
    ap, hp, dhp, h0p = _planes(a), _planes(h), _planes(dh), _planes(h0)
    n = len(hp)
    real = lambda dt: jnp.real(jnp.zeros((), dt)).dtype
    lti = a.ndim == 2
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
    da_dtype = _F32 if lti else real(a.dtype)
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((batch, length, d), real(b_dtype))] * n
        + [jax.ShapeDtypeStruct(da_shape, da_dtype)] * n
        + [jax.ShapeDtypeStruct((batch, d), real(h0.dtype))] * n,
        grid=(batch, d // cfg.block_d),
        in_specs=_specs(cfg, length, _a_kind(a) * n + "s" * n * 2 + "h" * n),
        out_specs=_specs(cfg, length, "s" * n + ("h" if lti else "s") * n + "h" * n),
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="linear_scan_bwd",
    )(*ap, *hp, *dhp, *h0p)
    return _unplanes(outs[:n]), _unplanes(outs[n : 2 * n]), _unplanes(outs[2 * n :])


# ----------------------------------------------------------------------------------------
# L-parallel two-pass scan (few programs: small batch x channels, e.g. inference prefill)
# ----------------------------------------------------------------------------------------


def _chunk_end_kernel(*refs, n_planes, length, unroll, reverse, time_invariant):
    """Pass 1: each program scans one time chunk from a zero state and writes the chunk's
    end state (and, for a time-varying ``a``, the product of its decays)."""
    p = n_planes
    a_refs, b_refs = refs[:p], refs[p : 2 * p]
    e_refs = refs[2 * p : 3 * p]
    p_refs = () if time_invariant else refs[3 * p : 4 * p]
    _, load, decay = _row_reader(a_refs, b_refs, length, reverse, time_invariant)

    def body(start, rows, carry):
        h, prod = carry
        for a, b in rows:
            a = decay(a)
            h = _add(_mul(a, h), _f32(b))
            if prod is not None:
                prod = _mul(a, prod)
        return h, prod

    zeros = [jnp.zeros((e_refs[0].shape[-1],), _F32) for _ in range(p)]
    ones = None if time_invariant else [jnp.ones_like(zeros[0]), *zeros[1:]]
    h, prod = blocked_loop(length, unroll, load, body, (zeros, ones))
    for r, v in zip(e_refs, h, strict=True):
        r[...] = v
    if prod is not None:
        for r, v in zip(p_refs, prod, strict=True):
            r[...] = v


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


def _two_pass(cfg: _Config, a, b, h0, reverse: bool):
    """``h`` of the recurrence with ``cfg.chunks`` time chunks scanned in parallel.

    Pass 1 (kernel): per chunk, the end state from a zero start and the decay product.
    Pass 2 (XLA, ``(batch, chunks, d)`` only): the true start state of every chunk by an
    associative scan over the chunks. Pass 3 (kernel): every chunk rescanned from its
    start state, writing ``h``. ``a``, ``b`` are read twice, so this pays only when the
    single-pass grid ``(batch, d / BD)`` has too few programs to fill the GPU.
    """
    batch, length, d = b.shape
    nc = cfg.chunks
    chunk = length // nc
    lti = a.ndim == 2
    ap, bp = _planes(a), _planes(b)
    n = len(bp)
    grid = (batch, d // cfg.block_d, nc)
    a_kind = ("r" if a.shape[0] == 1 else "h") if lti else "s"
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
    ends = _unplanes(outs[:n])
    if lti:
        a_c = a.astype(jnp.complex64 if n == 2 else _F32)
        prods = jnp.broadcast_to(lax.integer_pow(a_c, chunk)[:, None], ends.shape)
    else:
        prods = _unplanes(outs[n:])
    # Pass 2: start state of every chunk in scan order.
    if reverse:
        prods, ends = prods[:, ::-1], ends[:, ::-1]

    def combine(x, y):  # x earlier, y later in scan order
        return y[0] * x[0], y[0] * x[1] + y[1]

    cum_p, cum_e = lax.associative_scan(combine, (prods, ends), axis=1)
    h0c = h0.astype(cum_e.dtype)[:, None]
    starts = jnp.concatenate([h0c, cum_p[:, :-1] * h0c + cum_e[:, :-1]], axis=1)
    if reverse:
        starts = starts[:, ::-1]
    # Pass 3: rescan every chunk from its start state.
    return _unplanes(
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


def _two_pass_bwd(cfg: _Config, a, h, dh, h0, b_dtype):
    """``(db, da, dh0)`` from the adjoint ``g_s = dh_s + a_{s+1} g_{s+1}`` (scan order ``s``),
    itself a two-pass scan the other way in time; ``da`` and ``dh0`` are elementwise in XLA
    (same conventions and shapes as :func:`_run_bwd`)."""
    lti = a.ndim == 2
    rev = cfg.reverse
    if lti:
        a_next = a
    else:  # a_{s+1} in scan order, in time order; its value at the last scan step is unused
        pad = jnp.zeros_like(a[:, :1])
        a_next = (
            jnp.concatenate([pad, a[:, :-1]], 1) if rev else jnp.concatenate([a[:, 1:], pad], 1)
        )
    g = _two_pass(cfg, a_next, dh, jnp.zeros_like(h0), reverse=not rev)
    gf = g.astype(jnp.complex64 if jnp.iscomplexobj(g) else _F32)
    h0c = h0.astype(gf.dtype)[:, None]
    hf = h.astype(gf.dtype)
    h_prev = jnp.concatenate([hf[:, 1:], h0c], 1) if rev else jnp.concatenate([h0c, hf[:, :-1]], 1)
    if lti:
        da = jnp.sum(gf * h_prev, axis=1)
    else:
        da = (gf * h_prev).astype(a.dtype)
    first = -1 if rev else 0
    a_first = a if lti else a[:, first]
    dh0 = (a_first.astype(gf.dtype) * gf[:, first]).astype(h0.dtype)
    return g.astype(b_dtype), da, dh0


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(cfg: _Config, a, b, h0):
    return _forward(cfg, a, b, h0)


def _forward(cfg: _Config, a, b, h0):
    if cfg.chunks > 1:
        return _two_pass(cfg, a, b, h0, cfg.reverse)
    return _run_fwd(cfg, a, b, h0)


def _scan_fwd(cfg: _Config, a, b, h0):
    h = _forward(cfg, a, b, h0)
    return h, (a, h, h0, jnp.zeros((0,), b.dtype))


def _scan_bwd(cfg: _Config, residuals, dh):
    a, h, h0, b_like = residuals
    run_bwd = _two_pass_bwd if cfg.chunks > 1 else _run_bwd
    db, da, dh0 = run_bwd(cfg, a, h, dh.astype(h.dtype), h0, b_like.dtype)
    if a.ndim == 2 and a.shape[0] != da.shape[0]:  # time-invariant a shared by the batch
        da = jnp.sum(da, axis=0, keepdims=True)
    return da.astype(a.dtype), db.astype(b_like.dtype), dh0.astype(h0.dtype)


_scan.defvjp(_scan_fwd, _scan_bwd)


# ----------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------


def default_chunks(batch: int, blocks: int, length: int) -> int:
    """Time chunks of the two-pass scan for a ``(batch, blocks)`` single-pass grid.

    1 (single pass) when the grid already has ``>= 256`` programs: at (8, 4096, 1024-2048)
    the two-pass scan was no faster on the H100. Otherwise the smallest power of two that
    brings it to ``>= 2048`` programs while keeping chunks of ``>= 256`` steps (at
    (1, 16384, 2048) fp32: 64 programs 0.97 ms forward, 32 chunks 0.43 ms).
    """
    programs = batch * blocks
    if programs >= 256:
        return 1
    chunks = 1
    while programs * chunks < 2048:
        nxt = chunks * 2
        if length % nxt or length // nxt < 256:
            break
        chunks = nxt
    return chunks


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
):
    """``h_t = a_t * h_{t-1} + b_t`` along axis 1 by a Pallas-Triton kernel (differentiable).

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
    a = _compact_a(a, b.shape)
    # La == 1: the time-invariant path, a stays (Ba, d). Otherwise a full (batch, l, d) copy.
    time_invariant = a.shape[1] == 1
    if not time_invariant:
        a = jnp.broadcast_to(a, b.shape)
    carry_dtype = jnp.complex64 if jnp.iscomplexobj(b) else jnp.float32
    if h0 is None:
        h0 = jnp.zeros((batch, *state_shape), carry_dtype)
    h0 = jnp.asarray(h0)
    if h0.shape != (batch, *state_shape):
        raise ValueError(f"h0 must have shape {(batch, *state_shape)}; got {h0.shape}")
    h0 = h0.astype(carry_dtype)

    bd = block_d or _default_block_d(batch, d)
    if unroll is None:
        unroll = 16 if jnp.iscomplexobj(b) else 32
    if not is_pow2(bd) or not is_pow2(unroll):
        raise NotImplementedError("linear_scan: block_d and unroll must be powers of two")
    if chunks is None:
        chunks = default_chunks(batch, -(-d // bd), length)
    if not isinstance(chunks, int) or chunks < 1 or length % chunks:
        raise NotImplementedError(f"linear_scan: chunks={chunks!r} must divide l={length}")
    cfg = _Config(
        chunks=chunks,
        block_d=bd,
        unroll=unroll,
        num_warps=num_warps or max(1, min(8, bd // 32)),
        num_stages=num_stages,
        reverse=bool(reverse),
        interpret=bool(interpret),
    )
    d_pad = -(-d // bd) * bd
    flat = lambda x: x.reshape(batch, length, d)
    af = a.reshape(a.shape[0], d) if time_invariant else flat(a)
    bf, h0f = flat(b), h0.reshape(batch, d)
    if d_pad != d:
        # Zero padding: padded channels have b = 0 and h0 = 0, so they stay 0.
        pad_last = lambda x: jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, d_pad - d),))
        af, bf, h0f = pad_last(af), pad_last(bf), pad_last(h0f)
    h = _scan(cfg, af, bf, h0f)
    if d_pad != d:
        h = h[..., :d]
    h = h.reshape(b.shape)
    if return_final_state:
        return h, h[:, 0 if reverse else -1]
    return h
