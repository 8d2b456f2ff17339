"""ZOH and bilinear discretisation against float64 SciPy/NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ssmjax.ops.discretize import (
    discretize_bilinear,
    discretize_bilinear_dense,
    discretize_zoh,
    discretize_zoh_dense,
)
from ssmjax.testing import assert_allclose

P, H = 12, 3


def random_diagonal(rng, p=P, h=H, complex_b=True):
    """Stable complex diagonal system with log-uniform dt in [1e-4, 1] (float64)."""
    lam = -rng.uniform(0.05, 2.0, p) + 1j * rng.uniform(-20.0, 20.0, p)
    B = rng.normal(size=(p, h)) + (1j * rng.normal(size=(p, h)) if complex_b else 0.0)
    dt = np.exp(rng.uniform(np.log(1e-4), np.log(1.0), p))
    return lam, B, dt


def zoh_reference(lam, B, dt):
    """exp of the dense block matrix [[diag(lam dt), diag(dt) B], [0, 0]] (unit step)."""
    p, h = B.shape
    M = np.zeros((p + h, p + h), np.complex128)
    M[:p, :p] = np.diag(lam * dt)
    M[:p, p:] = dt[:, None] * B
    E = scipy.linalg.expm(M)
    return np.diag(E[:p, :p]), E[:p, p:]


def bilinear_reference(lam, B, dt):
    """Dense bilinear formulas with A = diag(lam dt), B = diag(dt) B and a unit step."""
    A = np.diag(lam * dt)
    eye = np.eye(len(lam))
    lhs = eye - A / 2
    A_bar = np.linalg.solve(lhs, eye + A / 2)
    B_bar = np.linalg.solve(lhs, dt[:, None] * B)
    np.testing.assert_allclose(A_bar - np.diag(np.diag(A_bar)), 0, atol=1e-12)
    return np.diag(A_bar), B_bar


def c64(x):
    return jnp.asarray(x, jnp.complex64)


def f32(x):
    return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize(
    "fn,reference",
    [(discretize_zoh, zoh_reference), (discretize_bilinear, bilinear_reference)],
    ids=["zoh", "bilinear"],
)
def test_diagonal_matches_dense_reference(rng, fn, reference):
    lam, B, dt = random_diagonal(rng)
    lam_bar, B_bar = jax.jit(fn)(c64(lam), c64(B), f32(dt))
    assert lam_bar.shape == (P,) and B_bar.shape == (P, H)
    assert lam_bar.dtype == B_bar.dtype == jnp.complex64
    want_lam, want_B = reference(lam, B, dt)
    assert_allclose(lam_bar, want_lam, n=4)
    assert_allclose(B_bar, want_B, n=4)


@pytest.mark.parametrize("fn", [discretize_zoh, discretize_bilinear], ids=["zoh", "bilinear"])
def test_diagonal_real_system_and_dtypes(rng, fn):
    lam = -rng.uniform(0.1, 3.0, P)
    B = rng.normal(size=(P, H))
    lam_bar, B_bar = fn(f32(lam), f32(B), f32(0.05))
    assert lam_bar.dtype == B_bar.dtype == jnp.float32
    ref = zoh_reference if fn is discretize_zoh else bilinear_reference
    want_lam, want_B = ref(lam.astype(np.complex128), B.astype(np.complex128), np.full(P, 0.05))
    assert_allclose(lam_bar, want_lam.real, n=4)
    assert_allclose(B_bar, want_B.real, n=4)
    # Complex Lambda with real B promotes B_bar to complex64.
    _, B_bar = fn(c64(lam), f32(B), f32(0.05))
    assert B_bar.dtype == jnp.complex64


def test_diagonal_broadcasting(rng):
    # S4D layout: Lambda (H, N), dt per channel (H, 1), B (H, N) -> (H, N).
    lam = c64(-0.5 + 1j * rng.normal(size=(H, 4)))
    dt = f32(rng.uniform(0.01, 0.1, (H, 1)))
    lam_bar, B_bar = discretize_zoh(lam, jnp.ones((H, 4), jnp.complex64), dt)
    assert lam_bar.shape == B_bar.shape == (H, 4)
    for h in range(H):
        want_lam, want_B = discretize_zoh(lam[h], jnp.ones(4, jnp.complex64), dt[h, 0])
        assert_allclose(lam_bar[h], want_lam)
        assert_allclose(B_bar[h], want_B)
    # Shared Lambda (N,), per-(H, N) dt of the same rank after an explicit expand.
    lam_bar, B_bar = discretize_bilinear(lam[0][None, :], jnp.ones((1, 4, 2)), dt)
    assert lam_bar.shape == (H, 4) and B_bar.shape == (H, 4, 2)
    # Implicit rank promotion is refused with a clear message.
    with pytest.raises(ValueError, match="rank of Lambda"):
        discretize_zoh(lam, jnp.ones((H, 4)), dt[:, 0])
    with pytest.raises(ValueError, match="at least the rank"):
        discretize_zoh(lam, jnp.ones((4,)), 0.1)


def test_zoh_small_and_zero_lambda():
    dt = 0.01
    lam = np.array([0.0, 1e-7, -1e-5 + 1e-5j, 1e-3j, -3.0 + 50.0j])
    B = np.ones((5, 1))
    lam_bar, B_bar = discretize_zoh(c64(lam), c64(B), f32(dt))
    with np.errstate(invalid="ignore"):
        want = np.where(lam == 0, dt, np.expm1(lam * dt) / np.where(lam == 0, 1, lam))
    assert_allclose(lam_bar, np.exp(lam * dt))
    assert_allclose(B_bar[:, 0], want)
    # Real zero eigenvalue (e.g. a pure integrator) gives B_bar = dt B exactly.
    _, B_bar = discretize_zoh(jnp.zeros(2), jnp.ones(2), 0.5)
    np.testing.assert_array_equal(np.asarray(B_bar), [0.5, 0.5])


def zoh_loss_np(lam, dt, B, w1, w2):
    """Real scalar of the float64 ZOH outputs, for finite differences."""
    z = lam * dt
    lam_bar = np.exp(z)
    B_bar = (np.expm1(z) / lam)[:, None] * B
    return np.sum((w1 * lam_bar).real) + np.sum((w2 * B_bar).real)


def test_zoh_gradients_match_finite_differences(rng):
    p = 6
    lam, B, dt = random_diagonal(rng, p=p, h=2)
    lam[0] = 1e-3 + 1e-3j  # |lam dt| tiny: Taylor-series branch
    dt[0] = 1e-2
    w1 = rng.normal(size=p) + 1j * rng.normal(size=p)
    w2 = rng.normal(size=(p, 2)) + 1j * rng.normal(size=(p, 2))

    def loss(lam_, dt_):
        lam_bar, B_bar = discretize_zoh(lam_, c64(B), dt_)
        return jnp.sum(jnp.real(c64(w1) * lam_bar)) + jnp.sum(jnp.real(c64(w2) * B_bar))

    g_lam, g_dt = jax.jit(jax.grad(loss, argnums=(0, 1)))(c64(lam), f32(dt))
    assert np.all(np.isfinite(np.asarray(g_lam))) and np.all(np.isfinite(np.asarray(g_dt)))

    h = 1e-6
    f = lambda lam_, dt_: zoh_loss_np(lam_, dt_, B, w1, w2)
    fd_lam, fd_dt = np.zeros(p, np.complex128), np.zeros(p)
    for i in range(p):
        e = np.eye(p)[i]
        d_re = (f(lam + h * e, dt) - f(lam - h * e, dt)) / (2 * h)
        d_im = (f(lam + 1j * h * e, dt) - f(lam - 1j * h * e, dt)) / (2 * h)
        fd_lam[i] = d_re - 1j * d_im  # JAX's convention for real f of complex z
        fd_dt[i] = (f(lam, dt + h * e * dt) - f(lam, dt - h * e * dt)) / (2 * h * dt[i])
    assert_allclose(g_lam, fd_lam, n=4, kind="grad")
    assert_allclose(g_dt, fd_dt, n=4, kind="grad")


def test_zoh_gradient_at_zero_lambda():
    # d/dLambda [(e^{Lambda dt} - 1)/Lambda] = dt^2 / 2 and d/ddt = 1 at Lambda = 0.
    dt = 0.3
    b_bar = lambda lam, t: discretize_zoh(lam, jnp.ones(1), t)[1][0]
    g_lam, g_dt = jax.grad(b_bar, argnums=(0, 1))(jnp.zeros(1), f32(dt))
    np.testing.assert_allclose(np.asarray(g_lam), [dt**2 / 2], rtol=1e-6)
    np.testing.assert_allclose(float(g_dt), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------ dense


def random_dense(rng, n, m, complex_):
    A = rng.normal(size=(n, n)) / np.sqrt(n) - np.eye(n)
    B = rng.normal(size=(n, m))
    if complex_:
        A = A + 1j * rng.normal(size=(n, n)) / np.sqrt(n)
        B = B + 1j * rng.normal(size=(n, m))
    return A, B


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_zoh_dense_matches_scipy(rng, complex_):
    n, m, dt = 6, 2, 0.37
    A, B = random_dense(rng, n, m, complex_)
    cast = c64 if complex_ else f32
    A_bar, B_bar = jax.jit(discretize_zoh_dense)(cast(A), cast(B), f32(dt))
    assert A_bar.dtype == B_bar.dtype == (jnp.complex64 if complex_ else jnp.float32)
    want_A = scipy.linalg.expm(A * dt)
    want_B = np.linalg.solve(A, (want_A - np.eye(n)) @ B)  # A^{-1}(e^{A dt} - I) B
    assert_allclose(A_bar, want_A, n=4 * n)
    assert_allclose(B_bar, want_B, n=4 * n)
    if not complex_:  # a vector B keeps its shape
        _, b_bar = discretize_zoh_dense(cast(A), cast(B[:, 0]), dt)
        assert b_bar.shape == (n,)
        assert_allclose(b_bar, want_B[:, 0], n=4 * n)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_bilinear_dense_matches_numpy(rng, complex_):
    n, m, dt = 6, 2, 0.37
    A, B = random_dense(rng, n, m, complex_)
    cast = c64 if complex_ else f32
    A_bar, B_bar = jax.jit(discretize_bilinear_dense)(cast(A), cast(B), f32(dt))
    inv = np.linalg.inv(np.eye(n) - dt / 2 * A)
    assert_allclose(A_bar, inv @ (np.eye(n) + dt / 2 * A), n=4 * n)
    assert_allclose(B_bar, inv @ (dt * B), n=4 * n)


@pytest.mark.parametrize(
    "diag_fn,dense_fn",
    [(discretize_zoh, discretize_zoh_dense), (discretize_bilinear, discretize_bilinear_dense)],
    ids=["zoh", "bilinear"],
)
def test_diagonal_agrees_with_dense(rng, diag_fn, dense_fn):
    lam, B, _ = random_diagonal(rng, p=5, h=2)
    dt = f32(0.05)
    lam_bar, B_bar = diag_fn(c64(lam), c64(B), dt)
    A_bar, B_bar_dense = dense_fn(jnp.diag(c64(lam)), c64(B), dt)
    assert_allclose(lam_bar, jnp.diag(A_bar), n=20)
    assert_allclose(B_bar, B_bar_dense, n=20)


def test_dense_invalid_shapes():
    with pytest.raises(ValueError, match="square"):
        discretize_zoh_dense(jnp.ones((2, 3)), jnp.ones(2), 0.1)
    with pytest.raises(ValueError, match="B must have shape"):
        discretize_bilinear_dense(jnp.eye(2), jnp.ones((3, 1)), 0.1)
    with pytest.raises(ValueError, match="scalar"):
        discretize_zoh_dense(jnp.eye(2), jnp.ones(2), jnp.ones(2))
