"""Convolution kernels of linear time-invariant SSMs, and FFT convolution.

A single-input single-output SSM ``h_t = A_bar h_{t-1} + B_bar u_t``, ``y_t = C h_t`` is the
causal convolution ``y = K * u`` with kernel ``K_l = C A_bar^l B_bar`` (``l >= 0``). This
module computes ``K`` for the two structured families of S4 without running the recurrence:

* **diagonal** ``A_bar`` (S4D, :func:`vandermonde_kernel`): ``K`` is a Vandermonde product;
* **diagonal plus low rank** ``A = Lambda - P P^*`` with bilinear discretisation (S4,
  :func:`dplr_kernel`): ``K`` is evaluated at the roots of unity through the Woodbury
  identity and a Cauchy kernel (:func:`cauchy_kernel`), then inverted with an FFT.

It also provides :func:`fft_conv` (causal or two-sided convolution of a batch of sequences
with such kernels) and the dense / recurrent helpers S4 needs to run the same system as a
recurrence: :func:`dplr_dense`, :func:`dplr_c_tilde`, :func:`dplr_step_setup` and
:func:`dplr_step`.

Conventions
-----------

* Systems are **conjugate symmetric**: a real system with ``2n`` states is stored by ``n``
  complex states, one of each conjugate pair (see :mod:`ssmjax.ops.hippo`). A diagonal system
  outputs ``2 Re(C h)``. A DPLR system is stored as ``Lambda: (h, n)``, ``P: (r, h, n)``,
  ``B: (h, n)``, ``C: (..., h, n)``; the full system over ``2n`` complex states is
  ``A = diag([Lambda, conj Lambda]) - [P, conj P]^T conj([P, conj P])`` (``P P^*`` with one
  column per rank), ``B = [B, conj B]``, ``C = [C, conj C]``, and its output is real.
* ``h`` indexes independent systems (channels, ``d_model``); each has its own step ``dt``.
  Leading ``...`` axes of ``C`` are output channels sharing ``A``, ``B`` and ``dt`` (S4's
  ``channels``, e.g. the two directions of a bidirectional layer).
* Everything is pure JAX: jit-able, vmap-able and differentiable; lengths are static ints.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

__all__ = [
    "DPLRStep",
    "cauchy_kernel",
    "dplr_c_tilde",
    "dplr_dense",
    "dplr_kernel",
    "dplr_step",
    "dplr_step_setup",
    "fft_conv",
    "vandermonde_kernel",
]


def _complex(x: Array) -> Array:
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.complex64))


def _check_length(length: int) -> int:
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    return int(length)


# ----------------------------------------------------------------------------------------
# Diagonal systems (S4D)
# ----------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("length", "scale"))
def vandermonde_kernel(
    c: Array, log_lambda_bar: Array, length: int, *, scale: float = 2.0
) -> Array:
    r"""Convolution kernel of a diagonal SSM: ``K[..., h, l] = scale * Re(sum_n c Lambda_bar^l)``.

    Exactly, with ``c`` already holding ``C * B_bar`` (the input matrix folded into ``C``):

        ``K[..., h, l] = scale * Re( sum_n c[..., h, n] * exp(l * log_lambda_bar[h, n]) )``

    for ``l = 0 .. length-1``, i.e. the impulse response of ``x_t = Lambda_bar x_{t-1} +
    B_bar u_t``, ``y_t = scale * Re(C x_t)``. The powers are computed as ``exp(l * log)``, never
    by repeated multiplication, so they are exact to rounding at any ``l`` and decay smoothly
    when ``Re(log) < 0``:

    * **ZOH**: ``Lambda_bar = exp(dt A)``; pass ``log_lambda_bar = dt * A`` itself (no
      ``log(exp(.))`` round trip) and ``c = C * (exp(dt A) - 1) / A * B``.
    * **bilinear**: pass ``log(Lambda_bar)`` (any branch of the log gives the same integer
      powers) and ``c = C * dt / (1 - dt A / 2) * B``.

    ``scale = 2`` (the default) gives the real output of a conjugate-symmetric system that
    stores one state of each conjugate pair (S4D); use ``scale = 1`` for ``Re`` of a full
    complex system.

    Args:
      c: ``(..., h, n)`` complex, ``C * B_bar``; leading axes are output channels.
      log_lambda_bar: ``(h, n)`` complex (or real), the log of the diagonal ``A_bar``.
      length: number of kernel taps ``l`` (static).
      scale: output factor.

    Returns:
      ``K``: ``(..., h, length)`` real (float32 for complex64 inputs).

    >>> import jax.numpy as jnp
    >>> log_lam = jnp.log(jnp.array([[0.5 + 0j]]))
    >>> vandermonde_kernel(jnp.ones((1, 1), jnp.complex64), log_lam, 4)
    Array([[2.  , 1.  , 0.5 , 0.25]], dtype=float32)
    """
    length = _check_length(length)
    c = _complex(c)
    log_lambda_bar = _complex(log_lambda_bar).astype(c.dtype)
    if c.ndim < 2 or log_lambda_bar.shape != c.shape[-2:]:
        raise ValueError(
            f"c must be (..., h, n) and log_lambda_bar (h, n); got {c.shape}, "
            f"{log_lambda_bar.shape}"
        )
    real_dtype = jnp.real(c).dtype
    ell = jnp.arange(length, dtype=real_dtype)
    powers = jnp.exp(log_lambda_bar[..., None] * ell.astype(c.dtype)[None, None])  # (h, n, l)
    # Re(c p) = Re c Re p - Im c Im p: two real contractions instead of a complex one.
    k = jnp.einsum("...hn,hnl->...hl", jnp.real(c), jnp.real(powers)) - jnp.einsum(
        "...hn,hnl->...hl", jnp.imag(c), jnp.imag(powers)
    )
    return scale * k


# ----------------------------------------------------------------------------------------
# Cauchy kernel
# ----------------------------------------------------------------------------------------


def _cauchy(v: Array, z: Array, s: Array | None, w: Array, conj: bool) -> Array:
    """``sum_n v_n / (z - s w_n)`` (+ ``conj(v_n) / (z - s conj(w_n))`` when ``conj``).

    ``v: (k, h, n)``, ``w: (h, n)``, ``z: (h, m)``, ``s: (h, m)`` or None (= 1); returns
    ``(k, h, m)``. The ``(h, n, m)`` reciprocal denominators are shared by the ``k`` rows.
    """
    zz = z[:, None, :]  # (h, 1, m)
    ww = w[:, :, None]  # (h, n, 1)
    ss = None if s is None else s[:, None, :]
    if not conj:
        den = zz - (ww if ss is None else ss * ww)
        return jnp.einsum("khn,hnm->khm", v, 1.0 / den)
    # v/(z - s w) + conj(v)/(z - s conj(w)) = 2 (Re(v) z - s Re(v conj w)) / |z - s w|^2_z
    # where |.|^2_z = (z - s w)(z - s conj w) = z^2 - 2 s z Re(w) + s^2 |w|^2.
    abs_w2 = jnp.real(ww) ** 2 + jnp.imag(ww) ** 2
    if ss is None:
        den = zz * zz - 2.0 * zz * jnp.real(ww) + abs_w2
    else:
        den = zz * zz - 2.0 * ss * zz * jnp.real(ww) + ss * ss * abs_w2
    inv = 1.0 / den  # (h, n, m) complex
    inv_re, inv_im = jnp.real(inv), jnp.imag(inv)

    def contract(coef):  # real (k, h, n) x complex (h, n, m)
        return jax.lax.complex(
            jnp.einsum("khn,hnm->khm", coef, inv_re), jnp.einsum("khn,hnm->khm", coef, inv_im)
        )

    vw = jnp.real(v) * jnp.real(w)[None] + jnp.imag(v) * jnp.imag(w)[None]  # Re(v conj w)
    first = contract(2.0 * jnp.real(v)) * z[None]
    second = contract(2.0 * vw)
    return first - (second if s is None else second * s[None])


@functools.partial(jax.jit, static_argnames=("conj",))
def cauchy_kernel(v: Array, z: Array, w: Array, *, conj: bool = True) -> Array:
    r"""Cauchy matrix-vector product ``out[..., h, j] = sum_n v[..., h, n] / (z[j] - w[h, n])``.

    With ``conj=True`` (default) the conjugate pairs of ``v`` and ``w`` are added as well:
    ``sum_n v_n / (z_j - w_n) + conj(v_n) / (z_j - conj(w_n))`` — the sum over the full
    state of a conjugate-symmetric system stored by half its states (``z`` is *not*
    conjugated). Both terms share one complex division:
    ``2 (Re(v) z - Re(v conj w)) / (z^2 - 2 Re(w) z + |w|^2)``.

    This is S4's Cauchy kernel (a naive O(h n m) XLA form; the quadratic intermediate is the
    ``(h, n, m)`` denominator, shared by all leading rows of ``v``).

    Args:
      v: ``(..., h, n)`` complex numerators.
      z: ``(m,)`` or ``(h, m)`` complex evaluation points.
      w: ``(h, n)`` complex poles.
      conj: also add the conjugate pairs.

    Returns:
      ``(..., h, m)`` complex.

    >>> import jax.numpy as jnp
    >>> v = jnp.array([[1.0 + 0j]]); w = jnp.array([[-1.0 + 0j]])
    >>> cauchy_kernel(v, jnp.array([1.0 + 0j]), w, conj=False)
    Array([[0.5+0.j]], dtype=complex64)
    """
    v, z, w = _complex(v), _complex(z), _complex(w)
    dtype = jnp.result_type(v.dtype, z.dtype, w.dtype)
    v, z, w = v.astype(dtype), z.astype(dtype), w.astype(dtype)
    if v.ndim < 2 or w.ndim != 2 or v.shape[-2:] != w.shape:
        raise ValueError(f"v must be (..., h, n) and w (h, n); got {v.shape}, {w.shape}")
    if z.ndim == 1:
        z = jnp.broadcast_to(z[None], (w.shape[0], z.shape[0]))
    if z.ndim != 2 or z.shape[0] != w.shape[0]:
        raise ValueError(f"z must be (m,) or (h, m) with h={w.shape[0]}; got {z.shape}")
    lead = v.shape[:-2]
    out = _cauchy(v.reshape(-1, *w.shape), z, None, w, conj)
    return out.reshape(*lead, *out.shape[-2:])


# ----------------------------------------------------------------------------------------
# DPLR systems (S4)
# ----------------------------------------------------------------------------------------


def _dplr_args(Lambda, P, B, dt):
    Lambda = _complex(Lambda)
    P = _complex(P).astype(Lambda.dtype)
    B = None if B is None else _complex(B).astype(Lambda.dtype)
    dt = jnp.asarray(dt)
    h, n = Lambda.shape if Lambda.ndim == 2 else (None, None)
    if Lambda.ndim != 2 or P.ndim != 3 or P.shape[1:] != (h, n):
        raise ValueError(f"Lambda must be (h, n) and P (r, h, n); got {Lambda.shape}, {P.shape}")
    if B is not None and B.shape != (h, n):
        raise ValueError(f"B must be (h, n) = {(h, n)}; got {B.shape}")
    if dt.shape != (h,):
        raise ValueError(f"dt must be (h,) = ({h},); got {dt.shape}")
    return Lambda, P, B, dt.astype(jnp.real(Lambda).dtype)


@functools.partial(jax.jit, static_argnames=("length",))
def dplr_kernel(c_tilde: Array, Lambda: Array, P: Array, B: Array, dt: Array, length: int) -> Array:
    r"""S4's convolution kernel of a bilinear-discretised DPLR system (S4 paper, Algorithm 1).

    The system (full, conjugate-expanded, see the module docstring) is
    ``A = Lambda - P P^*``, discretised with the bilinear transform
    ``A_bar = (I - dt/2 A)^{-1} (I + dt/2 A)``, ``B_bar = (I - dt/2 A)^{-1} dt B``. Its
    kernel of length ``L = length``, ``K_l = C A_bar^l B_bar``, is computed from
    ``C~ = C (I - A_bar^L)`` (the ``c_tilde`` argument; S4 learns ``C~`` directly): the
    truncated generating function at the roots of unity ``w_k = exp(-2 pi i k / L)`` is

        ``K^(w) = sum_{l<L} K_l w^l = C~ (I - w A_bar)^{-1} B_bar
        = dt C~ [(1 - w) I - (1 + w)/2 dt A]^{-1} B``,

    and with ``R = diag((1 - w) - s Lambda)^{-1}``, ``s = (1 + w) dt / 2``, the Woodbury
    identity gives

        ``K^(w) = dt [ C~ R B - s C~ R P (I + s P^* R P)^{-1} P^* R B ]``.

    The four terms are Cauchy kernels (:func:`cauchy_kernel` in homogeneous form,
    ``sum v_n / ((1 - w) - s Lambda_n)``, summed over conjugate pairs); ``K`` is then
    ``irfft(K^, L)`` over ``k = 0 .. L//2``. This is the paper's
    ``2/(1 + w) [k00 - k01 (1 + k11)^{-1} k10]`` multiplied through by ``(1 + w)/2``, which
    keeps every term finite at ``w = -1`` (where ``K^ = dt C~ B / 2`` exactly) instead of
    relying on rounding there.

    Args:
      c_tilde: ``(..., h, n)`` complex ``C~`` (leading axes: output channels).
      Lambda: ``(h, n)`` complex diagonal part.
      P: ``(r, h, n)`` complex low-rank factor.
      B: ``(h, n)`` complex input vector.
      dt: ``(h,)`` positive step sizes.
      length: ``L``, number of taps (static); ``C~`` must belong to this length.

    Returns:
      ``K``: ``(..., h, length)`` real.

    >>> import jax.numpy as jnp
    >>> from ssmjax.ops.hippo import nplr
    >>> Lam, P, B, _ = nplr("legs", 4)
    >>> k = dplr_kernel(jnp.ones((1, 2)), Lam[None], P[:, None], B[None], jnp.full((1,), 0.1), 8)
    >>> k.shape, k.dtype
    ((1, 8), dtype('float32'))
    """
    length = _check_length(length)
    Lambda, P, B, dt = _dplr_args(Lambda, P, B, dt)
    c_tilde = _complex(c_tilde).astype(Lambda.dtype)
    h, n = Lambda.shape
    r = P.shape[0]
    if c_tilde.ndim < 2 or c_tilde.shape[-2:] != (h, n):
        raise ValueError(f"c_tilde must be (..., {h}, {n}); got {c_tilde.shape}")
    lead = c_tilde.shape[:-2]
    c = c_tilde.reshape(-1, h, n)
    n_c = c.shape[0]

    m = length // 2 + 1
    omega = np.exp(-2j * np.pi * np.arange(m) / length)  # float64 nodes, then cast
    z = jnp.asarray(1.0 - omega, Lambda.dtype)  # (m,)
    sigma = jnp.asarray((1.0 + omega) / 2.0, Lambda.dtype)  # (m,)
    s = dt.astype(Lambda.dtype)[:, None] * sigma[None]  # (h, m)

    left = jnp.concatenate([c, jnp.conj(P)], axis=0)  # (n_c + r, h, n): C~, P^*
    right = jnp.concatenate([B[None], P], axis=0)  # (1 + r, h, n): B, P
    v = left[:, None] * right[None]  # (n_c + r, 1 + r, h, n)
    zz = jnp.broadcast_to(z[None], (h, m))
    k = _cauchy(v.reshape(-1, h, n), zz, s, Lambda, conj=True).reshape(n_c + r, 1 + r, h, m)
    k00, k01 = k[:n_c, 0], k[:n_c, 1:]  # (n_c, h, m), (n_c, r, h, m)
    k10, k11 = k[n_c:, 0], k[n_c:, 1:]  # (r, h, m), (r, r, h, m)
    if r == 1:
        corr = k01[:, 0] * k10[0][None] / (1.0 + s * k11[0, 0])[None]
    else:
        mat = jnp.eye(r, dtype=k.dtype)[:, :, None, None] + s[None, None] * k11  # (r, r, h, m)
        mat = jnp.moveaxis(mat, (0, 1), (-2, -1))  # (h, m, r, r)
        rhs = jnp.moveaxis(k10, 0, -1)[..., None]  # (h, m, r, 1)
        x = jnp.linalg.solve(mat, rhs)[..., 0]  # (h, m, r)
        corr = jnp.einsum("crhm,hmr->chm", k01, x)
    k_hat = dt.astype(k.dtype)[None, :, None] * (k00 - s[None] * corr)
    kernel = jnp.fft.irfft(k_hat, n=length, axis=-1)
    return kernel.reshape(*lead, h, length)


@jax.jit
def dplr_dense(Lambda: Array, P: Array, B: Array | None, dt: Array) -> tuple[Array, Array | None]:
    """The bilinear-discretised DPLR system as dense matrices over the full rotated state.

    Builds ``A = diag([Lambda, conj Lambda]) - Q^T conj(Q)`` with ``Q = [P, conj P]`` (the
    conjugate-expanded system of the module docstring, ``2n`` complex states) and returns
    ``A_bar = (I - dt/2 A)^{-1} (I + dt/2 A)`` and ``B_bar = (I - dt/2 A)^{-1} dt [B, conj B]``.
    Costs O(h n^3); used to convert ``C <-> C~`` (:func:`dplr_c_tilde`) and in tests.

    Args:
      Lambda: ``(h, n)`` complex.
      P: ``(r, h, n)`` complex.
      B: ``(h, n)`` complex, or None.
      dt: ``(h,)``.

    Returns:
      ``(A_bar, B_bar)``: ``(h, 2n, 2n)`` and ``(h, 2n)`` complex (``B_bar`` None if ``B`` is).

    >>> import jax.numpy as jnp
    >>> from ssmjax.ops.hippo import nplr
    >>> Lam, P, B, _ = nplr("legs", 4)
    >>> A_bar, B_bar = dplr_dense(Lam[None], P[:, None], B[None], jnp.full((1,), 0.1))
    >>> A_bar.shape, B_bar.shape
    ((1, 4, 4), (1, 4))
    """
    Lambda, P, B, dt = _dplr_args(Lambda, P, B, dt)
    n2 = 2 * Lambda.shape[-1]
    lam = jnp.concatenate([Lambda, jnp.conj(Lambda)], axis=-1)  # (h, 2n)
    q = jnp.concatenate([P, jnp.conj(P)], axis=-1)  # (r, h, 2n)
    eye = jnp.eye(n2, dtype=Lambda.dtype)
    A = eye[None] * lam[:, None, :] - jnp.einsum("rhi,rhj->hij", q, jnp.conj(q))
    half = (dt.astype(Lambda.dtype) / 2.0)[:, None, None] * A
    lhs = eye[None] - half
    A_bar = jnp.linalg.solve(lhs, eye[None] + half)
    if B is None:
        return A_bar, None
    b = jnp.concatenate([B, jnp.conj(B)], axis=-1) * dt.astype(Lambda.dtype)[:, None]
    B_bar = jnp.linalg.solve(lhs, b[..., None])[..., 0]
    return A_bar, B_bar


@functools.partial(jax.jit, static_argnames=("length", "inverse"))
def dplr_c_tilde(
    c: Array, Lambda: Array, P: Array, dt: Array, length: int, *, inverse: bool = False
) -> Array:
    """Converts between ``C`` and S4's ``C~ = C (I - A_bar^L)`` (``L = length``).

    ``A_bar`` is the bilinear-discretised DPLR matrix of :func:`dplr_dense` (full rotated
    state, ``C`` conjugate-expanded as ``[C, conj C]``); ``A_bar^L`` is formed by repeated
    squaring (O(h n^3 log L)). With ``inverse=True`` returns ``C = C~ (I - A_bar^L)^{-1}``
    (a linear solve). The result is conjugate symmetric again; its first half is returned.

    Args:
      c: ``(..., h, n)`` complex, ``C`` (or ``C~`` when ``inverse``).
      Lambda: ``(h, n)`` complex.
      P: ``(r, h, n)`` complex.
      dt: ``(h,)``.
      length: ``L`` (static).
      inverse: map ``C~ -> C`` instead of ``C -> C~``.

    Returns:
      ``(..., h, n)`` complex.

    >>> import jax.numpy as jnp
    >>> from ssmjax.ops.hippo import nplr
    >>> Lam, P, _, _ = nplr("legs", 4)
    >>> args = (Lam[None], P[:, None], jnp.full((1,), 0.1), 16)
    >>> c = jnp.ones((1, 2), jnp.complex64)
    >>> back = dplr_c_tilde(dplr_c_tilde(c, *args), *args, inverse=True)
    >>> bool(jnp.allclose(back, c, atol=1e-5))
    True
    """
    length = _check_length(length)
    Lambda, P, _, dt = _dplr_args(Lambda, P, None, dt)
    c = _complex(c).astype(Lambda.dtype)
    h, n = Lambda.shape
    if c.ndim < 2 or c.shape[-2:] != (h, n):
        raise ValueError(f"c must be (..., {h}, {n}); got {c.shape}")
    A_bar, _ = dplr_dense(Lambda, P, None, dt)
    eye = jnp.eye(2 * n, dtype=A_bar.dtype)
    M = eye[None] - jnp.linalg.matrix_power(A_bar, length)  # (h, 2n, 2n)
    c_full = jnp.concatenate([c, jnp.conj(c)], axis=-1)  # (..., h, 2n) row vectors
    if inverse:
        # c M = c~  <=>  M^T c^T = c~^T
        Mt = jnp.broadcast_to(jnp.swapaxes(M, -1, -2), c_full.shape[:-1] + M.shape[-2:])
        out = jnp.linalg.solve(Mt, c_full[..., None])[..., 0]
    else:
        out = jnp.einsum("...hi,hij->...hj", c_full, M)
    return out[..., :n]


class DPLRStep(NamedTuple):
    """Precomputed quantities of S4's O(n) bilinear step (see :func:`dplr_step_setup`)."""

    dinv: Array  #: ``(h, n)`` complex, ``1 / (2/dt - Lambda)``
    e: Array  #: ``(h, n)`` complex, ``2/dt + Lambda``
    p: Array  #: ``(r, h, n)`` complex, ``P``
    sinv: Array  #: ``(h, r, r)`` real, ``(I + P^* D P)^{-1}``
    b2: Array  #: ``(h, n)`` complex, ``2 B``


@jax.jit
def dplr_step_setup(Lambda: Array, P: Array, B: Array, dt: Array) -> DPLRStep:
    r"""Precomputes S4's O(n)-per-step bilinear recurrence for a DPLR system.

    Bilinear: ``x' = (I - dt/2 A)^{-1} ((I + dt/2 A) x + dt B u)``. Multiplying through by
    ``2/dt`` with ``A = Lambda - P P^*``: ``x' = M^{-1} (E x - P (P^* x) + 2 B u)`` with
    ``E = 2/dt + Lambda`` and ``M = diag(2/dt - Lambda) + P P^*``, whose inverse by Woodbury is
    ``M^{-1} = D - D P (I + P^* D P)^{-1} P^* D``, ``D = diag(2/dt - Lambda)^{-1}``. Inner
    products ``P^* x`` run over the full conjugate-expanded state, so they are real:
    ``2 Re(sum_n conj(P_n) x_n)`` over the stored half.

    Args:
      Lambda: ``(h, n)`` complex.
      P: ``(r, h, n)`` complex.
      B: ``(h, n)`` complex.
      dt: ``(h,)``.

    Returns:
      a :class:`DPLRStep` for :func:`dplr_step`.
    """
    Lambda, P, B, dt = _dplr_args(Lambda, P, B, dt)
    two_over_dt = (2.0 / dt).astype(Lambda.dtype)[:, None]
    dinv = 1.0 / (two_over_dt - Lambda)
    e = two_over_dt + Lambda
    r = P.shape[0]
    pdp = 2.0 * jnp.real(jnp.einsum("rhn,hn,shn->hrs", jnp.conj(P), dinv, P))  # (h, r, r)
    sinv = jnp.linalg.inv(jnp.eye(r, dtype=pdp.dtype)[None] + pdp)
    return DPLRStep(dinv=dinv, e=e, p=P, sinv=sinv, b2=2.0 * B)


@jax.jit
def dplr_step(params: DPLRStep, x: Array, u: Array) -> Array:
    """One bilinear step ``x' = A_bar x + B_bar u`` of a DPLR system in O(h n r).

    Args:
      params: from :func:`dplr_step_setup`.
      x: ``(..., h, n)`` complex state (one of each conjugate pair).
      u: ``(..., h)`` real input.

    Returns:
      the new state, ``(..., h, n)``.
    """
    p = params.p  # (r, h, n)
    lead = (1,) * (x.ndim - 2)
    e, dinv, b2 = (a.reshape(lead + a.shape) for a in (params.e, params.dinv, params.b2))

    def inner(y):  # P^* y over the full conjugate-expanded state: real (..., r, h)
        return 2.0 * jnp.real(jnp.einsum("rhn,...hn->...rh", jnp.conj(p), y))

    def outer(q):  # P q: (..., r, h) real -> (..., h, n)
        return jnp.einsum("rhn,...rh->...hn", p, q.astype(p.dtype))

    w = e * x - outer(inner(x)) + b2 * u[..., None].astype(x.dtype)
    q = jnp.einsum("hrs,...sh->...rh", params.sinv, inner(dinv * w))
    return dinv * (w - outer(q))


# ----------------------------------------------------------------------------------------
# FFT convolution
# ----------------------------------------------------------------------------------------


@jax.jit
def fft_conv(x: Array, k: Array, *, k_reverse: Array | None = None) -> Array:
    r"""Causal (or two-sided) convolution of ``x: (b, l, h)`` with per-channel kernels.

    ``y[b, t, h] = sum_{s <= t} k[h, t - s] x[b, s, h]``
    ``+ sum_{s >= t} k_reverse[h, s - t] x[b, s, h]`` (second sum only when ``k_reverse`` is
    given). Kernel taps beyond ``l`` are ignored and missing taps are zero, so any kernel
    length works. Computed with real FFTs of size ``l + l_k`` (``2l`` when two-sided), which
    leaves no circular wrap-around.

    Two-sided: as S4, one kernel of length ``2l``,
    ``k2 = pad(k, (0, l)) + pad(flip(k_reverse), (l, 0))``, but aligned so that ``k_reverse``
    lag 0 multiplies the current input — the reverse half is exactly a reverse-time SSM
    ``h_t = A_bar h_{t+1} + B_bar u_t`` (S4's ``fftconv.py`` shifts it one step into the
    future; its comment calls that a deliberate off-by-one). It only reads inputs at
    ``s >= t``, so for a suffix-padded batch whose padded inputs are zero, the outputs at real
    tokens equal those of the unpadded sequences.

    Args:
      x: ``(b, l, h)`` real input (computed in float32 at least; bf16 is upcast).
      k: ``(h, l_k)`` causal kernel.
      k_reverse: optional ``(h, l_r)`` anti-causal kernel.

    Returns:
      ``(b, l, h)``, float32 (or float64 for float64 inputs).

    >>> import jax.numpy as jnp
    >>> x = jnp.zeros((1, 4, 1)).at[0, 1, 0].set(1.0)
    >>> fft_conv(x, jnp.array([[1.0, 0.5]]))[0, :, 0]
    Array([0. , 1. , 0.5, 0. ], dtype=float32)
    """
    x = jnp.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be (batch, length, channels); got {x.shape}")
    _, length, h = x.shape
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError("fft_conv takes real inputs")
    x = x.astype(dtype)

    def take(kernel, name):
        kernel = jnp.asarray(kernel)
        if kernel.ndim != 2 or kernel.shape[0] != h:
            raise ValueError(f"{name} must be ({h}, length); got {kernel.shape}")
        kernel = kernel[:, :length].astype(dtype)
        return kernel

    k = take(k, "k")
    if k_reverse is None:
        n = length + k.shape[1]
        full = k
    else:
        kr = take(k_reverse, "k_reverse")
        n = 2 * length
        full = jnp.zeros((h, n), dtype)
        full = full.at[:, : k.shape[1]].add(k)
        full = full.at[:, :1].add(kr[:, :1])
        # lag m >= 1 of the reverse kernel sits at index n - m (negative lag, circularly).
        full = full.at[:, n - kr.shape[1] + 1 :].add(jnp.flip(kr[:, 1:], axis=1))
    k_f = jnp.fft.rfft(full, n=n, axis=-1)  # (h, f)
    x_f = jnp.fft.rfft(x, n=n, axis=1)  # (b, f, h)
    y = jnp.fft.irfft(x_f * jnp.swapaxes(k_f, 0, 1)[None], n=n, axis=1)
    return y[:, :length].astype(dtype)
