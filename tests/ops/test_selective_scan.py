"""Tests for ssmjax.ops.selective_scan (Mamba-1).

Every implementation is checked against a float64 NumPy loop (forward and final state) and
against the ``"sequential"`` implementation (gradients w.r.t. every input, with random
cotangents on ``y`` and the final state). The sequential gradients themselves are checked
against central finite differences of the NumPy loop.
"""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssmjax.ops import selective_scan as selective_scan_public
from ssmjax.ops.selective_scan import AUTO_CHUNKED_MIN_LENGTH, _auto_chain, selective_scan
from ssmjax.testing import assert_allclose

IMPLS = ("sequential", "associative", "chunked")
DIFF_ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0")


def selective_scan_numpy(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, h0=None):
    """Float64 loop transcription of mamba_ssm's selective_scan_ref (batch-major layout)."""
    f64 = lambda v: None if v is None else np.asarray(v, np.float64)
    x, dt, A, B, C, D, z, dt_bias, h0 = map(f64, (x, dt, A, B, C, D, z, dt_bias, h0))
    b, length, d = x.shape
    n = A.shape[1]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = np.log1p(np.exp(dt))

    def per_channel(M):  # (b, l, n) or (b, l, g, n) -> (b, l, d, n)
        if M.ndim == 3:
            return np.broadcast_to(M[:, :, None, :], (b, length, d, n))
        g = M.shape[2]
        return M[:, :, np.arange(d) // (d // g), :]

    B, C = per_channel(B), per_channel(C)
    h = np.zeros((b, d, n)) if h0 is None else h0.copy()
    y = np.zeros((b, length, d))
    for t in range(length):
        dA = np.exp(dt[:, t, :, None] * A)
        h = dA * h + dt[:, t, :, None] * B[:, t] * x[:, t, :, None]
        y[:, t] = np.sum(h * C[:, t], axis=-1)
    if D is not None:
        y = y + D * x
    if z is not None:
        y = y * z / (1.0 + np.exp(-z))
    return y, h


def make_inputs(
    rng, *, b=2, length=63, d=8, n=4, g=1, gate=True, skip=True, bias=True, h0=True, softplus=True
):
    """Random inputs (never zeros), float32, as a dict of selective_scan arguments.

    ``dt`` is drawn so that the effective step (after bias and softplus when ``softplus``)
    lies in about 0.01..0.5.
    """
    bc_shape = (b, length, n) if g == 1 else (b, length, g, n)
    if softplus:  # softplus(-4..-0.7) ~ 0.02..0.4
        dt = rng.normal(size=(b, length, d)) * 0.5 - (0.0 if bias else 2.0)
        dt_bias = rng.uniform(-3.0, -1.0, size=(d,))
    else:
        dt = rng.uniform(0.01, 0.3, size=(b, length, d))
        dt_bias = rng.uniform(0.01, 0.1, size=(d,))
    args = {
        "x": rng.normal(size=(b, length, d)),
        "dt": dt,
        "A": -np.exp(rng.normal(size=(d, n)) * 0.5),
        "B": rng.normal(size=bc_shape),
        "C": rng.normal(size=bc_shape),
        "D": rng.normal(size=(d,)) if skip else None,
        "z": rng.normal(size=(b, length, d)) if gate else None,
        "dt_bias": dt_bias if bias else None,
        "h0": rng.normal(size=(b, d, n)) if h0 else None,
    }
    return {k: None if v is None else jnp.asarray(v, jnp.float32) for k, v in args.items()}


# The tests' programs are tiny: skip XLA's slow backend optimisations (compile time dominates).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.partial(
    jax.jit,
    static_argnames=("implementation", "dt_softplus", "chunk_size"),
    compiler_options=_FAST_COMPILE,
)
def _fwd_and_grads(args, cts, *, implementation, dt_softplus, chunk_size):
    """(y, h_last) and the gradients of <y, ct_y> + <h_last, ct_h> w.r.t. all inputs."""

    def f(a):
        return selective_scan(
            **a,
            dt_softplus=dt_softplus,
            return_final_state=True,
            implementation=implementation,
            chunk_size=chunk_size,
        )

    out, vjp = jax.vjp(f, args)
    (grads,) = vjp(cts)
    return out, grads


# (name, length, options, dtype). Channel sizes stay tiny so the suite runs in seconds.
# "all" = z, D, dt_bias + softplus and h0. The chunked form runs with chunk_size=16 here:
# one partial chunk (l=1), full chunks plus a partial one (l=63), full chunks only (l=256).
CASES = {
    "l1_all": (1, dict(), jnp.float32),
    "l63_plain": (
        63,
        dict(gate=False, skip=False, bias=False, h0=False, softplus=False),
        jnp.float32,
    ),
    "l63_all_g2_bf16": (63, dict(g=2), jnp.bfloat16),
    "l256_g2_z_bias_no_softplus": (
        256,
        dict(g=2, n=16, d=4, skip=False, softplus=False),
        jnp.float32,
    ),
}


@functools.cache
def _case(name):
    """Inputs, cotangents and the NumPy reference of a case (shared by all implementations)."""
    length, opts, dtype = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    args = make_inputs(rng, length=length, **opts)
    args = {k: None if v is None else v.astype(dtype) for k, v in args.items()}
    # Activations in the input dtype; state, A, D and dt_bias stay fp32 like Mamba's params.
    for k in ("A", "D", "dt_bias", "h0"):
        if args[k] is not None:
            args[k] = args[k].astype(jnp.float32)
    softplus = opts.get("softplus", True)
    b, d, n = args["x"].shape[0], args["x"].shape[2], args["A"].shape[1]
    cts = (
        jnp.asarray(rng.normal(size=(b, length, d)), dtype),
        jnp.asarray(rng.normal(size=(b, d, n)), jnp.float32),
    )
    ref = selective_scan_numpy(**{k: _np(v) for k, v in args.items()}, dt_softplus=softplus)
    return args, cts, softplus, ref


def _np(v):
    return None if v is None else np.asarray(v.astype(jnp.float32))


@functools.cache
def _run(name, implementation, chunk_size=16):
    args, cts, softplus, _ = _case(name)
    live = {k: v for k, v in args.items() if v is not None}
    return _fwd_and_grads(
        live, cts, implementation=implementation, dt_softplus=softplus, chunk_size=chunk_size
    )


@pytest.mark.parametrize("implementation", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy_and_sequential(case, implementation):
    args, _, _, (y_ref, h_ref) = _case(case)
    length, _, dtype = CASES[case]
    (y, h), grads = _run(case, implementation)
    assert y.dtype == dtype and y.shape == args["x"].shape
    assert h.dtype == jnp.float32 and h.shape == y_ref.shape[:1] + args["A"].shape
    assert_allclose(y, y_ref, dtype=dtype, n=length, err_msg="y")
    # The state is computed in fp32 from the (rounded) inputs: fp32 tolerance for any dtype.
    assert_allclose(h, h_ref, dtype=jnp.float32, n=length, err_msg="h_last")
    if implementation == "sequential":
        return
    _, grads_ref = _run(case, "sequential")
    assert set(grads) == set(grads_ref)
    for k in grads:
        assert grads[k].dtype == args[k].dtype, k
        tol = dict(dtype=args[k].dtype, n=length, kind="grad")
        assert_allclose(grads[k], grads_ref[k], **tol, err_msg=f"d{k}")


def test_long_sequence_default_chunk():
    """l=1000 (not a multiple of the default chunk), D and softplus without bias."""
    rng = np.random.default_rng(0)
    args = make_inputs(rng, length=1000, d=4, n=4, gate=False, bias=False, h0=False)
    live = {k: v for k, v in args.items() if v is not None}
    cts = (jnp.asarray(rng.normal(size=(2, 1000, 4)), jnp.float32), jnp.ones((2, 4, 4)))
    y_ref, h_ref = selective_scan_numpy(**{k: _np(v) for k, v in live.items()}, dt_softplus=True)
    run = functools.partial(_fwd_and_grads, live, cts, dt_softplus=True, chunk_size=64)
    (y, h), grads = run(implementation="chunked")
    assert_allclose(y, y_ref, n=1000)
    assert_allclose(h, h_ref, n=1000)
    _, grads_ref = run(implementation="sequential")
    for k in grads:
        assert_allclose(grads[k], grads_ref[k], n=1000, kind="grad", err_msg=f"d{k}")


def test_sequential_gradients_match_finite_differences():
    """Checks the reference's autodiff against central differences of the float64 loop."""
    rng = np.random.default_rng(1)
    args = make_inputs(rng, b=1, length=5, d=4, n=3, g=2)
    ct_y = rng.normal(size=(1, 5, 4)).astype(np.float32)
    cts = (jnp.asarray(ct_y), jnp.ones((1, 4, 3)))
    _, grads = _fwd_and_grads(
        args, cts, implementation="sequential", dt_softplus=True, chunk_size=16
    )
    base = {k: np.asarray(v, np.float64) for k, v in args.items()}

    def loss(p):
        y, h = selective_scan_numpy(**p, dt_softplus=True)
        return np.sum(y * ct_y) + np.sum(h)

    eps = 1e-6
    for k in DIFF_ARGS:
        fd = np.zeros_like(base[k])
        for i in np.ndindex(fd.shape):
            plus, minus = dict(base), dict(base)
            plus[k], minus[k] = base[k].copy(), base[k].copy()
            plus[k][i] += eps
            minus[k][i] -= eps
            fd[i] = (loss(plus) - loss(minus)) / (2 * eps)
        assert_allclose(grads[k], fd, dtype=jnp.float32, n=5, kind="grad", err_msg=f"d{k}")


def test_auto_and_chain(rng):
    args = make_inputs(rng, length=6, d=4, n=4)
    run = lambda impl: jax.jit(
        lambda a: selective_scan(**a, dt_softplus=True, implementation=impl),
        compiler_options=_FAST_COMPILE,
    )(args)
    ref = selective_scan_numpy(**{k: _np(v) for k, v in args.items()}, dt_softplus=True)[0]
    assert_allclose(run(None), ref, n=6)
    assert_allclose(run(["chunked", "associative"]), ref, n=6)
    assert _auto_chain(AUTO_CHUNKED_MIN_LENGTH) == ("associative",)
    assert _auto_chain(AUTO_CHUNKED_MIN_LENGTH + 1) == ("chunked",)
    assert selective_scan_public is selective_scan


def test_mixed_groups_and_vmap(rng):
    """B shared by all channels and C in 4 groups; vmap over an extra leading axis."""
    args = make_inputs(rng, length=9, d=8, n=4, h0=False)
    args["C"] = jnp.asarray(rng.normal(size=(2, 9, 4, 4)), jnp.float32)
    live = {k: v for k, v in args.items() if v is not None}
    y_ref, h_ref = selective_scan_numpy(**{k: _np(v) for k, v in live.items()}, dt_softplus=True)
    cts = (jnp.asarray(rng.normal(size=(2, 9, 8)), jnp.float32), jnp.ones((2, 8, 4)))
    run = functools.partial(_fwd_and_grads, live, cts, dt_softplus=True, chunk_size=4)
    (y, h), grads = run(implementation="chunked")
    assert_allclose(y, y_ref, n=9)
    assert_allclose(h, h_ref, n=9)
    _, grads_ref = run(implementation="sequential")
    for k in grads:
        assert grads[k].shape == live[k].shape
        assert_allclose(grads[k], grads_ref[k], n=9, kind="grad", err_msg=f"d{k}")

    f = lambda a: selective_scan(**a, dt_softplus=True, implementation="chunked", chunk_size=4)
    stacked = {k: jnp.stack([v, v + 0.5]) for k, v in live.items()}
    ys = jax.jit(jax.vmap(f), compiler_options=_FAST_COMPILE)(stacked)
    assert_allclose(ys[0], y_ref, n=9)
    y1 = selective_scan_numpy(**{k: _np(v[1]) for k, v in stacked.items()}, dt_softplus=True)[0]
    assert_allclose(ys[1], y1, n=9)


def test_zero_length(rng):
    args = make_inputs(rng, length=0, d=4, n=4)
    y, h = selective_scan(**args, dt_softplus=True, return_final_state=True)
    assert y.shape == (2, 0, 4)
    np.testing.assert_array_equal(h, args["h0"])


def test_memory_chunked_vs_associative():
    """Chunked training memory stays far below one (b, l, d, n) fp32 materialisation.

    Only lowered and compiled, never run. chunk_size=64: the chunk's work space grows with
    it (on CPU ~12 fp32 (b, chunk, d, n) arrays; XLA:GPU fuses more).
    """
    b, length, d, n = 2, 4096, 256, 16
    materialised = b * length * d * n * 4  # 134 MB
    f32 = jnp.float32
    shapes = (
        jax.ShapeDtypeStruct((b, length, d), f32),  # x
        jax.ShapeDtypeStruct((b, length, d), f32),  # dt
        jax.ShapeDtypeStruct((d, n), f32),  # A
        jax.ShapeDtypeStruct((b, length, n), f32),  # B
        jax.ShapeDtypeStruct((b, length, n), f32),  # C
        jax.ShapeDtypeStruct((d,), f32),  # D
    )

    def temp_bytes(implementation):
        def loss(x, dt, A, B, C, D):
            kw = dict(dt_softplus=True, implementation=implementation, chunk_size=64)
            return jnp.sum(selective_scan(x, dt, A, B, C, D, **kw))

        # The backend optimisation level changes code generation, not buffer assignment.
        grad = jax.jit(jax.grad(loss, argnums=tuple(range(6))), compiler_options=_FAST_COMPILE)
        analysis = grad.lower(*shapes).compile().memory_analysis()
        if analysis is None or not hasattr(analysis, "temp_size_in_bytes"):
            pytest.skip("memory_analysis() is not available on this backend")
        return analysis.temp_size_in_bytes

    chunked = temp_bytes("chunked")
    associative = temp_bytes("associative")
    print(
        f"\nselective_scan grad temp bytes at {(b, length, d, n)}: chunked(64) "
        f"{chunked / 1e6:.1f} MB, associative {associative / 1e6:.1f} MB, "
        f"(b, l, d, n) fp32 {materialised / 1e6:.1f} MB"
    )
    assert chunked < materialised / 4
    assert chunked < associative


def test_bad_inputs_raise(rng):
    args = make_inputs(rng, length=5, d=4, n=3)
    bad = {
        "x": (args["x"][0], "x must have shape"),
        "dt": (args["dt"][:, :4], "dt must have the shape of x"),
        "A": (args["A"][0], "A must have shape"),
        "B": (jnp.ones((2, 5, 3, 3)), "must divide d=4"),
        "C": (jnp.ones((2, 5, 2)), "C must have shape"),
        "D": (jnp.ones((3,)), "D must have shape"),
        "z": (jnp.ones((2, 5, 3)), "z must have shape"),
        "dt_bias": (jnp.ones((4, 1)), "dt_bias must have shape"),
        "h0": (jnp.ones((2, 4)), "h0 must have shape"),
    }
    for k, (v, match) in bad.items():
        with pytest.raises(ValueError, match=match):
            selective_scan(**{**args, k: v})
    with pytest.raises(ValueError, match="unknown implementation"):
        selective_scan(**args, implementation="nope")
    with pytest.raises(ValueError, match="unknown implementation"):
        selective_scan(**args, implementation=["chunked", "nope"])
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(**args, chunk_size=0)
    with pytest.raises(ValueError, match="real floating"):
        selective_scan(**{**args, "A": args["A"].astype(jnp.complex64)})
