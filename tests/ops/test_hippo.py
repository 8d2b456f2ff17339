"""HiPPO matrices, NPLR form, S4D and S5 inits against closed forms (float64 NumPy)."""

import numpy as np
import pytest

from ssmjax.ops.hippo import hippo, nplr, nplr_to_dense, rank_correction, s4d_init, s5_init

MEASURES = ["legs", "legt", "lagt", "fourier"]
SIZES = [4, 16, 64]
# Exact value of Re(eigenvalues) of A + P^T P for each measure.
REAL_PART = {"legs": -0.5, "legt": 0.0, "lagt": 0.0, "fourier": 0.0}
NATURAL_RANK = {"legs": 1, "legt": 2, "lagt": 1, "fourier": 1}


def close(actual, desired, rel=1e-10, scale=None):
    """Float64 comparison with an absolute tolerance scaled by the reference's magnitude."""
    if scale is None:
        scale = float(np.max(np.abs(desired)))
    scale = max(1.0, scale)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rel * scale)


# ------------------------------------------------------------------------------ hippo


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_legs_closed_form(n):
    A, B = hippo("legs", n)
    for j in range(n):
        assert B[j] == pytest.approx(np.sqrt(2 * j + 1), rel=1e-15)
        for k in range(n):
            if j > k:
                want = -np.sqrt(2 * j + 1) * np.sqrt(2 * k + 1)
            elif j == k:
                want = -(j + 1.0)
            else:
                want = 0.0
            assert A[j, k] == pytest.approx(want, rel=1e-14, abs=0)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_legt_closed_form(n):
    A, B = hippo("legt", n)
    for j in range(n):
        assert B[j] == pytest.approx(np.sqrt(2 * j + 1), rel=1e-15)
        for k in range(n):
            sign = 1.0 if j >= k else (-1.0) ** (j - k)
            want = -sign * np.sqrt(2 * j + 1) * np.sqrt(2 * k + 1)
            assert A[j, k] == pytest.approx(want, rel=1e-14)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_lagt_closed_form(n):
    A, B = hippo("lagt", n)
    want = np.array(
        [[-1.0 if j > k else -0.5 if j == k else 0.0 for k in range(n)] for j in range(n)]
    )
    np.testing.assert_array_equal(A, want)
    np.testing.assert_array_equal(B, np.ones(n))


def test_fourier_closed_form():
    A, B = hippo("fourier", 6)
    s2, tau = np.sqrt(2.0), 2 * np.pi
    e = np.array([1.0, 0.0, s2, 0.0, s2, 0.0])
    omega = np.zeros((6, 6))
    omega[2, 3], omega[3, 2] = -tau, tau
    omega[4, 5], omega[5, 4] = -2 * tau, 2 * tau
    close(A, omega - 2 * np.outer(e, e), rel=1e-15)
    close(B, 2 * e, rel=1e-15)
    # Eigen-frequencies of the skew part are 0, 0, +-2 pi, +-4 pi.
    mu = np.sort(np.linalg.eigvalsh(-1j * omega))
    close(mu, [-2 * tau, -tau, 0, 0, tau, 2 * tau], rel=1e-13)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n", [2, 6])
def test_shapes_and_dtypes(measure, n):
    A, B = hippo(measure, n)
    assert A.shape == (n, n) and B.shape == (n,)
    assert A.dtype == np.float64 and B.dtype == np.float64
    P = rank_correction(measure, n, rank=3)
    assert P.shape == (3, n) and P.dtype == np.float64
    np.testing.assert_array_equal(P[NATURAL_RANK[measure] :], 0.0)


@pytest.mark.parametrize("measure", ["legs", "legt", "fourier"])
def test_constant_input_is_fixed_point(measure):
    # The projection of u = 1 onto the basis is e_0 (the constant basis function, norm 1).
    A, B = hippo(measure, 8)
    close(A[:, 0] + B, np.zeros(8), rel=1e-14)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="measure"):
        hippo("legx", 4)
    with pytest.raises(ValueError, match="positive"):
        hippo("legs", 0)
    with pytest.raises(ValueError, match="even"):
        hippo("fourier", 5)
    with pytest.raises(ValueError, match="rank >= 2"):
        rank_correction("legt", 4, rank=1)
    with pytest.raises(ValueError, match="even"):
        nplr("legs", 5)
    with pytest.raises(ValueError, match="S4D init"):
        s4d_init("foo", 4)


# ------------------------------------------------------------------------------ NPLR


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n", SIZES)
def test_rank_correction_gives_normal_matrix(measure, n):
    A, _ = hippo(measure, n)
    P = rank_correction(measure, n, rank=NATURAL_RANK[measure])
    AP = A + P.T @ P
    # A + P^T P = a I + skew-symmetric, hence normal.
    close(AP + AP.T, 2 * REAL_PART[measure] * np.eye(n), rel=1e-14, scale=np.abs(A).max())
    close(AP @ AP.T, AP.T @ AP, rel=1e-12)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n", SIZES)
def test_nplr_reconstructs_hippo(measure, n):
    rank = NATURAL_RANK[measure]
    A, B = hippo(measure, n)
    Lambda, P, Bt, V = nplr(measure, n, rank=rank, b_clip=None)
    assert Lambda.shape == (n // 2,) and P.shape == (rank, n // 2)
    assert Bt.shape == (n // 2,) and V.shape == (n, n // 2)
    for x in (Lambda, P, Bt, V):
        assert x.dtype == np.complex128
    A_rec, B_rec = nplr_to_dense(Lambda, P, Bt, V)
    close(A_rec, A)
    close(B_rec, B)
    # The clipped default differs only by rounding: V^* B is real by the phase convention.
    _, _, Bt_clipped, _ = nplr(measure, n, rank=rank)
    close(Bt_clipped, Bt, rel=1e-12)
    # Extra zero rows of P change nothing.
    A_rec3, _ = nplr_to_dense(*nplr(measure, n, rank=3))
    close(A_rec3, A)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("n", SIZES)
def test_nplr_conventions(measure, n):
    A, B = hippo(measure, n)
    P = rank_correction(measure, n, rank=NATURAL_RANK[measure])
    Lambda, _, Bt, V = nplr(measure, n, rank=NATURAL_RANK[measure])
    # Real part exactly a; kept half has Im >= 0, ascending.
    np.testing.assert_array_equal(Lambda.real, REAL_PART[measure])
    assert np.all(Lambda.imag >= 0)
    assert np.all(np.diff(Lambda.imag) >= 0)
    # Eigenvectors of A + P^T P; [V, conj V] is unitary.
    close((A + P.T @ P) @ V, V * Lambda[None, :], rel=1e-11)
    close(V.conj().T @ V, np.eye(n // 2), rel=1e-12)
    close(V.T @ V, np.zeros((n // 2, n // 2)), rel=1e-12)
    # Rotated B = V^* B, real and non-negative by the phase convention.
    close(Bt, V.conj().T @ B, rel=1e-12)
    close(Bt.imag, np.zeros(n // 2), rel=1e-12)
    assert np.all(Bt.real >= -1e-12)


def test_nplr_eigenvalues_match_numpy():
    # Independent check of the kept half against a general eigensolver.
    n = 16
    A, _ = hippo("legs", n)
    P = rank_correction("legs", n)
    w = np.linalg.eigvals(A + P.T @ P)
    want = np.sort(w[w.imag > 0].imag)
    Lambda, *_ = nplr("legs", n)
    close(Lambda.imag, want, rel=1e-10)


def test_nplr_fourier_zero_pair():
    # FouT has a double zero eigenvalue (constant + unused state); it is kept once.
    Lambda, _, _, V = nplr("fourier", 8)
    np.testing.assert_array_equal(Lambda[0], 0.0)
    close(Lambda.imag[1:], 2 * np.pi * np.arange(1, 4), rel=1e-12)
    v = V[:, 0]
    close(np.abs(v[:2]) ** 2, [0.5, 0.5], rel=1e-12)  # spans {e_0, e_1}, v^T v = 0
    close(np.array([np.sum(v * v)]), np.zeros(1), rel=1e-12)


# ------------------------------------------------------------------------------ S4D


@pytest.mark.parametrize("n", [2, 8, 64])
def test_s4d_lin_inv(n):
    k = np.arange(n // 2)
    A, B = s4d_init("lin", n)
    close(A, -0.5 + 1j * np.pi * k, rel=1e-15)
    np.testing.assert_array_equal(B, np.ones(n // 2))
    A, B = s4d_init("inv", n)
    close(A, -0.5 + 1j * (n / np.pi) * (n / (2 * k + 1) - 1), rel=1e-15)
    np.testing.assert_array_equal(B, np.ones(n // 2))
    assert A.dtype == B.dtype == np.complex128


@pytest.mark.parametrize("n", [4, 64])
def test_s4d_legs(n):
    A, B = s4d_init("legs", n)
    Lambda, _, Bt, _ = nplr("legs", n)
    np.testing.assert_array_equal(A.real, -0.5)
    np.testing.assert_array_equal(A, Lambda)
    np.testing.assert_array_equal(B, Bt)
    assert A.shape == B.shape == (n // 2,)


def test_s4d_real():
    A, B = s4d_init("real", 5)
    np.testing.assert_array_equal(A, [-1.0, -2.0, -3.0, -4.0, -5.0])
    np.testing.assert_array_equal(B, np.ones(5))
    assert A.dtype == np.float64


# ------------------------------------------------------------------------------ S5


@pytest.mark.parametrize("block_size,n_blocks", [(4, 1), (8, 3), (16, 2)])
def test_s5_init_conj_sym(block_size, n_blocks):
    Lambda, V, Vinv = s5_init(block_size, n_blocks)
    p, m = block_size * n_blocks, block_size * n_blocks // 2
    assert Lambda.shape == (m,) and V.shape == (p, m) and Vinv.shape == (m, p)
    np.testing.assert_array_equal(Lambda.real, -0.5)
    half = block_size // 2
    # Same block spectrum as the LegS NPLR form, tiled.
    lam_nplr, *_ = nplr("legs", block_size)
    np.testing.assert_array_equal(Lambda, np.tile(lam_nplr, n_blocks))
    # Block-diagonal, with identical blocks.
    for i in range(n_blocks):
        for j in range(n_blocks):
            blk = V[i * block_size : (i + 1) * block_size, j * half : (j + 1) * half]
            if i == j:
                np.testing.assert_array_equal(blk, V[:block_size, :half])
            else:
                np.testing.assert_array_equal(blk, 0)
    np.testing.assert_array_equal(Vinv, V.conj().T)
    close(Vinv @ V, np.eye(m), rel=1e-12)
    close(2 * (V @ Vinv).real, np.eye(p), rel=1e-12)
    # Eigenvectors of the block-diagonal HiPPO-N matrix.
    A, _ = hippo("legs", block_size)
    P = rank_correction("legs", block_size)
    S = np.kron(np.eye(n_blocks), A + P.T @ P)
    close(S @ V, V * Lambda[None, :], rel=1e-11)


def test_s5_init_full():
    Lambda, V, Vinv = s5_init(8, 2, conj_sym=False)
    assert Lambda.shape == (16,) and V.shape == (16, 16) and Vinv.shape == (16, 16)
    np.testing.assert_array_equal(Lambda.real, -0.5)
    np.testing.assert_array_equal(Lambda[4:8], Lambda[:4].conj())
    close(Vinv @ V, np.eye(16), rel=1e-12)
    close(V @ Vinv, np.eye(16), rel=1e-12)
    A, _ = hippo("legs", 8)
    P = rank_correction("legs", 8)
    S = np.kron(np.eye(2), A + P.T @ P)
    close(V @ np.diag(Lambda) @ Vinv, S, rel=1e-12)
    with pytest.raises(ValueError, match="even"):
        s5_init(5, 2)
