"""HiPPO transition matrices, their normal-plus-low-rank (NPLR) form, and S4D/S5 inits.

Everything here runs once at initialisation, in float64 NumPy, and returns NumPy arrays
(``float64`` or ``complex128``); layers cast the results to their parameter dtype.

Conventions used throughout this module
---------------------------------------

* ``n`` is always the *full* (real) state size of the HiPPO system, ``A: (n, n)``.
* The measures ``"legs"``, ``"legt"``, ``"lagt"`` and ``"fourier"`` follow
  ``state-spaces/s4`` (``src/models/hippo/hippo.py``); each function documents its exact
  formula. ``"legt"`` and ``"fourier"`` use a window of length 1 (the HiPPO / "How to Train
  Your HiPPO" papers); the current S4 code's ``legt`` and ``fourier`` are these matrices
  halved, i.e. ``A / 2, B / 2`` (window length 2).
* **Conjugate symmetry.** A real ``n``-state system with complex eigenvalues is stored by one
  eigenvalue of each conjugate pair, ``n // 2`` complex states, and its output is recovered
  as ``2 * Re(...)``. This module keeps the half with **non-negative imaginary part**
  (the S4D paper's ``A_k = -1/2 + i*pi*k``, LRU's positive angles); eigenvalues computed
  by :func:`nplr` and :func:`s5_init` are ordered by increasing imaginary part, the S4D
  formulas by ``k``. The S4 and S5 code bases keep the other (conjugate) half; the two choices
  give identical real-valued models (conjugate ``Lambda``, ``B`` and ``C`` together).
* **Eigenvector phases.** Each eigenvector ``v`` is defined up to a unit phase; we fix it
  so that ``v^* B`` is real and non-negative (``B`` the HiPPO input vector), which makes the
  results deterministic across LAPACK builds and the rotated ``B`` real.
"""

import math

import numpy as np

__all__ = [
    "hippo",
    "nplr",
    "nplr_to_dense",
    "rank_correction",
    "s4d_init",
    "s5_init",
]

MEASURES = ("legs", "legt", "lagt", "fourier")
S4D_INITS = ("lin", "inv", "legs", "real")


def _check_size(n: int, *, even: bool = False, what: str = "n") -> int:
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")
    n = int(n)
    if even and n % 2:
        raise ValueError(f"{what} must be even (states come in complex-conjugate pairs), got {n}")
    return n


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ValueError(f"unknown HiPPO measure {measure!r}; expected one of {MEASURES}")


def _fourier_endpoint(n: int) -> np.ndarray:
    """``e_j = p_j(0)`` for the Fourier basis laid out as in :func:`hippo`."""
    e = np.zeros(n)
    e[0::2] = math.sqrt(2.0)
    e[0] = 1.0
    return e


def hippo(measure: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO transition matrices ``A`` and ``B`` of the ODE ``c'(t) = A c(t) + B u(t)``.

    Indices ``j, k`` run over ``0 .. n-1`` (``j`` the row). With ``r_j = sqrt(2j + 1)``:

    * ``"legs"`` (scaled Legendre, S4's default):
      ``A_jk = -r_j r_k`` if ``j > k``, ``-(j + 1)`` if ``j = k``, ``0`` if ``j < k``;
      ``B_j = r_j``.
    * ``"legt"`` (translated Legendre, window length 1, the HiPPO paper / S4 v1 code):
      ``A_jk = -r_j r_k`` if ``j >= k``, ``-(-1)^(j-k) r_j r_k`` if ``j < k``;
      ``B_j = r_j``. (Current S4 code halves both: window length 2.)
    * ``"lagt"`` (translated Laguerre, S4's ``lagt`` with ``beta = 1``):
      ``A_jk = -1`` if ``j > k``, ``-1/2`` if ``j = k``, ``0`` if ``j < k``; ``B_j = 1``.
    * ``"fourier"`` (FouT of "How to Train Your HiPPO", window length 1; S4 code's
      ``fourier2``; ``n`` even): state ``0`` is the constant basis function, state ``1`` is
      unused (``sin(0)``, identically zero), states ``(2k, 2k+1)`` for ``k >= 1`` are
      ``sqrt(2) cos(2 pi k t)`` and ``sqrt(2) sin(2 pi k t)``. With the endpoint values
      ``e = (1, 0, sqrt2, 0, sqrt2, 0, ...)`` and the skew-symmetric frequency matrix
      ``Omega`` (``Omega_{2k,2k+1} = -2 pi k``, ``Omega_{2k+1,2k} = 2 pi k``, else 0):
      ``A = Omega - 2 e e^T`` and ``B = 2 e`` (so ``A = Omega - B B^T / 2``).

    Args:
      measure: one of ``"legs"``, ``"legt"``, ``"lagt"``, ``"fourier"``.
      n: state size (even for ``"fourier"``).

    Returns:
      ``(A, B)``: float64 arrays of shapes ``(n, n)`` and ``(n,)``.

    >>> A, B = hippo("legs", 4)
    >>> A.shape, B.shape, A.dtype
    ((4, 4), (4,), dtype('float64'))
    >>> print(A[1, 0], A[1, 1], A[0, 1])
    -1.732... -2.0 0.0
    """
    _check_measure(measure)
    n = _check_size(n, even=measure == "fourier")
    q = np.arange(n, dtype=np.float64)
    row, col = q[:, None], q[None, :]
    r = np.sqrt(2.0 * q + 1.0)
    if measure == "legs":
        A = np.where(row > col, -np.outer(r, r), 0.0) - np.diag(q + 1.0)
        B = r
    elif measure == "legt":
        sign = np.where(row >= col, 1.0, (-1.0) ** (row - col))
        A = -np.outer(r, r) * sign
        B = r
    elif measure == "lagt":
        A = -np.tril(np.ones((n, n)), -1) - 0.5 * np.eye(n)
        B = np.ones(n)
    else:  # fourier
        freqs = np.zeros(n - 1)
        freqs[0::2] = 2.0 * np.pi * np.arange(n // 2)  # superdiagonal entry (2k, 2k+1)
        omega = -np.diag(freqs, 1) + np.diag(freqs, -1)
        e = _fourier_endpoint(n)
        A = omega - 2.0 * np.outer(e, e)
        B = 2.0 * e
    return A, B


def rank_correction(measure: str, n: int, rank: int = 1) -> np.ndarray:
    """Low-rank ``P`` such that ``A + P^T P`` is normal (``A`` from :func:`hippo`).

    In fact ``A + P^T P = a I + S`` with ``S`` real skew-symmetric and ``a = -1/2`` for
    ``"legs"``, ``a = 0`` for the others:

    * ``"legs"``: ``P_0j = sqrt(j + 1/2)`` (``= B / sqrt(2)``), natural rank 1.
    * ``"legt"``: ``P_0j = sqrt(2j + 1)`` for odd ``j`` (0 for even), ``P_1j = sqrt(2j + 1)``
      for even ``j`` (0 for odd): natural rank 2, so ``rank >= 2`` is required.
    * ``"lagt"``: ``P_0j = sqrt(1/2)`` (``= B / sqrt(2)``), natural rank 1.
    * ``"fourier"``: ``P_0 = sqrt(2) e`` (``= B / sqrt(2)``), natural rank 1.

    Rows beyond the natural rank are zero.

    Args:
      measure: one of ``"legs"``, ``"legt"``, ``"lagt"``, ``"fourier"``.
      n: state size.
      rank: number of rows of ``P`` (at least the measure's natural rank).

    Returns:
      ``P``: float64 array of shape ``(rank, n)``.

    >>> P = rank_correction("legs", 4)
    >>> A, _ = hippo("legs", 4)
    >>> S = A + P.T @ P + 0.5 * np.eye(4)
    >>> bool(np.allclose(S, -S.T))
    True
    """
    _check_measure(measure)
    n = _check_size(n, even=measure == "fourier")
    q = np.arange(n, dtype=np.float64)
    if measure == "legs":
        P = np.sqrt(q + 0.5)[None, :]
    elif measure == "legt":
        r = np.sqrt(2.0 * q + 1.0)
        odd = (np.arange(n) % 2).astype(bool)
        P = np.stack([np.where(odd, r, 0.0), np.where(odd, 0.0, r)])
    elif measure == "lagt":
        P = np.full((1, n), math.sqrt(0.5))
    else:  # fourier
        P = math.sqrt(2.0) * _fourier_endpoint(n)[None, :]
    natural = P.shape[0]
    if int(rank) != rank or rank < natural:
        raise ValueError(f"measure {measure!r} needs rank >= {natural}, got {rank!r}")
    return np.concatenate([P, np.zeros((int(rank) - natural, n))], axis=0)


def _diagonalize_normal(AP: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposes ``AP = a I + S`` (``S`` real skew), keeping one eigenvalue per pair.

    Returns ``(w, V)``, ``w: (n/2,)`` with ``Im w >= 0`` ascending, ``V: (n, n/2)`` with
    orthonormal columns, ``V^T V = 0`` (so ``[V, conj V]`` is unitary), and the phase of each
    column chosen so that ``V^* b >= 0`` (real).
    """
    n = AP.shape[0]
    a = float(np.round(np.mean(np.diag(AP)), 12))  # exact values are rational (-1/2, 0)
    S = AP - a * np.eye(n)
    S = 0.5 * (S - S.T)
    err = np.max(np.abs(AP - a * np.eye(n) - S)) if n else 0.0
    if err > 1e-8 * max(1.0, float(np.max(np.abs(AP)))):
        raise ValueError(f"A + P^T P is not (scalar + skew-symmetric); deviation {err:.3g}")
    # -iS is Hermitian; S v = i mu v  <=>  (-iS) v = mu v.
    mu, U = np.linalg.eigh(-1j * S)  # ascending
    tol = 1e-9 * max(1.0, float(np.max(np.abs(mu))))
    zero = np.abs(mu) <= tol
    n_zero = int(np.sum(zero))
    if n_zero % 2:
        raise ValueError("odd number of zero eigenvalues: cannot pair conjugate states")
    pos = mu > tol
    w_parts = [np.full(n_zero // 2, a + 0j)]
    v_parts = []
    if n_zero:
        # The null space of S is real: take a real orthonormal basis u_1..u_z of it and pair
        # v = (u_{2i} + i u_{2i+1}) / sqrt(2), whose conjugate is orthogonal to it.
        Z = U[:, zero]
        u_basis, _, _ = np.linalg.svd(np.concatenate([Z.real, Z.imag], axis=1))
        u_basis = u_basis[:, :n_zero]
        v_parts.append((u_basis[:, 0::2] + 1j * u_basis[:, 1::2]) / math.sqrt(2.0))
    w_parts.append(a + 1j * mu[pos])
    v_parts.append(U[:, pos])
    w = np.concatenate(w_parts)
    V = np.concatenate(v_parts, axis=1) if v_parts else np.zeros((n, 0), np.complex128)
    if w.shape[0] != n // 2:
        raise ValueError("eigenvalues of A + P^T P do not come in conjugate pairs")
    # Phase convention: v^* b real and >= 0; when v^* b == 0, the largest entry of v is made
    # real and positive instead.
    c = V.conj().T @ b
    big = np.abs(c) > 1e-12 * max(1.0, float(np.linalg.norm(b)))
    idx = np.argmax(np.abs(V), axis=0)
    fallback = V[idx, np.arange(V.shape[1])]
    ref = np.where(big, c, np.conj(fallback))
    V = V * (ref / np.abs(ref))[None, :]
    return w.astype(np.complex128), V.astype(np.complex128)


def nplr(
    measure: str, n: int, rank: int = 1, *, b_clip: float | None = 2.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normal-plus-low-rank form of a HiPPO matrix, halved by conjugate symmetry (S4).

    With ``A, B = hippo(measure, n)`` and ``P = rank_correction(measure, n, rank)``, the
    matrix ``A + P^T P = a I + S`` is normal (``S`` skew-symmetric). Its eigenvalues are
    ``a + i mu`` with ``a = mean(diag(A + P^T P))`` (``-1/2`` for legs, ``0`` otherwise) and
    ``mu`` from ``eigh(-i S)`` in float64. They come in conjugate pairs; we keep the ``n/2``
    with ``mu >= 0`` in increasing order (a pair of zero eigenvalues, as in ``"fourier"``, is
    kept once with eigenvector ``(u1 + i u2)/sqrt(2)`` for a real basis ``u1, u2`` of the
    null space). With ``V`` the kept eigenvectors and ``W = [V, conj(V)]`` (unitary):

        ``A = W (diag([Lambda, conj Lambda]) - Q^T conj(Q)) W^*`` with ``Q = [P, conj P]``,
        ``B_hippo = 2 Re(V B)``

    where ``Lambda, P, B`` are the returned (rotated) values ``P <- V^* P^T`` (one row per
    rank) and ``B <- V^* B_hippo``. :func:`nplr_to_dense` evaluates this. Each eigenvector's
    phase makes ``V^* B_hippo`` real and non-negative, so the S4 safeguard of clipping
    ``Im(B)`` to ``[-b_clip, b_clip]`` (kept for compatibility) is a no-op up to rounding.

    Args:
      measure: one of ``"legs"``, ``"legt"``, ``"lagt"``, ``"fourier"``.
      n: full (real) state size, even.
      rank: rank of the correction (``"legt"`` needs ``rank >= 2``).
      b_clip: clip for ``Im(B)``; ``None`` disables it.

    Returns:
      ``(Lambda, P, B, V)``: complex128 arrays of shapes ``(n/2,)``, ``(rank, n/2)``,
      ``(n/2,)`` and ``(n, n/2)``.

    >>> Lambda, P, B, V = nplr("legs", 8)
    >>> Lambda.shape, P.shape, B.shape, V.shape
    ((4,), (1, 4), (4,), (8, 4))
    >>> bool(np.all(Lambda.real == -0.5)), bool(np.all(np.diff(Lambda.imag) > 0))
    (True, True)
    """
    _check_measure(measure)
    n = _check_size(n, even=True)
    A, B = hippo(measure, n)
    P = rank_correction(measure, n, rank)
    w, V = _diagonalize_normal(A + P.T @ P, B)
    Vh = V.conj().T
    B_rot = Vh @ B
    P_rot = (Vh @ P.T).T
    if b_clip is not None:
        B_rot = B_rot.real + 1j * np.clip(B_rot.imag, -b_clip, b_clip)
    return w, P_rot.astype(np.complex128), B_rot.astype(np.complex128), V


def nplr_to_dense(
    Lambda: np.ndarray, P: np.ndarray, B: np.ndarray, V: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rebuilds the real ``(A, B)`` from the halved NPLR form of :func:`nplr`.

    Appends the conjugate half: ``W = [V, conj V]``, ``L = [Lambda, conj Lambda]``,
    ``Q = [P, conj P]`` (along the state axis), then
    ``A = W (diag(L) - Q^T conj(Q)) W^*`` and ``B = W [B, conj B] = 2 Re(V B)``.

    Args:
      Lambda: ``(n/2,)`` kept eigenvalues.
      P: ``(rank, n/2)`` rotated low-rank factor.
      B: ``(n/2,)`` rotated input vector.
      V: ``(n, n/2)`` kept eigenvectors.

    Returns:
      ``(A, B)``: float64 arrays of shapes ``(n, n)`` and ``(n,)`` (real parts; the imaginary
      parts vanish up to rounding when the inputs come from :func:`nplr` without clipping).

    >>> A, B = nplr_to_dense(*nplr("legs", 8))
    >>> bool(np.allclose(A, hippo("legs", 8)[0]))
    True
    """
    Lambda, P, B, V = (np.asarray(x, np.complex128) for x in (Lambda, P, B, V))
    P = np.atleast_2d(P)
    W = np.concatenate([V, V.conj()], axis=1)
    L = np.concatenate([Lambda, Lambda.conj()])
    Q = np.concatenate([P, P.conj()], axis=1)
    A = W @ (np.diag(L) - Q.T @ Q.conj()) @ W.conj().T
    B_full = 2.0 * (V @ B).real
    return A.real, B_full


def s4d_init(init: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal state matrices of S4D (Gu et al. 2022, "On the Parameterization...").

    For the complex families ``n`` is the full real state size and ``n/2`` complex states
    are returned, one per conjugate pair, with ``Im A >= 0`` (the conjugates are implied and
    the layer outputs ``2 Re(...)``). With ``k = 0 .. n/2 - 1``:

    * ``"lin"`` (S4D-Lin): ``A_k = -1/2 + i pi k``, ``B_k = 1``.
    * ``"inv"`` (S4D-Inv): ``A_k = -1/2 + i (n/pi) (n/(2k+1) - 1)``, ``B_k = 1``.
    * ``"legs"`` (S4D-LegS): ``A = Lambda`` and ``B`` from ``nplr("legs", n)``: real part
      exactly ``-1/2``, imaginary parts the LegS NPLR eigenvalues, ``B = V^* B_LegS``.

    For ``"real"`` (S4D-Real, Mamba's init) the ``n`` states are real:
    ``A_k = -(k + 1)`` for ``k = 0 .. n-1`` and ``B_k = 1``, as float64.

    Args:
      init: ``"lin"``, ``"inv"``, ``"legs"`` or ``"real"``.
      n: full state size (even for the complex families).

    Returns:
      ``(A, B)``: complex128 arrays of shape ``(n/2,)`` for the complex families, float64
      arrays of shape ``(n,)`` for ``"real"``.

    >>> A, B = s4d_init("lin", 8)
    >>> A.shape, A.dtype
    ((4,), dtype('complex128'))
    >>> print(A[1])
    (-0.5+3.14159...j)
    >>> s4d_init("real", 3)[0]
    array([-1., -2., -3.])
    """
    if init not in S4D_INITS:
        raise ValueError(f"unknown S4D init {init!r}; expected one of {S4D_INITS}")
    if init == "real":
        n = _check_size(n)
        return -(np.arange(n, dtype=np.float64) + 1.0), np.ones(n)
    n = _check_size(n, even=True)
    if init == "legs":
        Lambda, _, B, _ = nplr("legs", n)
        return Lambda, B
    k = np.arange(n // 2, dtype=np.float64)
    if init == "lin":
        imag = np.pi * k
    else:  # inv
        imag = n / np.pi * (n / (2.0 * k + 1.0) - 1.0)
    return (-0.5 + 1j * imag).astype(np.complex128), np.ones(n // 2, np.complex128)


def _block_diag(block: np.ndarray, n_blocks: int) -> np.ndarray:
    return np.kron(np.eye(n_blocks), block)


def s5_init(
    block_size: int, n_blocks: int = 1, *, conj_sym: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S5's block-diagonal HiPPO-N initialisation (Smith et al. 2023).

    One block: ``S = A_LegS + P^T P`` with ``P_j = sqrt(j + 1/2)`` (the normal part of LegS,
    "HiPPO-N") is diagonalised as in :func:`nplr`: ``Re Lambda = mean(diag S) = -1/2``
    exactly, ``Im Lambda`` from ``eigh(-i (S + I/2))``. With ``conj_sym=True`` the
    ``block_size/2`` eigenvalues with ``Im >= 0`` are kept (ascending); otherwise all
    ``block_size`` are returned, ordered as ``[kept half, its conjugates]``. ``Lambda`` is
    tiled over the blocks, ``V = block_diag(V_1, ..., V_1)`` and ``Vinv = V^*`` (also
    block-diagonal). ``Vinv @ V = I``; with ``conj_sym=True`` the full-space identity is
    ``2 Re(V @ Vinv) = I`` (each block ``V_1 V_1^* + conj(V_1 V_1^*) = I``).

    Args:
      block_size: state size of one HiPPO block (even when ``conj_sym``).
      n_blocks: number of blocks ``J``.
      conj_sym: keep one eigenvalue per conjugate pair.

    Returns:
      ``(Lambda, V, Vinv)``, complex128, with ``p = n_blocks * block_size`` real states and
      ``m = p/2`` if ``conj_sym`` else ``p``: ``Lambda: (m,)``, ``V: (p, m)``,
      ``Vinv: (m, p)``.

    >>> Lambda, V, Vinv = s5_init(8, 2)
    >>> Lambda.shape, V.shape, Vinv.shape
    ((8,), (16, 8), (8, 16))
    >>> bool(np.allclose(Vinv @ V, np.eye(8)))
    True
    """
    block_size = _check_size(block_size, even=True, what="block_size")
    n_blocks = _check_size(n_blocks, what="n_blocks")
    A, B = hippo("legs", block_size)
    P = rank_correction("legs", block_size)
    w, V1 = _diagonalize_normal(A + P.T @ P, B)
    if not conj_sym:
        w = np.concatenate([w, w.conj()])
        V1 = np.concatenate([V1, V1.conj()], axis=1)
    Lambda = np.tile(w, n_blocks)
    V = _block_diag(V1, n_blocks).astype(np.complex128)
    Vinv = _block_diag(V1.conj().T, n_blocks).astype(np.complex128)
    return Lambda, V, Vinv
