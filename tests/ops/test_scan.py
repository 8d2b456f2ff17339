"""linear_recurrence: every implementation against a float64 NumPy loop and the reference."""

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.ops import linear_recurrence
from ssmjax.testing import assert_allclose

IMPLS = ["sequential", "associative", "chunked"]
DTYPES = ["float32", "complex64", "bfloat16"]
LENGTHS = [1, 7, 128, 1000]
# (h0, reverse, reset)
VARIANTS = {
    "plain": (False, False, False),
    "h0": (True, False, False),
    "reverse_h0": (True, True, False),
    "reset": (False, False, True),
    "reverse_reset_h0": (True, True, True),
}


def make_inputs(rng, dtype, length, batch=2, state=(3,), h0=False, reset=False):
    """Random, never-zero inputs; |a| < 1 so long sequences stay bounded."""
    shape = (batch, length, *state)
    a = rng.uniform(0.5, 0.999, shape) * rng.choice([-1.0, 1.0], shape)
    b = rng.normal(size=shape)
    h = rng.normal(size=(batch, *state)) if h0 else None
    if dtype == "complex64":
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        b = b + 1j * rng.normal(size=shape)
        h = None if h is None else h + 1j * rng.normal(size=h.shape)
    r = rng.random((batch, length)) < 0.1 if reset else None
    return a, b, h, r


def numpy_reference(a, b, h0=None, reverse=False, reset=None):
    """The definition, in float64/complex128."""
    a = np.broadcast_to(np.asarray(a, np.complex128), b.shape)
    b = np.asarray(b, np.complex128)
    h = np.zeros((b.shape[0], *b.shape[2:]), np.complex128) if h0 is None else h0.astype(complex)
    out = np.zeros_like(b)
    for t in range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1]):
        a_t = a[:, t]
        if reset is not None:
            a_t = np.where(reset[:, t].reshape((-1,) + (1,) * (b.ndim - 2)), 0.0, a_t)
        h = a_t * h + b[:, t]
        out[:, t] = h
    return out


def to_jax(x, dtype):
    if x is None:
        return None
    if dtype == "bfloat16":
        return jnp.asarray(np.real(x), jnp.bfloat16)
    return jnp.asarray(x, dtype)


def cast_back(x, dtype):
    """What the jax input actually holds, in float64 (bf16 rounding included)."""
    return None if x is None else np.asarray(to_jax(x, dtype)).astype(np.complex128)


CASES = [
    (impl, dtype, length, variant)
    for impl, dtype, length, variant in itertools.product(IMPLS, DTYPES, LENGTHS, VARIANTS)
    if (length < 1000 and dtype != "bfloat16") or variant in ("plain", "reverse_reset_h0")
]


@pytest.mark.parametrize("impl,dtype,length,variant", CASES)
def test_forward_matches_numpy(rng, impl, dtype, length, variant):
    use_h0, reverse, use_reset = VARIANTS[variant]
    a, b, h0, reset = make_inputs(rng, dtype, length, h0=use_h0, reset=use_reset)
    out = linear_recurrence(
        to_jax(a, dtype),
        to_jax(b, dtype),
        to_jax(h0, dtype),
        reverse=reverse,
        reset=reset,
        implementation=impl,
        chunk_size=16,
    )
    assert out.dtype == jnp.dtype(dtype)
    assert out.shape == b.shape
    expected = numpy_reference(
        cast_back(a, dtype), cast_back(b, dtype), cast_back(h0, dtype), reverse, reset
    )
    if dtype != "complex64":
        expected = expected.real
    # Errors in a decaying recurrence do not grow with the length beyond ~1/(1-|a|) terms;
    # sqrt(length) is a safe upper bound for these inputs.
    assert_allclose(out, expected, n=length, err_msg=f"{impl} {dtype} {length} {variant}")


GRAD_CASES = [
    (impl, dtype, length, variant)
    for impl, dtype, length, variant in itertools.product(
        ["associative", "chunked"], ["float32", "complex64"], [1, 7, 128], VARIANTS
    )
] + [("chunked", "bfloat16", 33, "reverse_reset_h0"), ("associative", "bfloat16", 33, "h0")]


@pytest.mark.parametrize("impl,dtype,length,variant", GRAD_CASES)
def test_gradients_match_reference(rng, impl, dtype, length, variant):
    use_h0, reverse, use_reset = VARIANTS[variant]
    a, b, h0, reset = make_inputs(rng, dtype, length, h0=True, reset=use_reset)
    args = [to_jax(a, dtype), to_jax(b, dtype), to_jax(h0, dtype)]
    cot = to_jax(make_inputs(rng, dtype, length)[1], dtype)

    def run(implementation):
        f = lambda a, b, h0: linear_recurrence(
            a,
            b,
            h0 if use_h0 else None,
            reverse=reverse,
            reset=reset,
            implementation=implementation,
            chunk_size=16,
        )
        out, vjp = jax.vjp(f, *args)
        return out, vjp(cot)

    out, grads = run(impl)
    ref_out, ref_grads = run("sequential")
    assert_allclose(out, ref_out, dtype=dtype, n=length)
    for name, g, r in zip(["a", "b", "h0"], grads, ref_grads):
        assert g.dtype == r.dtype, name
        assert_allclose(g, r, dtype=dtype, n=length, kind="grad", err_msg=f"d{name}")


def test_reference_gradient_is_the_definition(rng):
    """Checks the reference's autodiff itself against float64 finite differences."""
    a, b, h0, _ = make_inputs(rng, "float32", 9, h0=True)
    probes = {0: [(0, 0, 0), (1, 4, 2), (0, 8, 1)], 1: [(0, 0, 0), (1, 4, 2)], 2: [(0, 0), (1, 2)]}
    with jax.enable_x64(True):
        args = [jnp.asarray(x, jnp.float64) for x in (a, b, h0)]

        def f(*args):
            h = linear_recurrence(*args, implementation="sequential")
            return jnp.sum(jnp.sin(h))

        grads = jax.grad(f, argnums=(0, 1, 2))(*args)
        eps = 1e-6
        for i, indices in probes.items():
            for idx in indices:

                def shifted(d, i=i, idx=idx):
                    return [x.at[idx].add(d) if j == i else x for j, x in enumerate(args)]

                num = (f(*shifted(eps)) - f(*shifted(-eps))) / (2 * eps)
                np.testing.assert_allclose(grads[i][idx], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("a_shape", ["state", "batch_state", "time_broadcast"])
def test_broadcast_a(rng, impl, a_shape):
    b = rng.normal(size=(2, 11, 3, 4))
    full = {"state": (3, 4), "batch_state": (2, 3, 4), "time_broadcast": (2, 1, 3, 1)}[a_shape]
    a = rng.uniform(-0.9, 0.9, full) + 1j * rng.uniform(-0.3, 0.3, full)
    expand = {"state": a[None, None], "batch_state": a[:, None], "time_broadcast": a}[a_shape]
    expected = numpy_reference(np.broadcast_to(expand, b.shape), b)
    out = linear_recurrence(
        jnp.asarray(a, jnp.complex64), jnp.asarray(b, jnp.float32), implementation=impl
    )
    assert out.dtype == jnp.complex64
    assert_allclose(out, expected, n=11)
    # Gradients through the broadcast reduce back to a's shape.
    g = jax.grad(lambda a: jnp.sum(jnp.abs(linear_recurrence(a, b, implementation=impl)) ** 2))(
        jnp.asarray(a, jnp.complex64)
    )
    g_ref = jax.grad(
        lambda a: jnp.sum(jnp.abs(linear_recurrence(a, b, implementation="sequential")) ** 2)
    )(jnp.asarray(a, jnp.complex64))
    assert g.shape == a.shape
    assert_allclose(g, g_ref, n=11, kind="grad")


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_vmap_and_chunk_sizes(rng, impl):
    a, b, h0, _ = make_inputs(rng, "float32", 50, h0=True)
    expected = numpy_reference(a, b, h0).real
    f = jax.jit(lambda a, b, h0: linear_recurrence(a, b, h0, implementation=impl, chunk_size=7))
    assert_allclose(
        f(a.astype(np.float32), b.astype(np.float32), h0.astype(np.float32)), expected, n=50
    )
    # vmap over an extra leading axis
    batched = jax.vmap(f)(*(np.stack([x, x]).astype(np.float32) for x in (a, b, h0)))
    assert_allclose(batched[1], expected, n=50)
    for c in (1, 50, 64):
        out = linear_recurrence(a, b, h0, implementation=impl, chunk_size=c)
        assert_allclose(out, expected, n=50)


def test_reset_restarts_packed_sequences(rng):
    """Two sequences packed into one row equal the two run separately."""
    a, b, _, _ = make_inputs(rng, "float32", 20, batch=1)
    reset = np.zeros((1, 20), bool)
    reset[0, 12] = True
    for impl in IMPLS:
        packed = linear_recurrence(a, b, reset=reset, implementation=impl)
        first = linear_recurrence(a[:, :12], b[:, :12], implementation=impl)
        second = linear_recurrence(a[:, 12:], b[:, 12:], implementation=impl)
        assert_allclose(packed, np.concatenate([first, second], axis=1), n=20)


def test_default_implementation_runs_and_matches(rng):
    a, b, h0, _ = make_inputs(rng, "complex64", 300, h0=True)
    out = linear_recurrence(a.astype(np.complex64), b.astype(np.complex64), h0.astype(np.complex64))
    assert_allclose(out, numpy_reference(a, b, h0), n=300)


def test_errors():
    b = jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match="unknown implementation"):
        linear_recurrence(b, b, implementation="magic")
    with pytest.raises(ValueError, match="h0 must have shape"):
        linear_recurrence(b, b, jnp.ones((3,)))
    with pytest.raises(ValueError, match="a must have shape"):
        linear_recurrence(jnp.ones((1, 2, 2, 5, 3)), b)
    with pytest.raises(ValueError, match="does not broadcast"):
        linear_recurrence(jnp.ones((4,)), b)
    with pytest.raises(ValueError, match="reset must have shape"):
        linear_recurrence(b, b, reset=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="batch, length"):
        linear_recurrence(jnp.ones(3), jnp.ones(3))
    with pytest.raises(TypeError, match="floating"):
        linear_recurrence(jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_recurrence(b, b, implementation="chunked", chunk_size=0)


def test_explicit_pallas_without_kernel_is_a_clear_error():
    b = jnp.ones((2, 5, 3))
    try:
        import pallas_kernels.linear_scan  # noqa: F401
    except ImportError:
        with pytest.raises(NotImplementedError, match="'pallas' cannot run"):
            linear_recurrence(b, b, implementation="pallas")
    else:
        pytest.skip("the Pallas kernel exists; its own tests cover it")


def test_fallback_chain_skips_unavailable():
    b = jnp.ones((2, 5, 3)) * 0.5
    out = linear_recurrence(b, b, implementation=["pallas", "associative"])
    assert_allclose(out, numpy_reference(np.asarray(b), np.asarray(b)).real, n=5)


def test_complex_compile_time_is_reasonable():
    """A 6-layer complex-state model (S5/LRU style) compiles forward+backward in seconds.

    The associative form carries complex numbers as real/imaginary planes, which XLA
    compiles far faster than native complex associative scans.
    """

    def model(params, x):
        for lam, w in params:
            h = linear_recurrence(lam, x.astype(jnp.complex64) @ w, implementation="associative")
            x = jnp.tanh(jnp.real(h))
        return jnp.mean(x**2)

    key = jax.random.key(0)
    params = [
        (jnp.full((16,), 0.9 + 0.1j, jnp.complex64), jax.random.normal(key, (16, 16)) * 0.1 + 0j)
        for _ in range(6)
    ]
    x = jax.random.normal(key, (2, 512, 16))
    start = time.perf_counter()
    jax.jit(jax.grad(model)).lower(params, x).compile()
    seconds = time.perf_counter() - start
    print(f"6-layer complex associative scan fwd+bwd compile: {seconds:.2f} s")
    assert seconds < 60.0
