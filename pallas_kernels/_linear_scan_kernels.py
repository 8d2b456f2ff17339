"""The Pallas-Triton kernel bodies of the diagonal linear recurrence (forward, backward and
the two-pass scan's chunk-end pass) and their plane arithmetic. The design is described in
:mod:`pallas_kernels.linear_scan`, which launches them. Values are lists of planes: one
(real) or two (real, imaginary)."""

import jax.numpy as jnp

from pallas_kernels._common import blocked_loop

_F32 = jnp.float32


def _mul(x, y):
    """Product of two numbers given as plane lists (1 plane: real, 2 planes: complex)."""
    if len(x) == 1:
        return [x[0] * y[0]]
    return [x[0] * y[0] - x[1] * y[1], x[0] * y[1] + x[1] * y[0]]


def _mul_conj(x, y):
    """``x * conj(y)`` for plane lists (the backward's products: the gradients of real
    planes follow the conjugate of the complex recurrence)."""
    if len(x) == 1:
        return [x[0] * y[0]]
    return [x[0] * y[0] + x[1] * y[1], x[1] * y[0] - x[0] * y[1]]


def _add(x, y):
    return [u + v for u, v in zip(x, y, strict=True)]


def _f32(rows):
    return [r.astype(_F32) for r in rows]


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
            da = _mul_conj(g, h_prev)
            c = _mul_conj(g, a_lti if time_invariant else _f32(a))
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
