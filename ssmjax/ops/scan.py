"""Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``: the core of every SSM here.

One public function, :func:`linear_recurrence`, with several implementations behind the
``implementation=`` switch (see :mod:`ssmjax.ops._dispatch`):

* ``"sequential"`` — ``lax.scan`` over time with native (complex) arithmetic. The reference:
  slow on accelerators, obviously right, differentiated by plain autodiff.
* ``"associative"`` — ``lax.associative_scan`` over the whole sequence (O(log l) depth).
* ``"chunked"`` — ``lax.scan`` over chunks of ``chunk_size`` steps with an associative scan
  inside each chunk: the same depth per chunk, no ``(levels, b, l, *s)`` intermediates, and
  a small compiled program.
* ``"pallas"`` — a GPU kernel, added by :mod:`pallas_kernels`. A time-invariant ``a``
  (``(*s)`` or ``(b, *s)``, with no ``reset``) reaches it un-broadcast, and the kernel
  never materialises a ``(b, l, *s)`` copy of it.

The associative and chunked forms share one custom VJP: the gradient of a linear
recurrence is the same recurrence run the other way over the output cotangents, so only
``a`` and ``h`` are kept for the backward pass instead of every level of the scan.

Complex numbers stay native complex64 inside these XLA scans. Carrying them as separate
real/imaginary planes (the usual workaround for slow compilation of complex associative
scans) was measured and is *slower* to compile on JAX 0.10/0.11: a 6-layer complex model,
forward+backward, compiled in 2.0 s native vs 8.6 s with planes on a 2-core CPU, and the
planes version was 1.5x slower to compile on an H100 too (``BENCHMARKS.md``). Only the
Pallas kernel, which has no complex dtype, works on planes: :func:`linear_recurrence`
splits complex inputs for it and merges ``h``, while :func:`linear_recurrence_planes` takes
``b`` and returns ``h`` as planes so no complex sequence is copied (the S5/LRU/S4D layers
use it when the kernel is tried first). On the H100 at (8, 4096, 1024), forward +
backward, device time: 4.4x (time-varying ``a``) and 3.7x (time-invariant) faster than the
associative form with planes, 1.9x and 1.6x with complex in/out, where XLA's split and merge
cost more than the kernel (``BENCHMARKS.md``, 2026-12-07).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssmjax.ops._dispatch import dispatch, on_gpu

__all__ = ["linear_recurrence", "linear_recurrence_planes"]

#: Default number of time steps per chunk of the ``"chunked"`` implementation.
DEFAULT_CHUNK_SIZE = 128


def _combine(left, right):
    """Composes two affine maps ``h -> a h + b``: first ``left``, then ``right``."""
    (a_l, b_l), (a_r, b_r) = left, right
    return a_r * a_l, a_r * b_l + b_r


def _fold_h0(a, b, h0, axis: int, reverse: bool):
    """Folds the initial state into the first input (in scan order): ``b_0 += a_0 h0``."""
    idx = b.shape[axis] - 1 if reverse else 0
    first = lambda x: lax.index_in_dim(x, idx, axis, keepdims=False)
    return lax.dynamic_update_index_in_dim(b, first(a) * h0 + first(b), idx, axis)


# ----------------------------------------------------------------------------------------
# Implementations. All take full-shape a, b (b, l, *s) and h0 (b, *s) in the compute dtype.
# ----------------------------------------------------------------------------------------


def _sequential(a, b, h0, *, reverse: bool):
    def step(h, ab):
        a_t, b_t = ab
        h = a_t * h + b_t
        return h, h

    xs = (jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0))
    _, h = lax.scan(step, h0, xs, reverse=reverse)
    return jnp.moveaxis(h, 0, 1)


def _associative(a, b, h0, *, reverse: bool):
    b = _fold_h0(a, b, h0, axis=1, reverse=reverse)
    return lax.associative_scan(_combine, (a, b), reverse=reverse, axis=1)[1]


def _chunked(a, b, h0, *, reverse: bool, chunk_size: int):
    length = a.shape[1]
    c = max(1, min(chunk_size, length))
    n_chunks = -(-length // c)
    pad = n_chunks * c - length
    if pad:
        # Identity steps (a=1, b=0) placed where the scan ends, so they change nothing.
        widths = [(0, 0)] * a.ndim
        widths[1] = (pad, 0) if reverse else (0, pad)
        a = jnp.pad(a, widths, constant_values=1)
        b = jnp.pad(b, widths)

    def to_chunks(x):  # (b, l, *s) -> (n_chunks, b, c, *s)
        x = x.reshape(x.shape[0], n_chunks, c, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    def body(h, ab):
        h_c = _associative(*ab, h, reverse=reverse)
        return h_c[:, 0 if reverse else c - 1], h_c

    _, h = lax.scan(body, h0, (to_chunks(a), to_chunks(b)), reverse=reverse)
    h = jnp.moveaxis(h, 0, 1).reshape(h.shape[1], n_chunks * c, *h.shape[3:])
    if pad:
        h = h[:, pad:] if reverse else h[:, :length]
    return h


def _shift(x, reverse: bool):
    """``y_t = x_{t+1}`` (``x_{t-1}`` if reverse) along axis 1, zero-filled at the edge."""
    widths = [(0, 0)] * x.ndim
    if reverse:
        widths[1] = (1, 0)
        return jnp.pad(x, widths)[:, :-1]
    widths[1] = (0, 1)
    return jnp.pad(x, widths)[:, 1:]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 4))
def _recurrence_vjp(scan_fn, a, b, h0, reverse):
    return scan_fn(a, b, h0, reverse=reverse)


def _recurrence_fwd(scan_fn, a, b, h0, reverse):
    h = scan_fn(a, b, h0, reverse=reverse)
    return h, (a, h, h0)


def _recurrence_bwd(scan_fn, reverse, residuals, dh):
    # Forward (reverse=False): h_t = a_t h_{t-1} + b_t. With g_t = dL/db_t (the total
    # cotangent reaching h_t), g_t = dh_t + a_{t+1} g_{t+1}: the same recurrence run the
    # other way, with `a` shifted by one step. Then da_t = g_t h_{t-1}, dh0 = a_0 g_0.
    # JAX's convention for complex cotangents is the transpose (no conjugation).
    a, h, h0 = residuals
    dh = dh.astype(h.dtype)
    g = scan_fn(_shift(a, reverse), dh, jnp.zeros_like(h0), reverse=not reverse)
    h_prev = _shift(h, not reverse)
    edge = -1 if reverse else 0
    h_prev = h_prev.at[:, edge].set(h0.astype(h.dtype))
    da = g * h_prev
    dh0 = a[:, edge] * g[:, edge]
    return da.astype(a.dtype), g.astype(h.dtype), dh0.astype(h0.dtype)


_recurrence_vjp.defvjp(_recurrence_fwd, _recurrence_bwd)


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


# The `_impl_*` entry points take `a` of rank b.ndim with size-1 axes not yet broadcast
# (e.g. (1, 1, *s) for a time-invariant decay): the XLA forms broadcast it themselves, the
# Pallas kernel keeps a time-invariant `a` compact.


def _impl_sequential(a, b, h0, reverse, chunk_size):
    a = jnp.broadcast_to(a, b.shape)
    return _sequential(a, b, h0, reverse=reverse)


def _impl_associative(a, b, h0, reverse, chunk_size):
    a = jnp.broadcast_to(a, b.shape)
    return _recurrence_vjp(_associative, a, b, h0, reverse)


def _impl_chunked(a, b, h0, reverse, chunk_size):
    a = jnp.broadcast_to(a, b.shape)
    return _recurrence_vjp(_chunked_fn(chunk_size), a, b, h0, reverse)


@functools.cache
def _chunked_fn(chunk_size: int):
    # Cached so the custom_vjp's non-differentiable argument is the same object per size.
    return functools.partial(_chunked, chunk_size=chunk_size)


def _impl_pallas(a, b, h0, reverse, chunk_size):
    # `a` passes through un-broadcast: a time-invariant (Ba, 1, *s) decay takes the kernel's
    # compact path (no (b, l, *s) copy of `a`).
    try:
        from pallas_kernels import linear_scan as _kernel
    except ImportError as e:  # the kernel module is added by a later release
        raise NotImplementedError(f"the Pallas linear_scan kernel is not available ({e})") from e
    return _kernel.linear_scan(a, b, h0, reverse=reverse, interpret=not on_gpu())


IMPLEMENTATIONS = {
    "sequential": _impl_sequential,
    "associative": _impl_associative,
    "chunked": _impl_chunked,
    "pallas": _impl_pallas,
}


def _auto_chain(length: int) -> tuple[str, ...]:
    if on_gpu():
        # Measured on an H100 (BENCHMARKS.md): the associative form beats the chunked one
        # at every tested shape; the chunked form is the low-memory choice.
        return ("pallas", "associative")
    # On CPU a plain loop wins: the associative forms do ~2x the arithmetic.
    return ("sequential",)


def _compute_dtype(*xs) -> jnp.dtype:
    dtype = jnp.result_type(*xs)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.result_type(dtype, jnp.complex64)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"linear_recurrence needs floating or complex inputs, got {dtype}")
    return jnp.result_type(dtype, jnp.float32)


def _expand_a(a: jax.Array, b: jax.Array) -> jax.Array:
    """Brings ``a`` to rank ``b.ndim`` by the documented rules, without broadcasting.

    Args:
      a: ``(b, l, *s)`` (any axis may be 1), ``(b, *s)`` or ``(*s)``.
      b: the inputs, ``(b, l, *s)``.

    Returns:
      ``a`` of rank ``b.ndim``, e.g. ``(1, 1, *s)`` for ``(*s)`` and ``(b, 1, *s)`` for
      ``(b, *s)``, that broadcasts to ``b.shape``.

    Raises:
      ValueError: ``a`` has another rank or does not broadcast to ``b.shape``.
    """
    n_state = b.ndim - 2
    if a.ndim == n_state:  # time-invariant, shared over the batch: (*s)
        a = a[None, None]
    elif a.ndim == n_state + 1:  # time-invariant per sequence: (b, *s)
        a = a[:, None]
    elif a.ndim != b.ndim:
        raise ValueError(
            f"a must have shape (b, l, *s), (b, *s) or (*s) for b of shape {b.shape}; "
            f"got a of shape {a.shape}"
        )
    try:
        ok = np.broadcast_shapes(a.shape, b.shape) == b.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"a of shape {a.shape} does not broadcast to b {b.shape}")
    return a


def _check_args(b_shape: tuple[int, ...], h0, reset, chunk_size):
    """Validates the arguments both entry points share; returns ``(h0, reset)`` as arrays
    (``None`` stays ``None``)."""
    state_shape = (b_shape[0], *b_shape[2:])
    if h0 is not None:
        h0 = jnp.asarray(h0)
        if h0.shape != state_shape:
            raise ValueError(f"h0 must have shape {state_shape} (b, *s); got {h0.shape}")
    if reset is not None:
        reset = jnp.asarray(reset)
        if reset.shape != b_shape[:2]:
            raise ValueError(f"reset must have shape (b, l) = {b_shape[:2]}; got {reset.shape}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    return h0, reset


def linear_recurrence(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array | None = None,
    *,
    reverse: bool = False,
    reset: jax.Array | None = None,
    implementation: str | Sequence[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    r"""Computes ``h_t = a_t * h_{t-1} + b_t`` along axis 1 (time).

    Args:
      a: decay, real or complex, of shape ``(b, l, *s)`` (time-varying; any axis may be 1 and
        broadcast), ``(b, *s)`` (time-invariant per sequence) or ``(*s)`` (time-invariant,
        shared by the batch — S4D/S5/LRU).
      b: input, real or complex, ``(b, l, *s)``.
      h0: initial state ``(b, *s)``; zeros when ``None``. With ``reverse=True`` it is the
        state "after" the last step.
      reverse: scan from the end: ``h_t = a_t * h_{t+1} + b_t``.
      reset: optional bool ``(b, l)``. Where True, the state is reset before step ``t`` in
        scan order, i.e. ``h_t = b_t`` (``a_t`` and ``h0`` are ignored there). Use it to
        restart packed sequences, or for a reverse scan over a suffix-padded batch, put True
        at each sequence's last real token.
      implementation: ``"sequential"``, ``"associative"``, ``"chunked"``, ``"pallas"``, a
        fallback chain of those, or ``None`` for the automatic choice (the Pallas kernel on
        a GPU where it applies, the associative/chunked forms otherwise on accelerators, and
        the plain loop on CPU).
      chunk_size: steps per chunk of the ``"chunked"`` implementation.

    Returns:
      ``h`` of shape ``(b, l, *s)``. The carry is kept in float32 (complex64) or wider:
      bf16/fp16 inputs are computed in float32 and ``h`` is returned in the inputs'
      promoted dtype.

    Raises:
      ValueError: inconsistent shapes or an unknown implementation.
      NotImplementedError: the requested implementation cannot run on these inputs.

    >>> import jax.numpy as jnp
    >>> a = jnp.full((1, 4, 2), 0.5)
    >>> b = jnp.ones((1, 4, 2))
    >>> linear_recurrence(a, b)[0, :, 0]
    Array([1.    , 1.5   , 1.75  , 1.875], dtype=float32)
    >>> linear_recurrence(0.5 * jnp.ones(2), b, reverse=True)[0, :, 0]  # time-invariant a
    Array([1.875, 1.75 , 1.5  , 1.   ], dtype=float32)
    """
    b = jnp.asarray(b)
    a = jnp.asarray(a)
    if b.ndim < 2:
        raise ValueError(f"b must have shape (batch, length, *state); got {b.shape}")
    state_shape = (b.shape[0], *b.shape[2:])
    h0, reset = _check_args(b.shape, h0, reset, chunk_size)
    out_dtype = jnp.result_type(a, b) if h0 is None else jnp.result_type(a, b, h0)
    dtype = _compute_dtype(a, b) if h0 is None else _compute_dtype(a, b, h0)
    # Rank b.ndim, size-1 axes kept: each implementation broadcasts (or not) itself.
    a = _expand_a(a, b).astype(dtype)
    b = b.astype(dtype)
    h0 = jnp.zeros(state_shape, dtype) if h0 is None else h0.astype(dtype)
    if reset is not None:
        reset = reset.reshape(reset.shape + (1,) * (b.ndim - 2))
        a = jnp.where(reset, jnp.zeros((), dtype), a)
    if b.shape[1] == 0:
        return b.astype(out_dtype)
    h = dispatch(
        "linear_recurrence",
        implementation,
        IMPLEMENTATIONS,
        _auto_chain(b.shape[1]),
        a,
        b,
        h0,
        reverse,
        chunk_size,
    )
    return h.astype(out_dtype)


# ----------------------------------------------------------------------------------------
# Complex recurrence on real/imaginary planes
# ----------------------------------------------------------------------------------------


def _planes_via_complex(name: str):
    """An XLA form on planes: merge ``b`` (and ``h0``), run natively complex, split ``h``
    (XLA fuses the merge and split into the neighbouring ops where it can)."""

    def run(a, b_re, b_im, h0, reverse, reset, chunk_size):
        h = linear_recurrence(
            a,
            lax.complex(b_re, b_im),
            h0,
            reverse=reverse,
            reset=reset,
            implementation=name,
            chunk_size=chunk_size,
        )
        return jnp.real(h), jnp.imag(h)

    return run


def _planes_pallas(a, b_re, b_im, h0, reverse, reset, chunk_size):
    try:
        from pallas_kernels import linear_scan as _kernel
    except ImportError as e:
        raise NotImplementedError(f"the Pallas linear_scan kernel is not available ({e})") from e
    # `a` arrives complex64 with b's rank (linear_recurrence_planes expanded it).
    if reset is not None:
        reset = reset.reshape(reset.shape + (1,) * (b_re.ndim - 2))
        a = jnp.where(reset, jnp.zeros((), a.dtype), a)
    h0p = None if h0 is None else (jnp.real(h0), jnp.imag(h0))
    return _kernel.linear_scan_planes(
        (jnp.real(a), jnp.imag(a)), (b_re, b_im), h0p, reverse=reverse, interpret=not on_gpu()
    )


PLANES_IMPLEMENTATIONS = {
    "sequential": _planes_via_complex("sequential"),
    "associative": _planes_via_complex("associative"),
    "chunked": _planes_via_complex("chunked"),
    "pallas": _planes_pallas,
}


def linear_recurrence_planes(
    a: jax.Array,
    b_re: jax.Array,
    b_im: jax.Array,
    h0: jax.Array | None = None,
    *,
    reverse: bool = False,
    reset: jax.Array | None = None,
    implementation: str | Sequence[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[jax.Array, jax.Array]:
    r"""The complex recurrence of :func:`linear_recurrence` with ``b`` and ``h`` as planes.

    Computes ``h = linear_recurrence(a, b_re + 1j * b_im, h0, ...)`` and returns
    ``(Re h, Im h)``. The Pallas kernel reads and writes the planes directly, so no complex
    ``(b, l, *s)`` array is split or merged around it (S5/LRU/S4D layers produce ``B u``
    and consume ``h`` as planes on the GPU); the XLA forms merge and split the planes and
    run natively complex.

    Args:
      a: complex decay, any shape :func:`linear_recurrence` accepts (``(*s)``,
        ``(b, *s)`` or ``(b, l, *s)``).
      b_re: real part of the input, ``(b, l, *s)``, float32 (or bfloat16).
      b_im: imaginary part, same shape and dtype.
      h0: optional complex initial state ``(b, *s)``.
      reverse: scan from the end.
      reset: optional bool ``(b, l)``, as in :func:`linear_recurrence`.
      implementation: as in :func:`linear_recurrence`.
      chunk_size: steps per chunk of the ``"chunked"`` implementation.

    Returns:
      ``(h_re, h_im)``, each ``(b, l, *s)`` float32.

    Raises:
      ValueError: inconsistent shapes or an unknown implementation.
      TypeError: complex or integer planes.

    >>> import jax.numpy as jnp
    >>> b = jnp.ones((1, 3, 1))
    >>> h_re, h_im = linear_recurrence_planes(jnp.array([0.5j]), b, b)
    >>> h_re[0, :, 0], h_im[0, :, 0]
    (Array([1.  , 0.5 , 0.25], dtype=float32), Array([1.  , 1.5 , 1.25], dtype=float32))
    """
    b_re, b_im = jnp.asarray(b_re), jnp.asarray(b_im)
    if b_re.shape != b_im.shape:
        raise ValueError(f"b_re {b_re.shape} and b_im {b_im.shape} must have one shape")
    for x in (b_re, b_im):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"linear_recurrence_planes needs real float planes, got {x.dtype}")
    if b_re.ndim < 2:
        raise ValueError(f"b must have shape (batch, length, *state); got {b_re.shape}")
    dtype = jnp.result_type(b_re, b_im, jnp.float32)
    b_re, b_im = b_re.astype(dtype), b_im.astype(dtype)
    a = _expand_a(jnp.asarray(a), b_re).astype(jnp.complex64)
    h0, reset = _check_args(b_re.shape, h0, reset, chunk_size)
    if h0 is not None:
        h0 = h0.astype(jnp.complex64)
    if b_re.shape[1] == 0:
        return b_re, b_im
    return dispatch(
        "linear_recurrence_planes",
        implementation,
        PLANES_IMPLEMENTATIONS,
        _auto_chain(b_re.shape[1]),
        a,
        b_re,
        b_im,
        h0,
        reverse,
        reset,
        chunk_size,
    )


def pallas_first(implementation: str | Sequence[str] | None) -> bool:
    """Whether ``implementation`` (as passed to :func:`linear_recurrence`) tries the Pallas
    kernel first here: layers then keep complex states as planes
    (:func:`linear_recurrence_planes`)."""
    if implementation is None:
        chain = _auto_chain(0)
    elif isinstance(implementation, str):
        chain = (implementation,)
    else:
        chain = tuple(implementation)
    return bool(chain) and chain[0] == "pallas"
