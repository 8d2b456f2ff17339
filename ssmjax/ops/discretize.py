"""Discretisation of continuous-time linear systems ``x'(t) = A x(t) + B u(t)``.

A step of size ``dt`` with the input held constant turns the ODE into the recurrence
``x_k = A_bar x_{k-1} + B_bar u_k``. Two rules are provided, each for diagonal systems
(``A = diag(Lambda)``: S4D, S5, LRU-style, elementwise and broadcasting) and for dense ones:

* zero-order hold (ZOH): ``A_bar = exp(dt A)``, ``B_bar = A^{-1} (exp(dt A) - I) B``;
* bilinear (Tustin): ``A_bar = (I - dt/2 A)^{-1} (I + dt/2 A)``,
  ``B_bar = (I - dt/2 A)^{-1} dt B``.

All functions are pure JAX (and ``jax.jit``-compiled): vmap-able and differentiable in every
argument. The
output dtype follows the inputs (float32 / complex64 in, the same out): ``dt`` is cast to
the dtype of the state matrix, and ``B_bar`` has the promoted dtype of ``Lambda``/``A`` and
``B``. No implicit rank promotion happens.
"""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import Array
from jax.typing import ArrayLike

__all__ = [
    "discretize_bilinear",
    "discretize_bilinear_dense",
    "discretize_zoh",
    "discretize_zoh_dense",
]

# Below this |z|, phi1(z) = (exp(z) - 1) / z is evaluated by its Taylor series: the quotient
# (and, more so, its derivative) loses accuracy as z -> 0 and is 0/0 at z = 0.
_SERIES_RADIUS = 0.1
_SERIES_TERMS = 8  # remainder ~ |z|^8 / 9! < 3e-14 inside the radius


def _inexact(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def _phi1(z: Array) -> Array:
    """``(exp(z) - 1) / z``, accurate (with accurate gradients) near and at ``z = 0``."""
    small = jnp.real(z) ** 2 + jnp.imag(z) ** 2 < _SERIES_RADIUS**2
    z_safe = jnp.where(small, jnp.ones_like(z), z)
    exact = jnp.expm1(z_safe) / z_safe
    series = jnp.ones_like(z)
    for k in range(_SERIES_TERMS, 0, -1):  # Horner: 1 + z/2 (1 + z/3 (1 + ...))
        series = 1 + z / (k + 1) * series
    return jnp.where(small, series, exact)


def _diagonal_args(Lambda: ArrayLike, B: ArrayLike, dt: ArrayLike) -> tuple[Array, Array, Array]:
    Lambda = _inexact(Lambda)
    B = _inexact(B)
    dt = jnp.asarray(dt)
    if dt.ndim not in (0, Lambda.ndim):
        raise ValueError(
            f"dt must be a scalar or have the rank of Lambda ({Lambda.ndim}); got shape "
            f"{dt.shape}. Add size-1 axes explicitly, e.g. dt[:, None]."
        )
    dt = dt.astype(Lambda.dtype)
    out_ndim = max(Lambda.ndim, dt.ndim)
    if B.ndim < out_ndim:
        raise ValueError(
            f"B (shape {B.shape}) must have at least the rank of Lambda * dt ({out_ndim})"
        )
    return Lambda, B, dt


def _apply_to_b(coef: Array, B: Array) -> Array:
    """``coef[..., None, ..., None] * B``: ``coef`` indexes B's leading axes."""
    dtype = jnp.promote_types(coef.dtype, B.dtype)
    coef = coef.reshape(coef.shape + (1,) * (B.ndim - coef.ndim)).astype(dtype)
    return coef * B.astype(dtype)


@jax.jit
def discretize_zoh(Lambda: ArrayLike, B: ArrayLike, dt: ArrayLike) -> tuple[Array, Array]:
    """Zero-order-hold discretisation of a diagonal system ``x' = Lambda * x + B u``.

    ``Lambda_bar = exp(Lambda dt)`` and ``B_bar = (Lambda_bar - 1) / Lambda * B``; the factor
    ``(exp(Lambda dt) - 1) / Lambda = dt * phi1(Lambda dt)`` is evaluated with ``expm1`` and
    a Taylor series near 0, so it is accurate for small ``|Lambda dt|`` and equals ``dt`` at
    ``Lambda = 0`` (with finite gradients).

    Shapes: ``Lambda`` has shape ``s``; ``dt`` is a scalar or has the *rank* of ``Lambda``
    (broadcasting against it, e.g. ``(P,)`` per state or ``(H, 1)`` per channel for
    ``Lambda: (H, N)``); ``B`` has the rank of ``Lambda * dt`` plus any number of trailing
    axes, which ``Lambda`` broadcasts over (S5: ``Lambda: (P,)``, ``B: (P, H)``).

    Args:
      Lambda: diagonal of the state matrix, real or complex, shape ``s``.
      B: input matrix, shape ``(*s, *t)`` (leading axes broadcast against ``Lambda * dt``).
      dt: step size(s), real, positive.

    Returns:
      ``(Lambda_bar, B_bar)``: ``Lambda_bar`` of shape ``broadcast(s, dt.shape)`` and dtype
      of ``Lambda``; ``B_bar`` of shape ``broadcast(Lambda_bar, B)`` (trailing axes of ``B``
      kept) and the promoted dtype of ``Lambda`` and ``B``.

    >>> import jax.numpy as jnp
    >>> Lambda = jnp.array([-0.5 + 1j, -0.5 + 2j], jnp.complex64)
    >>> Lambda_bar, B_bar = discretize_zoh(Lambda, jnp.ones((2, 3)), jnp.array([0.1, 0.01]))
    >>> Lambda_bar.shape, B_bar.shape, B_bar.dtype
    ((2,), (2, 3), dtype('complex64'))
    """
    Lambda, B, dt = _diagonal_args(Lambda, B, dt)
    z = Lambda * dt
    Lambda_bar = jnp.exp(z)
    coef = dt * _phi1(z)
    return Lambda_bar, _apply_to_b(coef, B)


@jax.jit
def discretize_bilinear(Lambda: ArrayLike, B: ArrayLike, dt: ArrayLike) -> tuple[Array, Array]:
    """Bilinear (Tustin) discretisation of a diagonal system ``x' = Lambda * x + B u``.

    ``Lambda_bar = (1 + dt/2 Lambda) / (1 - dt/2 Lambda)`` and
    ``B_bar = dt / (1 - dt/2 Lambda) * B``. Shapes and broadcasting as in
    :func:`discretize_zoh`.

    Args:
      Lambda: diagonal of the state matrix, real or complex, shape ``s``.
      B: input matrix, shape ``(*s, *t)``.
      dt: step size(s), scalar or of the rank of ``Lambda``.

    Returns:
      ``(Lambda_bar, B_bar)`` with the shapes and dtypes of :func:`discretize_zoh`.

    >>> import jax.numpy as jnp
    >>> Lambda_bar, B_bar = discretize_bilinear(-jnp.ones((4, 2)), jnp.ones((4, 2)), 0.1)
    >>> Lambda_bar.shape, B_bar.shape
    ((4, 2), (4, 2))
    """
    Lambda, B, dt = _diagonal_args(Lambda, B, dt)
    half = dt / 2 * Lambda
    denom = 1 - half
    Lambda_bar = (1 + half) / denom
    return Lambda_bar, _apply_to_b(dt / denom, B)


def _dense_args(A: ArrayLike, B: ArrayLike, dt: ArrayLike) -> tuple[Array, Array, Array, bool]:
    A = _inexact(A)
    B = _inexact(B)
    dt = jnp.asarray(dt)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix (n, n), got shape {A.shape}")
    vector = B.ndim == 1
    if vector:
        B = B[:, None]
    if B.ndim != 2 or B.shape[0] != A.shape[0]:
        raise ValueError(f"B must have shape (n,) or (n, m) with n={A.shape[0]}, got {B.shape}")
    if dt.ndim != 0:
        raise ValueError(f"dt must be a scalar (use jax.vmap for batches), got shape {dt.shape}")
    dtype = jnp.promote_types(A.dtype, B.dtype)
    return A.astype(dtype), B.astype(dtype), dt.astype(dtype), vector


@jax.jit
def discretize_zoh_dense(A: ArrayLike, B: ArrayLike, dt: ArrayLike) -> tuple[Array, Array]:
    """Zero-order-hold discretisation of a dense system ``x' = A x + B u``.

    Uses the block matrix exponential
    ``expm(dt [[A, B], [0, 0]]) = [[exp(dt A), A^{-1}(exp(dt A) - I) B], [0, I]]``,
    which needs no inverse of ``A`` (``A`` may be singular).

    Args:
      A: ``(n, n)`` state matrix, real or complex.
      B: ``(n, m)`` or ``(n,)`` input matrix.
      dt: scalar step size (``jax.vmap`` over batches of systems or steps).

    Returns:
      ``(A_bar, B_bar)`` of shapes ``(n, n)`` and the shape of ``B``, in the promoted dtype
      of ``A`` and ``B``.

    >>> import jax.numpy as jnp
    >>> A_bar, B_bar = discretize_zoh_dense(-jnp.eye(3), jnp.ones((3, 2)), 0.1)
    >>> A_bar.shape, B_bar.shape, A_bar.dtype
    ((3, 3), (3, 2), dtype('float32'))
    """
    A, B, dt, vector = _dense_args(A, B, dt)
    n, m = B.shape
    M = jnp.concatenate([jnp.concatenate([A, B], axis=1), jnp.zeros((m, n + m), A.dtype)], axis=0)
    E = jsl.expm(dt * M)
    A_bar, B_bar = E[:n, :n], E[:n, n:]
    return A_bar, (B_bar[:, 0] if vector else B_bar)


@jax.jit
def discretize_bilinear_dense(A: ArrayLike, B: ArrayLike, dt: ArrayLike) -> tuple[Array, Array]:
    """Bilinear (Tustin) discretisation of a dense system ``x' = A x + B u``.

    ``A_bar = (I - dt/2 A)^{-1} (I + dt/2 A)`` and ``B_bar = (I - dt/2 A)^{-1} dt B``,
    computed with linear solves (no explicit inverse).

    Args:
      A: ``(n, n)`` state matrix, real or complex.
      B: ``(n, m)`` or ``(n,)`` input matrix.
      dt: scalar step size.

    Returns:
      ``(A_bar, B_bar)`` of shapes ``(n, n)`` and the shape of ``B``, in the promoted dtype
      of ``A`` and ``B``.

    >>> import jax.numpy as jnp
    >>> A_bar, B_bar = discretize_bilinear_dense(-jnp.eye(3), jnp.ones(3), 0.1)
    >>> A_bar.shape, B_bar.shape
    ((3, 3), (3,))
    """
    A, B, dt, vector = _dense_args(A, B, dt)
    eye = jnp.eye(A.shape[0], dtype=A.dtype)
    half = dt / 2 * A
    lhs = eye - half
    A_bar = jnp.linalg.solve(lhs, eye + half)
    B_bar = jnp.linalg.solve(lhs, dt * B)
    return A_bar, (B_bar[:, 0] if vector else B_bar)
