"""The single-read L-parallel linear scan for a time-invariant ``a``: chunks of the sequence
scanned in parallel, each chunk's start state found by a decoupled look-back (Pallas-Triton).

The two-pass scans (:func:`pallas_kernels.linear_scan._two_pass`, the L-parallel Mosaic
scan) read ``b`` twice: once for the chunks' end states, once for the scan. Here every
program reads its chunk once and keeps it in registers until its start state is known:

1. A program takes a ticket from an atomic counter (so chunks are handed out in scan order
   whatever order the GPU launches programs in, and a program only ever waits on programs
   that are already running: no deadlock) and turns it into ``(chunk, batch row, channel
   block)``, the chunk index slowest.
2. It loads its ``T`` rows, scans them from a zero state (``y_u``, kept in registers), and
   publishes the chunk's *aggregate* (that zero-start end state).
3. Look-back: it walks back over the earlier chunks of its sequence, adding each one's
   published value times ``A^k`` (``A = a^T``, ``k`` chunks back), and stops at the first
   chunk that has published its *inclusive* end state (chunk 0's includes ``h0``); chunks
   that have published only their aggregate are added and passed; unpublished ones are
   waited for. The sum is the chunk's true start state ``s``.
4. It publishes its inclusive end state ``A s + y_{T-1}`` and writes
   ``h_u = y_u + a^{u+1} s``.

Status words: every published value is one fp32 word per channel and plane stored as int32
(its bits XOR ``0x7FFFFFFF``) in a buffer filled with ``INT32_MIN`` beforehand, so a word is
either unpublished (``INT32_MIN``, i.e. the NaN ``0xFFFFFFFF``, which GPU arithmetic never
produces: its NaNs are ``0x7FFFFFFF``) or final; no flag word, no fence: a 32-bit store is
seen whole or not at all. A channel uses a chunk's inclusive words only when both planes
are published, else its aggregate words (both), so real and imaginary parts never mix.
Words are written by atomic exchanges and read by volatile loads, both served by L2 (the
interpreter, whose programs run one after another, stores and loads them). The wait is
bounded (``SPIN_LIMIT`` polls, seconds) so a corrupted status cannot hang the GPU.

The backward is the same kernel run the other way in time on the adjoint
``g_s = dh_s + conj(a) g_{s+1}`` (``db = g``), which also reads ``h_{s-1}`` to accumulate
``da = sum_s g_s conj(h_{s-1})`` per chunk (summed over chunks in XLA) and writes
``dh0 = conj(a) g_0``. HBM traffic: forward ``b`` in, ``h`` out; backward ``dh``, ``h`` in,
``db`` out, the fewest a scan can move. Lengths need not be a multiple of ``T``: the last
chunk's missing rows load as zeros and are not stored.

Measured on the H100 (BENCHMARKS.md, sixteenth session): correct, but its forward moves
its bytes at ~1.7 TB/s (rows loaded one 4-byte element per thread, the chunk held in
registers, then the wait), so it is slower than the two-read L-parallel Mosaic scan; it is
used only when asked for (``layout="lookback"``).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._linear_scan_kernels import _add, _mul, _mul_conj
from pallas_kernels._linear_scan_mosaic import _pow

__all__ = ["INCLUSIVE_EVERY", "SPIN_LIMIT", "run_bwd_lookback", "run_fwd_lookback"]

_F32 = jnp.float32
_I32 = jnp.int32
_UNSET = -(2**31)  # INT32_MIN: a status word not yet published
_FLIP = 0x7FFFFFFF
SPIN_LIMIT = 1 << 24  # polls of one chunk's status before giving up (seconds on a GPU)
# Chunks c with c % INCLUSIVE_EVERY == 0 publish their inclusive end state (1: all). Tests
# raise it so that look-backs must add up aggregates, which the interpreter (programs in
# ticket order: every earlier chunk complete) would otherwise never do.
INCLUSIVE_EVERY = 1


def _encode(x):
    return lax.bitcast_convert_type(x, _I32) ^ _FLIP


def _decode(w):
    return lax.bitcast_convert_type(w ^ _FLIP, _F32)


def _index(idx):
    # Static integer indices made arrays (the interpreter's atomic rule needs shapes).
    return tuple(jnp.asarray(x, _I32) if isinstance(x, int) else x for x in idx)


def _publish(ref, idx, words, interpret: bool):
    """Writes status words: an atomic exchange on the GPU (straight to L2), a store in
    the interpreter (which has no exchange rule; its programs run one after another)."""
    from jax.experimental.pallas import triton as plt

    if interpret:
        ref[_index(idx)] = words
    else:
        plt.atomic_xchg(ref, _index(idx), words)


def _peek(ref, idx):
    """Reads status words past the L1 cache (a volatile load), so a poll sees new values."""
    from jax.experimental.pallas import triton as plt

    return plt.load(ref.at[_index(idx)], volatile=True)


def _kernel(
    *refs,
    n_planes,
    length,
    chunk,
    n_chunks,
    batch,
    n_blocks,
    block_d,
    reverse,
    adjoint,
    shared_a,
    spin_limit,
    interpret,
    inclusive_every,
):
    """One chunk of ``chunk`` steps of ``block_d`` channels of one sequence, picked by ticket.

    Refs (lists of ``n_planes`` planes): inputs ``a`` ``(Ba, d)``, ``x`` ``(batch, l, d)``
    (``b``, or ``dh`` when ``adjoint``), ``h`` ``(batch, l, d)`` (``adjoint`` only: the
    forward's output, for ``da``), ``h0`` ``(batch, d)``, the counter ``(1,)`` and status
    ``(2 * n_planes, n_chunks, batch, d)`` inputs; outputs ``y`` ``(batch, l, d)`` (``h`` or
    ``db``), ``da`` ``(n_chunks, batch, d)`` and ``dh0`` ``(batch, d)`` (``adjoint`` only),
    then the counter and status (aliased to those inputs; status rows ``q`` hold plane
    ``q``'s aggregates, rows ``n_planes + q`` its inclusive end states).
    """
    from jax.experimental.pallas import triton as plt

    p, T, bd = n_planes, chunk, block_d
    it = iter(refs)
    take = lambda k: [next(it) for _ in range(k)]
    a_refs, x_refs = take(p), take(p)
    hp_refs = take(p) if adjoint else []
    h0_refs = take(p)
    take(2)  # counter and status inputs: aliased to the outputs below
    y_refs = take(p)
    da_refs, dh0_refs = (take(p), take(p)) if adjoint else ([], [])
    (counter_ref,) = take(1)
    (status_ref,) = take(1)

    ticket = plt.atomic_add(counter_ref, _index((0,)), jnp.asarray(1, _I32))
    per_chunk = batch * n_blocks
    c = ticket // per_chunk  # position in this kernel's scan order
    i = (ticket % per_chunk) // n_blocks
    col = pl.ds(pl.multiple_of((ticket % n_blocks) * bd, bd), bd)
    # Chunk c covers the forward scan's steps s = cf*T .. cf*T+T-1; the adjoint runs them
    # (and the chunks) last first.
    cf = (n_chunks - 1 - c) if adjoint else c

    def step(u):
        return cf * T + ((T - 1 - u) if adjoint else u)

    def time(s):
        return length - 1 - s if reverse else s

    def row(refs_, s):
        """Plane rows at forward step ``s`` (zeros past the end), fp32."""
        ok = s < length
        t = time(jnp.minimum(s, length - 1))
        return [
            plt.load(r.at[i, t, col], mask=jnp.full((bd,), ok), other=0).astype(_F32) for r in refs_
        ]

    a_row = 0 if shared_a else i
    a = [r[a_row, col].astype(_F32) for r in a_refs]
    if adjoint and p == 2:
        a = [a[0], -a[1]]  # the adjoint runs with conj(a)
    h0 = [r[i, col].astype(_F32) for r in h0_refs]

    # 2. Load the chunk, scan it from zero, publish the aggregate.
    xs = [row(x_refs, step(u)) for u in range(T)]
    ys = [xs[0]]
    for u in range(1, T):
        ys.append(_add(_mul(a, ys[-1]), xs[u]))
    agg = ys[-1]
    for q in range(p):
        _publish(status_ref, (q, c, i, col), _encode(agg[q]), interpret)

    # 3. Look-back over chunks k = c-1, c-2, ...: acc = sum of published values times A^m.
    big_a = _pow(a, T)
    zeros = [jnp.zeros((bd,), _F32) for _ in range(p)]
    one = [jnp.ones((bd,), _F32), *zeros[1:]]

    def cond(state):
        k, _, _, done, spins = state
        return (k >= 0) & (jnp.min(done) == 0) & (spins < spin_limit)

    def body(state):
        k, acc, mult, done, spins = state
        inc = [_peek(status_ref, (p + q, k, i, col)) for q in range(p)]
        ag = [_peek(status_ref, (q, k, i, col)) for q in range(p)]
        inc_ok = functools.reduce(jnp.logical_and, [w != _UNSET for w in inc])
        ag_ok = functools.reduce(jnp.logical_and, [w != _UNSET for w in ag])
        ready = (done > 0) | inc_ok | ag_ok
        go = jnp.min(ready.astype(_I32)) > 0
        val = [_decode(jnp.where(inc_ok, w, v)) for w, v in zip(inc, ag, strict=True)]
        add = _mul(mult, val)
        take_ = go & (done == 0)
        acc = [jnp.where(take_, x + y, x) for x, y in zip(acc, add, strict=True)]
        mult = [jnp.where(go, y, x) for x, y in zip(mult, _mul(mult, big_a), strict=True)]
        done = done | (take_ & inc_ok).astype(_I32)
        moved = go.astype(_I32)
        return k - moved, acc, mult, done, spins + (1 - moved)

    init = (c - 1, zeros, one, jnp.zeros((bd,), _I32), jnp.asarray(0, _I32))
    _, acc, mult, done, _ = lax.while_loop(cond, body, init)
    start = acc
    if not adjoint:  # chunks not ended by an inclusive value reach back to h0
        start = [jnp.where(done > 0, x, x + y) for x, y in zip(acc, _mul(mult, h0), strict=True)]

    # 4. Publish the inclusive end state, then write the chunk.
    end = _add(_mul(big_a, start), agg)

    def publish_end():
        for q in range(p):
            _publish(status_ref, (p + q, c, i, col), _encode(end[q]), interpret)

    if inclusive_every == 1:
        publish_end()
    else:  # tests: most chunks publish only their aggregate, so look-backs pass over them
        pl.when(c % inclusive_every == 0)(publish_end)
    pw = a
    da = zeros
    for u in range(T):
        y = _add(ys[u], _mul(pw, start))
        pw = _mul(pw, a)
        s = step(u)
        ok = jnp.full((bd,), s < length)
        t = time(jnp.minimum(s, length - 1))
        for r, v in zip(y_refs, y, strict=True):
            plt.store(r.at[i, t, col], v.astype(r.dtype), mask=ok)
        if adjoint:
            # h_{s-1}: the previous forward step (h0 before the first); zero past the end
            # (there g is zero too).
            hp = row(hp_refs, jnp.maximum(s - 1, 0))
            hp = [jnp.where(s == 0, x0, x) for x0, x in zip(h0, hp, strict=True)]
            da = _add(da, _mul_conj(y, hp))
            if u == T - 1:
                g0 = y
    if adjoint:
        for r, v in zip(da_refs, da, strict=True):
            r[c, i, col] = v

        @pl.when(cf == 0)
        def _():
            for r, v in zip(dh0_refs, _mul(g0, a), strict=True):
                r[i, col] = v.astype(r.dtype)


def _compiler_params(cfg):
    if cfg.interpret:
        return None
    from jax.experimental.pallas import triton as plt

    return plt.CompilerParams(num_warps=cfg.num_warps, num_stages=1)


def _call(cfg, ap, xp, hpp, h0p, adjoint: bool, out_dtype):
    batch, length, d = xp[0].shape
    p, bd = len(xp), cfg.block_d
    n_blocks = d // bd
    chunk = -(-length // cfg.chunks)
    n_chunks = -(-length // chunk)
    kernel = functools.partial(
        _kernel,
        n_planes=p,
        length=length,
        chunk=chunk,
        n_chunks=n_chunks,
        batch=batch,
        n_blocks=n_blocks,
        block_d=bd,
        reverse=cfg.reverse,
        adjoint=adjoint,
        shared_a=ap[0].shape[0] == 1,
        spin_limit=SPIN_LIMIT,
        interpret=cfg.interpret,
        inclusive_every=INCLUSIVE_EVERY,
    )
    counter = jnp.zeros((1,), _I32)
    status = jnp.full((2 * p, n_chunks, batch, d), _UNSET, _I32)
    seq = jax.ShapeDtypeStruct((batch, length, d), out_dtype)
    out_shape = [seq] * p
    if adjoint:
        out_shape += [jax.ShapeDtypeStruct((n_chunks, batch, d), _F32)] * p
        out_shape += [jax.ShapeDtypeStruct((batch, d), h0p[0].dtype)] * p
    out_shape += [jax.ShapeDtypeStruct(x.shape, _I32) for x in (counter, status)]
    args = (*ap, *xp, *hpp, *h0p, counter, status)
    n_in, n_out = len(args), len(out_shape)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(n_chunks * batch * n_blocks,),
        input_output_aliases={n_in - 2: n_out - 2, n_in - 1: n_out - 1},
        compiler_params=_compiler_params(cfg),
        interpret=cfg.interpret,
        name="linear_scan_lookback_bwd" if adjoint else "linear_scan_lookback",
    )(*args)
    return outs[:-2]


def run_fwd_lookback(cfg, ap, bp, h0p):
    """``h`` planes of the forward (``ap``: ``(Ba, d)`` time-invariant planes; ``bp``:
    ``(batch, l, d)``; ``h0p``: ``(batch, d)`` fp32; ``cfg.chunks`` chunks)."""
    return tuple(_call(cfg, ap, bp, (), h0p, False, bp[0].dtype))


def run_bwd_lookback(cfg, ap, hp, dhp, h0p, b_dtype):
    """Planes ``(db, da, dh0)`` with :func:`pallas_kernels.linear_scan._run_bwd`'s
    conventions for a time-invariant ``a`` (``da`` per sequence, ``(batch, d)`` fp32)."""
    p = len(hp)
    outs = _call(cfg, ap, dhp, hp, h0p, True, b_dtype)
    db, da, dh0 = outs[:p], outs[p : 2 * p], outs[2 * p :]
    return tuple(db), tuple(jnp.sum(x, axis=0) for x in da), tuple(dh0)
