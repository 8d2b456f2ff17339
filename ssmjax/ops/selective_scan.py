"""Mamba-1 selective scan: a diagonal SSM whose ``dt``, ``B`` and ``C`` depend on the input.

One public function, :func:`selective_scan`, with the semantics of mamba_ssm's
``selective_scan_ref`` (``mamba_ssm/ops/selective_scan_interface.py``)::

    dt  = softplus(dt + dt_bias)            # bias and softplus optional
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t      # ZOH for A, Euler for B
    y_t = <C_t, h_t> + D * x_t
    y   = y * silu(z)                       # optional gate

Implementations behind the ``implementation=`` switch (see :mod:`ssmjax.ops._dispatch`):

* ``"sequential"`` — ``lax.scan`` over time; the reference. Its backward pass stores the
  ``(b, d, n)`` state of every step.
* ``"associative"`` — materialises ``exp(dt A)`` and ``dt B x`` as ``(b, l, d, n)`` and runs
  :func:`ssmjax.ops.linear_recurrence` (``"associative"``), whose custom VJP keeps only the
  decays and states for the backward pass. Memory ``O(b l d n)``; the fastest forward pass
  on long sequences, but its backward pass is slower than the chunked one.
* ``"chunked"`` — a loop over chunks of ``chunk_size`` steps carrying the ``(b, d, n)``
  state, with everything fused per chunk (dt bias and softplus, states by an associative
  scan, contraction with ``C``, ``D`` and the gate), so only ``y`` leaves a chunk. Its
  hand-written VJP (the design of Mamba's CUDA backward) saves only each chunk's entry
  state, recomputes the chunk's states, and runs the adjoint recurrence as a reverse
  associative scan. Training memory: the inputs and their gradients, ``l / chunk_size``
  states and one chunk's ``(b, chunk_size, d, n)`` work space -- never ``O(b l d n)``.
  It supports reverse-mode differentiation (``jax.grad``, ``jax.vjp``), not ``jax.jvp``.

* ``"pallas"`` — the fused Pallas kernels of :mod:`pallas_kernels.selective_scan`
  (forward and backward; the state stays in registers; on H100/H200 both are Mosaic GPU
  kernels with their inputs staged by TMA and the backward keeps one state per 16 steps,
  elsewhere Triton kernels, one state per 4 steps at ``n = 16``). On a machine without a GPU
  an explicit request runs it in the Pallas interpreter (slow; for tests).

The automatic choice (``implementation=None``) is ``"associative"`` for sequences of at
most :data:`AUTO_CHUNKED_MIN_LENGTH` steps and ``"chunked"`` above, preceded on a GPU by
``"pallas"`` (which raises ``NotImplementedError``, so the chain falls through, for the
dtypes and shapes it is not tested on).

All arithmetic is float32 (float64 for float64 inputs) whatever the input dtype; ``y`` is
returned in ``x.dtype`` and the final state in the compute dtype.

Compiled temporaries of ``jax.grad`` at ``(b, l, d, n) = (2, 4096, 256, 16)``, fp32, where
one ``(b, l, d, n)`` array is 134 MB: ``"chunked"`` (``chunk_size=64``) 26 MB on CPU and
9 MB on an H100; ``"associative"`` 2.0 GB on CPU and 277 MB on an H100.
"""

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ssmjax.ops._dispatch import dispatch, on_gpu
from ssmjax.ops.scan import linear_recurrence

__all__ = ["AUTO_CHUNKED_MIN_LENGTH", "DEFAULT_CHUNK_SIZE", "selective_scan"]

#: Default number of time steps per chunk of the ``"chunked"`` implementation.
#: On an H100 (bf16, d=1024, n=16, fwd+bwd) 128 was the fastest of 64/128/256 at l=512 and
#: within 11% (l=2048, where 256 wins) to 24% (l=128, where 64 wins) of the best, with half
#: the work space of 256. Pass ``chunk_size`` to trade memory for speed.
DEFAULT_CHUNK_SIZE = 128

#: The automatic choice uses ``"chunked"`` for sequences longer than this, else
#: ``"associative"``. Up to one default chunk the two do the same work (H100, bf16,
#: d=1024, n=16, fwd+bwd, b=16: 0.92 vs 0.90 ms at l=64, 1.8 vs 1.8 ms at l=128); beyond it
#: the chunked form wins in time and memory (b=8, l=512: 2.6 vs 4.2 ms; b=4, l=2048: 5.6 vs
#: 8.2-9.5 ms, with 128 MB vs 1.2 GB of temporaries). The associative forward pass alone
#: is 10-25% faster at l=2048, at O(b l d n) memory.
AUTO_CHUNKED_MIN_LENGTH = 128


# ----------------------------------------------------------------------------------------
# Implementations. All take the validated inputs in their own dtypes and layouts:
#   x, dt, z: (b, l, d); B, C: (b, l, n) or (b, l, g_B, n) / (b, l, g_C, n); D, dt_bias: (d,)
#   and A: (d, n), h0: (b, d, n) already in the compute dtype
# and return y: (b, l, d) in x.dtype and the final state h: (b, d, n).
# Internally channels are grouped, d = g * k with g the lcm of the B and C group counts
# and channel i in group i // k: x is viewed as (b, l, g, k), A as (g, k, n) and the state
# as (b, g, k, n), so a group's B/C row (b, l, g, n) broadcasts over its k channels.
# ----------------------------------------------------------------------------------------


def _group_count(B, C) -> int:
    g_b = 1 if B.ndim == 3 else B.shape[2]
    g_c = 1 if C.ndim == 3 else C.shape[2]
    return g_b * g_c // math.gcd(g_b, g_c)


def _grouped(v, g):
    """``(..., d) -> (..., g, d // g)``; ``None`` stays ``None``."""
    return None if v is None else v.reshape(*v.shape[:-1], g, v.shape[-1] // g)


def _bc_grouped(v, g):
    """B or C, ``(b, t, n)`` or ``(b, t, g_v, n)``, as ``(b, t, g, n)``."""
    if v.ndim == 3:
        v = v[:, :, None]
    return v if v.shape[2] == g else jnp.repeat(v, g // v.shape[2], axis=2)


def _bc_ungrouped(dv, like):
    """The transpose of :func:`_bc_grouped`: ``(b, t, g, n)`` summed to ``like``'s groups."""
    b, t, g, n = dv.shape
    g_v = 1 if like.ndim == 3 else like.shape[2]
    dv = dv.reshape(b, t, g_v, g // g_v, n).sum(axis=3)
    return dv[:, :, 0] if like.ndim == 3 else dv


def _contract(h, C):
    """``y[..., k] = sum_n h[..., k, n] * C[..., n]``: h (..., g, k, n), C (..., g, n)."""
    # A multiply-and-reduce rather than a dot: exact fp32 on every backend (no TF32), and
    # XLA fuses it with the producer of h.
    return jnp.sum(h * jnp.expand_dims(C, -2), axis=-1)


def _discretize(x, dt, A, B):
    """``(exp(dt A), dt B x)``, each ``(b, l, g, k, n)`` (or without l for one step)."""
    dA = jnp.exp(dt[..., None] * A)
    dBx = (dt * x)[..., None] * jnp.expand_dims(B, -2)
    return dA, dBx


def _time_dims(v, ndim):
    """Prepends unit axes to a per-channel array so it broadcasts at rank ``ndim``."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _prepare_dt(dt, dt_bias, softplus, dtype):
    """``(dt + dt_bias, softplus(dt + dt_bias))`` in ``dtype`` (bias and softplus optional)."""
    raw = dt.astype(dtype)
    if dt_bias is not None:
        raw = raw + _time_dims(dt_bias.astype(dtype), raw.ndim)
    return raw, (jax.nn.softplus(raw) if softplus else raw)


def _finish(y, x, D, z):
    """``(y + D x) * silu(z)`` (each part optional), in ``y``'s dtype."""
    if D is not None:
        y = y + _time_dims(D.astype(y.dtype), x.ndim) * x
    if z is not None:
        y = y * jax.nn.silu(z.astype(y.dtype))
    return y


def _unfused(core):
    """An implementation from ``core(x, dt, A, B, C, h0) -> (y, h_last)`` on grouped arrays.

    Bias, softplus, ``D`` and the gate are plain JAX around the core, differentiated by
    autodiff.
    """

    def implementation(x, dt, A, B, C, D, z, dt_bias, h0, *, softplus, chunk_size):
        del chunk_size
        dtype = h0.dtype
        g = _group_count(B, C)
        xf = x.astype(dtype)
        _, dtf = _prepare_dt(dt, dt_bias, softplus, dtype)
        y, h = core(
            _grouped(xf, g),
            _grouped(dtf, g),
            A.reshape(g, -1, A.shape[1]),
            _bc_grouped(B, g).astype(dtype),
            _bc_grouped(C, g).astype(dtype),
            h0.reshape(h0.shape[0], g, -1, h0.shape[2]),
        )
        y = _finish(y.reshape(x.shape), xf, D, z)
        return y.astype(x.dtype), h.reshape(h0.shape)

    return implementation


def _sequential_core(x, dt, A, B, C, h0):
    def step(h, inputs):
        x_t, dt_t, B_t, C_t = inputs
        dA, dBx = _discretize(x_t, dt_t, A[None], B_t)
        h = dA * h + dBx
        return h, _contract(h, C_t)

    xs = tuple(jnp.moveaxis(v, 1, 0) for v in (x, dt, B, C))
    h, y = lax.scan(step, h0, xs)
    return jnp.moveaxis(y, 0, 1), h


def _associative_core(x, dt, A, B, C, h0):
    dA, dBx = _discretize(x, dt, A[None, None], B)
    h = linear_recurrence(dA, dBx, h0, implementation="associative")
    return _contract(h, C), h[:, -1]


def _combine(left, right):
    """Composes ``h -> a h + b`` maps: first ``left``, then ``right``."""
    a_l, b_l = left
    a_r, b_r = right
    return a_r * a_l, a_r * b_l + b_r


# --- "chunked": fused per chunk, with a hand-written VJP ---------------------------------
# The loops slice chunks straight out of the caller's (b, l, d) arrays and write y and the
# gradients into (b, l, d) buffers in place, so no transposed or padded copy of a
# sequence-sized array is made.


class _Inputs(NamedTuple):
    x: jax.Array
    dt: jax.Array
    A: jax.Array
    B: jax.Array
    C: jax.Array
    D: jax.Array | None
    z: jax.Array | None
    dt_bias: jax.Array | None
    h0: jax.Array | None


def _slice(v, start, size):
    return None if v is None else lax.dynamic_slice_in_dim(v, start, size, axis=1)


def _put(buf, v, start):
    return lax.dynamic_update_slice_in_dim(buf, v.astype(buf.dtype), start, axis=1)


def _grouped_params(p: _Inputs, g):
    """A as ``(g, k, n)``; D and dt_bias as ``(g, k)`` in the compute dtype (or None)."""
    dtype = p.A.dtype
    A = p.A.reshape(g, -1, p.A.shape[1])
    D, bias = (None if v is None else _grouped(v.astype(dtype), g) for v in (p.D, p.dt_bias))
    return A, D, bias


def _chunk_forward(p: _Inputs, g, softplus, start, size, h_in):
    """One chunk ``[start, start + size)`` from its entry state ``h_in`` (b, g, k, n)."""
    dtype = h_in.dtype
    A, D, bias = _grouped_params(p, g)
    x = _grouped(_slice(p.x, start, size), g).astype(dtype)
    dt_raw, dt = _prepare_dt(_grouped(_slice(p.dt, start, size), g), bias, softplus, dtype)
    B = _bc_grouped(_slice(p.B, start, size), g).astype(dtype)
    C = _bc_grouped(_slice(p.C, start, size), g).astype(dtype)
    a, u = _discretize(x, dt, A[None, None], B)  # (b, size, g, k, n)
    # Fold the entry state into step 0. (Adding a_prod * h_in after the scan instead keeps
    # the scan's products alive and was ~2x slower on an H100.)
    u = u.at[:, 0].add(a[:, 0] * h_in)
    _, hs = lax.associative_scan(_combine, (a, u), axis=1)
    z = None if p.z is None else _grouped(_slice(p.z, start, size), g).astype(dtype)
    return {"x": x, "dt_raw": dt_raw, "dt": dt, "B": B, "C": C, "z": z, "a": a, "hs": hs, "D": D}


def _chunked_forward(c, g, softplus, p: _Inputs, save_states: bool):
    """Runs the chunks in order; returns ``y``, the final state and the entry states."""
    b, length, d = p.x.shape
    n_full, tail = divmod(length, c)
    h0 = p.h0.reshape(b, g, d // g, -1)
    entry = jnp.zeros(((n_full + (tail > 0)) if save_states else 0, *h0.shape), h0.dtype)

    def run(start, size, h, y, entry, i):
        if save_states:
            entry = lax.dynamic_update_index_in_dim(entry, h, i, axis=0)
        f = _chunk_forward(p, g, softplus, start, size, h)
        y_c = _finish(_contract(f["hs"], f["C"]), f["x"], f["D"], f["z"])
        return f["hs"][:, -1], _put(y, y_c.reshape(b, size, d), start), entry

    def body(i, carry):
        return run(i * c, c, *carry, i)

    carry = lax.fori_loop(0, n_full, body, (h0, jnp.zeros(p.x.shape, p.x.dtype), entry))
    if tail:
        carry = run(n_full * c, tail, *carry, n_full)
    h, y, entry = carry
    return y, h.reshape(p.h0.shape), entry


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _chunked_scan(c, g, softplus, p: _Inputs):
    y, h, _ = _chunked_forward(c, g, softplus, p, save_states=False)
    return y, h


def _chunked_scan_fwd(c, g, softplus, p: _Inputs):
    y, h, entry = _chunked_forward(c, g, softplus, p, save_states=True)
    return (y, h), (p._replace(h0=None), entry)


def _chunked_scan_bwd(c, g, softplus, residuals, cotangents):
    # Per chunk, last first: recompute the states from the saved entry state, then run the
    # adjoint recurrence adj_t = C_t dy_t + a_{t+1} adj_{t+1} (adj_t = dL/dh_t in total) as
    # a reverse associative scan. With a_t = exp(dt_t A) and u_t = dt_t B_t x_t:
    # dL/du_t = adj_t, dL/da_t = adj_t h_{t-1}, and the entry state's cotangent is
    # a_0 adj_0. D, the gate, the bias and the softplus are differentiated in the same pass.
    p, entry = residuals
    dy, dh = cotangents
    dtype = entry.dtype
    b, length, d = p.x.shape
    n_full, tail = divmod(length, c)
    A, _, _ = _grouped_params(p, g)

    def run(start, size, carry, i):
        dh, bufs, sums = carry
        h_in = entry[i]
        f = _chunk_forward(p, g, softplus, start, size, h_in)
        x, dt, a, hs = f["x"], f["dt"], f["a"], f["hs"]
        dy_c = _grouped(_slice(dy, start, size), g).astype(dtype)
        bufs, sums = dict(bufs), dict(sums)
        put = lambda name, v: _put(bufs[name], v.reshape(b, size, -1), start)
        if f["z"] is not None:
            z = f["z"]
            y_pre = _finish(_contract(hs, f["C"]), x, f["D"], None)
            sig = jax.nn.sigmoid(z)
            bufs["z"] = put("z", dy_c * y_pre * sig * (1 + z * (1 - sig)))
            dy_c = dy_c * z * sig
        dx = jnp.zeros_like(x)
        if f["D"] is not None:
            sums["D"] = sums["D"] + jnp.sum(dy_c * x, axis=(0, 1))
            dx = dy_c * _time_dims(f["D"], x.ndim)
        g_y = dy_c[..., None] * jnp.expand_dims(f["C"], -2)  # (b, size, g, k, n)
        g_y = g_y.at[:, -1].add(dh)  # the exit state's cotangent
        a_next = jnp.concatenate([a[:, 1:], jnp.ones_like(a[:, :1])], axis=1)
        _, adj = lax.associative_scan(_combine, (a_next, g_y), axis=1, reverse=True)
        h_prev = jnp.concatenate([h_in[:, None], hs[:, :-1]], axis=1)
        da_a = adj * h_prev * a  # dL/d(dt A)
        adj_b = jnp.sum(adj * jnp.expand_dims(f["B"], -2), axis=-1)  # (b, size, g, k)
        ddt = x * adj_b + jnp.sum(da_a * A[None, None], axis=-1)
        sums["A"] = sums["A"] + jnp.sum(da_a * dt[..., None], axis=(0, 1))
        if softplus:
            ddt = ddt * jax.nn.sigmoid(f["dt_raw"])
        if p.dt_bias is not None:
            sums["dt_bias"] = sums["dt_bias"] + jnp.sum(ddt, axis=(0, 1))
        bufs["x"] = put("x", dx + dt * adj_b)
        bufs["dt"] = put("dt", ddt)
        dB = jnp.sum(adj * (dt * x)[..., None], axis=-2)  # (b, size, g, n)
        bufs["B"] = _put(bufs["B"], _bc_ungrouped(dB, p.B), start)
        dC = jnp.sum(dy_c[..., None] * hs, axis=-2)
        bufs["C"] = _put(bufs["C"], _bc_ungrouped(dC, p.C), start)
        return a[:, 0] * adj[:, 0], bufs, sums

    given = {k: v for k, v in p._asdict().items() if v is not None}
    bufs = {k: jnp.zeros_like(v) for k, v in given.items() if k in ("x", "dt", "B", "C", "z")}
    sums = {"A": jnp.zeros(A.shape, dtype)}
    sums.update({k: jnp.zeros((g, d // g), dtype) for k in ("D", "dt_bias") if k in given})
    carry = (dh.astype(dtype).reshape(entry.shape[1:]), bufs, sums)
    if tail:
        carry = run(n_full * c, tail, carry, n_full)

    def body(j, carry):
        i = n_full - 1 - j
        return run(i * c, c, carry, i)

    dh0, bufs, sums = lax.fori_loop(0, n_full, body, carry)
    grads = {**bufs, "h0": dh0.reshape(b, d, -1)}
    for k, v in sums.items():
        grads[k] = v.reshape(getattr(p, k).shape).astype(getattr(p, k).dtype)
    return (_Inputs(**{k: grads.get(k) for k in _Inputs._fields}),)


_chunked_scan.defvjp(_chunked_scan_fwd, _chunked_scan_bwd)


def _chunked(x, dt, A, B, C, D, z, dt_bias, h0, *, softplus, chunk_size):
    c = min(chunk_size, x.shape[1])
    p = _Inputs(x, dt, A, B, C, D, z, dt_bias, h0)
    return _chunked_scan(c, _group_count(B, C), softplus, p)


def _pallas(x, dt, A, B, C, D, z, dt_bias, h0, *, softplus, chunk_size):
    del chunk_size
    try:
        from pallas_kernels import selective_scan as _kernel
    except ImportError as e:
        raise NotImplementedError(f"the Pallas selective_scan kernel is not available ({e})") from e
    return _kernel.selective_scan(
        x, dt, A, B, C, D, z, dt_bias, softplus,
        h0=h0, return_final_state=True, interpret=not on_gpu(),
    )  # fmt: skip


#: Every implementation by name; the dispatcher picks one (see module docstring).
IMPLEMENTATIONS = {
    "sequential": _unfused(_sequential_core),
    "associative": _unfused(_associative_core),
    "chunked": _chunked,
    "pallas": _pallas,
}


def _auto_chain(length: int) -> tuple[str, ...]:
    xla = ("chunked",) if length > AUTO_CHUNKED_MIN_LENGTH else ("associative",)
    return ("pallas", *xla) if on_gpu() else xla


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def _check_bc(name, v, b, length, n, d):
    """Checks the shape of B or C: ``(b, l, n)`` or ``(b, l, g, n)`` with ``d % g == 0``."""
    if v.ndim not in (3, 4) or v.shape[:2] != (b, length) or v.shape[-1] != n:
        raise ValueError(
            f"{name} must have shape (b, l, n) = {(b, length, n)} or (b, l, g, n) = "
            f"{(b, length, 'g', n)}; got {v.shape}"
        )
    g = 1 if v.ndim == 3 else v.shape[2]
    if g < 1 or d % g:
        raise ValueError(f"the group count g={g} of {name} must divide d={d}")


def _check_floating(name, v):
    if not jnp.issubdtype(v.dtype, jnp.floating):
        raise ValueError(f"{name} must be a real floating array; got dtype {v.dtype}")


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
    implementation: str | Sequence[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Mamba-1 selective scan (semantics of mamba_ssm's ``selective_scan_ref``).

    Computes, per channel ``i`` and state ``j``::

        dt_t  = softplus(dt_t + dt_bias)   (bias / softplus only when given / requested)
        h_t   = exp(dt_t A_ij) h_{t-1} + dt_t B_tj x_t
        y_t   = sum_j C_tj h_tj + D_i x_t
        y_t  *= silu(z_t)                  (when z is given)

    Args:
      x: input ``(b, l, d)``.
      dt: time steps ``(b, l, d)`` (before ``dt_bias`` and softplus).
      A: state matrix, real, ``(d, n)`` (negative for a stable scan; Mamba uses
        ``-exp(A_log)``).
      B: input matrix, ``(b, l, n)`` shared by all channels or ``(b, l, g, n)`` in ``g``
        groups with ``d % g == 0``; channel ``i`` uses group ``i // (d // g)``.
      C: output matrix, same layouts as ``B`` (its group count may differ from ``B``'s).
      D: skip connection ``(d,)``, or ``None``.
      z: gate ``(b, l, d)``: the output is multiplied by ``silu(z)``; or ``None``.
      dt_bias: ``(d,)`` added to ``dt`` before the softplus, or ``None``.
      dt_softplus: apply ``softplus`` to ``dt`` (after ``dt_bias``).
      h0: initial state ``(b, d, n)``; zeros when ``None``.
      return_final_state: also return the last state.
      implementation: ``"sequential"``, ``"associative"``, ``"chunked"``, ``"pallas"``, a
        fallback chain of those, or ``None``: on a GPU ``"pallas"`` where the kernel applies,
        else ``"chunked"`` for ``l >`` :data:`AUTO_CHUNKED_MIN_LENGTH` (128),
        ``"associative"`` otherwise.
      chunk_size: time steps per chunk of ``"chunked"`` (ignored by the others); any
        ``l`` works, the last chunk may be shorter. Larger is faster on a GPU and needs a
        larger ``(b, chunk_size, d, n)`` work space.

    Returns:
      ``y`` of shape ``(b, l, d)`` in ``x.dtype``; with ``return_final_state``, the pair
      ``(y, h_last)`` with ``h_last`` of shape ``(b, d, n)`` in float32 (float64 for float64
      inputs). All arithmetic is float32 or wider, whatever the input dtype.

    Raises:
      ValueError: inconsistent shapes, non-floating inputs, or an unknown implementation.
      NotImplementedError: the requested implementation cannot run on these inputs.

    Differentiation: every implementation supports ``jax.grad``/``jax.vjp`` w.r.t. all
    array inputs. ``"associative"`` and ``"chunked"`` have custom VJPs, so forward mode
    (``jax.jvp``, ``jax.jacfwd``) needs ``implementation="sequential"``.

    >>> import jax.numpy as jnp
    >>> b, l, d, n = 1, 3, 2, 4
    >>> x = jnp.ones((b, l, d))
    >>> dt = jnp.full((b, l, d), 0.5)
    >>> A = -jnp.ones((d, n))
    >>> B = C = jnp.ones((b, l, n))
    >>> y, h = selective_scan(x, dt, A, B, C, D=jnp.ones(d), return_final_state=True)
    >>> y.shape, h.shape
    ((1, 3, 2), (1, 2, 4))
    >>> # h_1 = 0.5, h_t = exp(-0.5) h_{t-1} + 0.5 for each of the 4 states; y = 4 h + x
    >>> y[0, :, 0].round(4)
    Array([3.    , 4.2131, 4.9488], dtype=float32)
    """
    x, dt, A, B, C = (jnp.asarray(v) for v in (x, dt, A, B, C))
    if x.ndim != 3:
        raise ValueError(f"x must have shape (b, l, d); got {x.shape}")
    b, length, d = x.shape
    if dt.shape != x.shape:
        raise ValueError(f"dt must have the shape of x {x.shape} (b, l, d); got {dt.shape}")
    if A.ndim != 2 or A.shape[0] != d:
        raise ValueError(f"A must have shape (d, n) with d={d}; got {A.shape}")
    n = A.shape[1]
    _check_bc("B", B, b, length, n, d)
    _check_bc("C", C, b, length, n, d)
    optional = {"D": D, "z": z, "dt_bias": dt_bias, "h0": h0}
    shapes = {"D": (d,), "z": (b, length, d), "dt_bias": (d,), "h0": (b, d, n)}
    for name, v in optional.items():
        if v is not None:
            optional[name] = v = jnp.asarray(v)
            if v.shape != shapes[name]:
                raise ValueError(f"{name} must have shape {shapes[name]}; got {v.shape}")
    D, z, dt_bias, h0 = optional.values()
    for name, v in {"x": x, "dt": dt, "A": A, "B": B, "C": C, **optional}.items():
        if v is not None:
            _check_floating(name, v)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")

    dtype = jnp.result_type(x.dtype, jnp.float32)
    h0 = jnp.zeros((b, d, n), dtype) if h0 is None else h0.astype(dtype)
    if length == 0:
        _check_names(implementation)
        y, h_last = x, h0
    else:
        y, h_last = dispatch(
            "selective_scan",
            implementation,
            IMPLEMENTATIONS,
            _auto_chain(length),
            x,
            dt,
            A.astype(dtype),
            B,
            C,
            D,
            z,
            dt_bias,
            h0,
            softplus=bool(dt_softplus),
            chunk_size=chunk_size,
        )
    if return_final_state:
        return y, h_last
    return y


def _check_names(implementation) -> None:
    names = (implementation,) if isinstance(implementation, str) else (implementation or ())
    for name in names:
        if name not in IMPLEMENTATIONS:
            raise ValueError(
                f"selective_scan: unknown implementation {name!r}; "
                f"choose from {sorted(IMPLEMENTATIONS)}"
            )
