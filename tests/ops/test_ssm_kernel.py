"""SSM convolution kernels equal the impulse responses of their recurrences; FFT convolution
equals direct convolution (causal and two-sided)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.ops.hippo import nplr, nplr_to_dense
from ssmjax.ops.scan import linear_recurrence
from ssmjax.ops.ssm_kernel import (
    cauchy_kernel,
    dplr_c_tilde,
    dplr_dense,
    dplr_kernel,
    dplr_step,
    dplr_step_setup,
    fft_conv,
    vandermonde_kernel,
)
from ssmjax.testing import assert_allclose


def crandn(rng, *shape, scale=1.0):
    return scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


# ---------------------------------------------------------------------------------------
# Vandermonde (diagonal)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 33, 128])
def test_vandermonde_kernel_is_impulse_response_of_recurrence(rng, length):
    h, n = 3, 5
    dtA = -rng.uniform(0.001, 0.2, (h, n)) + 1j * rng.uniform(-1.0, 3.0, (h, n))
    c = crandn(rng, 2, h, n)
    k = vandermonde_kernel(jnp.asarray(c, jnp.complex64), jnp.asarray(dtA, jnp.complex64), length)
    assert k.shape == (2, h, length) and k.dtype == jnp.float32

    impulse = jnp.zeros((1, length, h, n), jnp.complex64).at[:, 0].set(1.0)
    states = linear_recurrence(jnp.asarray(np.exp(dtA), jnp.complex64), impulse)  # (1, l, h, n)
    ref = 2.0 * np.real(np.einsum("chn,lhn->chl", c, np.asarray(states[0], np.complex128)))
    assert_allclose(k, ref, n=length)
    # and exactly (float64) the closed form
    ref64 = 2.0 * np.real(np.einsum("chn,hnl->chl", c, np.exp(dtA[..., None] * np.arange(length))))
    assert_allclose(k, ref64, n=length)


# ---------------------------------------------------------------------------------------
# Cauchy
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("conj", [True, False])
def test_cauchy_kernel_matches_naive(rng, conj):
    h, n, m = 3, 6, 9
    v, w, z = crandn(rng, 2, h, n), crandn(rng, h, n), crandn(rng, m, scale=3.0)
    ref = np.sum(v[..., None] / (z - w[..., None]), axis=-2)
    if conj:
        ref = ref + np.sum(np.conj(v)[..., None] / (z - np.conj(w)[..., None]), axis=-2)
    out = cauchy_kernel(*(jnp.asarray(a, jnp.complex64) for a in (v, z, w)), conj=conj)
    assert out.shape == (2, h, m)
    assert_allclose(out, ref, n=n)


# ---------------------------------------------------------------------------------------
# DPLR (S4)
# ---------------------------------------------------------------------------------------


def dplr_system(rng, n_full, h, hippo: bool):
    """(Lambda, P, B, V) of shapes (h, n), (r, h, n), (h, n), (N, n); dt (h,)."""
    Lam, P, B, V = nplr("legs", n_full)
    if not hippo:  # a generic DPLR system in the same (unitary) basis
        n = n_full // 2
        Lam = -rng.uniform(0.1, 1.0, n) + 1j * rng.uniform(0.0, 5.0, n)
        P, B = crandn(rng, 1, n), crandn(rng, n)
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), h))
    return np.tile(Lam, (h, 1)), np.tile(P[:, None], (1, h, 1)), np.tile(B, (h, 1)), V, dt


def dense_kernel_reference(c_tilde, Lam, P, B, V, dt, length):
    """float64 NumPy: the real dense system A = V(diag Lam - P P^*)V^*, bilinear, impulse."""
    out = np.zeros((*c_tilde.shape[:-1], length))
    for i in range(Lam.shape[0]):
        A, Bv = nplr_to_dense(Lam[i], P[:, i], B[i], V)
        eye = np.eye(A.shape[0])
        lhs = eye - dt[i] / 2 * A
        A_bar = np.linalg.solve(lhs, eye + dt[i] / 2 * A)
        B_bar = np.linalg.solve(lhs, dt[i] * Bv)
        ct_real = 2.0 * np.real(c_tilde[..., i, :] @ V.conj().T)  # (..., N)
        C = np.linalg.solve((eye - np.linalg.matrix_power(A_bar, length)).T, ct_real.T).T
        x = B_bar
        for ell in range(length):
            out[..., i, ell] = C @ x
            x = A_bar @ x
    return out


@pytest.mark.parametrize("n_full", [4, 16])
@pytest.mark.parametrize("length", [1, 33, 128])
@pytest.mark.parametrize("hippo", [True, False])
def test_dplr_kernel_is_impulse_response_of_dense_system(rng, n_full, length, hippo):
    h = 3
    Lam, P, B, V, dt = dplr_system(rng, n_full, h, hippo)
    c_tilde = crandn(rng, 2, h, n_full // 2)
    ref = dense_kernel_reference(c_tilde, Lam, P, B, V, dt, length)
    args = [jnp.asarray(a, jnp.complex64) for a in (c_tilde, Lam, P, B)]
    k = dplr_kernel(*args, jnp.asarray(dt, jnp.float32), length)
    assert k.shape == (2, h, length) and k.dtype == jnp.float32
    assert_allclose(k, ref, n=length * n_full)
    with jax.enable_x64(True):  # the algorithm is exact: float64 agrees to ~1e-10
        k64 = dplr_kernel(*(jnp.asarray(a) for a in (c_tilde, Lam, P, B, dt)), length)
        assert k64.dtype == jnp.float64
        assert_allclose(k64, ref, n=length * n_full)


@pytest.mark.parametrize("measure", ["lagt", "fourier", "legt"])
def test_dplr_kernel_other_measures_float64(rng, measure):
    # Re(Lambda) = 0 for these measures; S4 clamps it to -1e-4 (see ssmjax.nn.S4).
    rank = 2 if measure == "legt" else 1
    Lam, P, B, _ = nplr(measure, 8, rank)
    Lam = np.minimum(Lam.real, -1e-4) + 1j * Lam.imag
    dt, length = np.array([0.01, 0.1]), 33
    Lam, P, B = np.tile(Lam, (2, 1)), np.tile(P[:, None], (1, 2, 1)), np.tile(B, (2, 1))
    c = crandn(rng, 2, 4)
    with jax.enable_x64(True):
        A_bar, B_bar = dplr_dense(*(jnp.asarray(a) for a in (Lam, P, B, dt)))
        c_tilde = dplr_c_tilde(*(jnp.asarray(a) for a in (c, Lam, P, dt)), length)
        k = dplr_kernel(*(jnp.asarray(a) for a in (c_tilde, Lam, P, B, dt)), length)
    c_full = np.concatenate([c, np.conj(c)], -1)
    A_bar, B_bar = np.asarray(A_bar), np.asarray(B_bar)
    ref = [
        [
            np.real(c_full[i] @ np.linalg.matrix_power(A_bar[i], ell) @ B_bar[i])
            for ell in range(length)
        ]
        for i in range(2)
    ]
    np.testing.assert_allclose(np.asarray(k), np.asarray(ref), rtol=1e-8, atol=1e-8)


def test_dplr_kernel_rank_two_matches_dense(rng):
    h, n, length = 2, 3, 20
    Lam = -rng.uniform(0.1, 1.0, (h, n)) + 1j * rng.uniform(0.0, 4.0, (h, n))
    P, B, c = crandn(rng, 2, h, n), crandn(rng, h, n), crandn(rng, h, n)
    dt = np.array([0.05, 0.2])
    with jax.enable_x64(True):
        A_bar, B_bar = dplr_dense(*(jnp.asarray(a) for a in (Lam, P, B, dt)))
        c_tilde = dplr_c_tilde(*(jnp.asarray(a) for a in (c, Lam, P, dt)), length)
        k = dplr_kernel(*(jnp.asarray(a) for a in (c_tilde, Lam, P, B, dt)), length)
    A_bar, B_bar = np.asarray(A_bar), np.asarray(B_bar)
    c_full = np.concatenate([c, np.conj(c)], -1)
    ref = np.stack(
        [
            [
                np.real(c_full[i] @ np.linalg.matrix_power(A_bar[i], ell) @ B_bar[i])
                for ell in range(length)
            ]
            for i in range(h)
        ]
    )
    np.testing.assert_allclose(np.asarray(k), ref, rtol=1e-9, atol=1e-9)


def test_dplr_c_tilde_roundtrip_and_step_matches_dense(rng):
    h, n = 2, 4
    Lam, P, B, _, dt = dplr_system(rng, 2 * n, h, hippo=True)
    Lam, P, B = (jnp.asarray(a, jnp.complex64) for a in (Lam, P, B))
    dt = jnp.asarray(dt, jnp.float32)
    c = jnp.asarray(crandn(rng, 3, h, n), jnp.complex64)
    back = dplr_c_tilde(dplr_c_tilde(c, Lam, P, dt, 64), Lam, P, dt, 64, inverse=True)
    assert_allclose(back, c, n=64)

    A_bar, B_bar = dplr_dense(Lam, P, B, dt)
    x = jnp.asarray(crandn(rng, 5, h, n), jnp.complex64)
    u = jnp.asarray(rng.standard_normal((5, h)), jnp.float32)
    out = dplr_step(dplr_step_setup(Lam, P, B, dt), x, u)
    x_full = jnp.concatenate([x, jnp.conj(x)], -1)
    ref = jnp.einsum("hij,bhj->bhi", A_bar, x_full) + B_bar[None] * u[..., None]
    assert_allclose(out, ref[..., :n], n=2 * n)


# ---------------------------------------------------------------------------------------
# FFT convolution
# ---------------------------------------------------------------------------------------


def direct_conv(x, k, k_reverse=None):
    b, length, h = x.shape
    y = np.zeros((b, length, h))
    for t in range(length):
        for s in range(length):
            if s <= t and t - s < k.shape[1]:
                y[:, t] += k[:, t - s][None] * x[:, s]
            if k_reverse is not None and s >= t and s - t < k_reverse.shape[1]:
                y[:, t] += k_reverse[:, s - t][None] * x[:, s]
    return y


@pytest.mark.parametrize("length", [1, 17, 64])
@pytest.mark.parametrize("k_len", ["short", "equal", "long"])
@pytest.mark.parametrize("two_sided", [False, True])
def test_fft_conv_equals_direct_convolution(rng, length, k_len, two_sided):
    b, h = 2, 3
    lk = {"short": max(1, length // 3), "equal": length, "long": length + 5}[k_len]
    x = rng.standard_normal((b, length, h))
    k = rng.standard_normal((h, lk))
    kr = rng.standard_normal((h, lk + 1)) if two_sided else None
    y = fft_conv(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(k, jnp.float32),
        k_reverse=None if kr is None else jnp.asarray(kr, jnp.float32),
    )
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert_allclose(y, direct_conv(x, k, kr), n=length)


def test_fft_conv_suffix_padding_is_exact_in_both_directions(rng):
    h, total = 2, 40
    k, kr = rng.standard_normal((h, total)), rng.standard_normal((h, total))
    x = rng.standard_normal((3, total, h))
    lengths = [40, 23, 1]
    mask = np.arange(total)[None] < np.asarray(lengths)[:, None]
    y = fft_conv(jnp.asarray(np.where(mask[..., None], x, 0.0)), jnp.asarray(k), k_reverse=kr)
    for i, n in enumerate(lengths):
        alone = fft_conv(jnp.asarray(x[i : i + 1, :n]), jnp.asarray(k), k_reverse=kr)
        assert_allclose(y[i, :n], alone[0], n=total)


def test_fft_conv_bf16_and_errors():
    x = jnp.ones((1, 8, 2), jnp.bfloat16)
    assert fft_conv(x, jnp.ones((2, 8))).dtype == jnp.float32
    with pytest.raises(ValueError, match="k must be"):
        fft_conv(x, jnp.ones((3, 8)))
    with pytest.raises(ValueError, match="x must be"):
        fft_conv(jnp.ones((8, 2)), jnp.ones((2, 8)))
    with pytest.raises(ValueError, match="length"):
        dplr_kernel(
            jnp.ones((1, 2)),
            jnp.ones((1, 2)),
            jnp.ones((1, 1, 2)),
            jnp.ones((1, 2)),
            jnp.ones(1),
            0,
        )
