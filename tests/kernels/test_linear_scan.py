"""The Pallas linear_scan kernel (interpret mode on CPU) against the sequential reference.

Forward output and every gradient (random cotangents) at odd lengths, with h0, reverse,
complex64 and bf16 I/O. ``unroll=4`` in some cases makes the 33-step sequences run the
prefetching block loop (8 blocks) plus a one-step tail; the default ``unroll`` (16 or 32)
covers the single-block and tail-only paths. The two-pass cases (``chunks > 1``) split the
sequence into time chunks, including chunk counts that are not powers of two.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.linear_scan import linear_scan
from ssmjax.ops import linear_recurrence
from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

CASES = [
    # dtype, length, reverse, state shape, unroll
    ("float32", 1, False, (3,), 16),
    ("float32", 7, True, (2, 3), 16),
    ("float32", 33, False, (5,), 4),
    ("float32", 33, True, (40,), 16),
    ("complex64", 7, False, (3,), 16),
    ("complex64", 33, True, (4,), 4),
    ("bfloat16", 33, False, (3,), 4),
]


def make_inputs(rng, dtype, shape):
    a = rng.uniform(0.5, 0.99, size=shape)
    b = rng.normal(size=shape)
    h0 = rng.normal(size=(shape[0], *shape[2:]))
    ct = rng.normal(size=shape)
    if dtype == "complex64":
        a = a * np.exp(1j * rng.uniform(0, np.pi, size=shape))
        b = b + 1j * rng.normal(size=shape)
        h0 = h0 + 1j * rng.normal(size=h0.shape)
        ct = ct + 1j * rng.normal(size=shape)
        cast = lambda v: jnp.asarray(v, jnp.complex64)
        return cast(a), cast(b), cast(h0), cast(ct)
    io = jnp.dtype(dtype)
    return (
        jnp.asarray(a, io),
        jnp.asarray(b, io),
        jnp.asarray(h0, jnp.float32),
        jnp.asarray(ct, jnp.float32),
    )


@pytest.mark.parametrize(("dtype", "length", "reverse", "state", "unroll"), CASES)
def test_matches_sequential(rng, dtype, length, reverse, state, unroll):
    a, b, h0, ct = make_inputs(rng, dtype, (2, length, *state))

    def kernel(a, b, h0):
        return linear_scan(a, b, h0, reverse=reverse, interpret=True, unroll=unroll)

    check_against_sequential(kernel, a, b, h0, ct, dtype, reverse)


def check_against_sequential(kernel, a, b, h0, ct, dtype, reverse, n_a=None):
    """``kernel(a, b, h0)`` and its gradients equal the sequential reference's.

    ``n_a``: the reduction length behind ``da`` for the tolerance (default: ``l``; a
    time-invariant ``a`` sums over time and the batch).
    """
    length = b.shape[1]

    def reference(a, b, h0):
        return linear_recurrence(a, b, h0, reverse=reverse, implementation="sequential")

    h, vjp = jax.vjp(kernel, a, b, h0)
    h_ref, vjp_ref = jax.vjp(reference, a, b, h0)
    assert h.shape == b.shape and h.dtype == b.dtype
    tol_dtype = jnp.bfloat16 if dtype == "bfloat16" else h_ref.dtype
    assert_allclose(h, h_ref, dtype=tol_dtype, n=length)
    grads = vjp(ct.astype(h.dtype))
    grads_ref = vjp_ref(ct.astype(h_ref.dtype))
    for name, g, g_ref, x in zip("a b h0".split(), grads, grads_ref, (a, b, h0), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        n = (n_a or length) if name == "a" else length
        assert_allclose(g, g_ref, dtype=tol_dtype, n=n, kind="grad", err_msg=name)


def test_final_state_and_default_h0(rng):
    a, b, _, _ = make_inputs(rng, "float32", (3, 9, 4))
    for reverse in (False, True):
        h, h_last = linear_scan(a, b, reverse=reverse, interpret=True, return_final_state=True)
        h_ref = linear_recurrence(a, b, reverse=reverse, implementation="sequential")
        assert_allclose(h, h_ref, n=9)
        assert_allclose(h_last, h_ref[:, 0 if reverse else -1], n=9)


def test_through_the_dispatcher(rng):
    a, b, h0, ct = make_inputs(rng, "float32", (2, 7, 3))
    run = lambda impl: jax.vjp(
        lambda a, b, h0: linear_recurrence(a, b, h0, implementation=impl), a, b, h0
    )
    (h, vjp), (h_ref, vjp_ref) = run("pallas"), run("sequential")
    assert_allclose(h, h_ref, n=7)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct), strict=True):
        assert_allclose(g, g_ref, n=7, kind="grad")


def test_fail_closed():
    x = jnp.ones((2, 5, 3))
    if jax.default_backend() != "gpu":
        with pytest.raises(NotImplementedError, match="needs a GPU"):
            linear_scan(x, x)
    with pytest.raises(NotImplementedError, match="dtypes"):
        linear_scan(x.astype(jnp.float16), x.astype(jnp.float16), interpret=True)
    with pytest.raises(NotImplementedError, match="powers of two"):
        linear_scan(x, x, interpret=True, block_d=24)


# ----------------------------------------------------------------------------------------
# Time-invariant a: the compact path (a not broadcast over time)
# ----------------------------------------------------------------------------------------

LTI_CASES = [
    # dtype, length, reverse, a form, state shape, unroll, block_d (None: default)
    ("float32", 7, False, "shared", (5,), 4, 8),
    ("float32", 33, True, "per_seq", (3, 4), 4, 8),
    ("float32", 1, False, "expanded", (3,), 16, None),
    ("float32", 33, False, "per_seq_expanded", (3,), 4, None),
    ("complex64", 33, False, "shared", (3, 4), 4, 8),
    ("complex64", 7, True, "per_seq", (5,), 16, None),
    ("complex64", 7, True, "expanded", (3,), 4, 8),
    ("bfloat16", 33, True, "shared", (5,), 4, 8),
    ("bfloat16", 7, False, "per_seq", (3, 4), 16, None),
]


def lti_a_shape(form, batch, state):
    return {
        "shared": state,
        "per_seq": (batch, *state),
        "expanded": (1, 1, *state),
        "per_seq_expanded": (batch, 1, *state),
    }[form]


def make_lti_a(rng, dtype, shape):
    """Random decays 0.5 <= |a| < 0.99 (random phase when complex), never zero."""
    a = rng.uniform(0.5, 0.99, size=shape)
    if dtype == "complex64":
        return jnp.asarray(a * np.exp(1j * rng.uniform(0, np.pi, size=shape)), jnp.complex64)
    return jnp.asarray(a, jnp.dtype(dtype))


@pytest.mark.parametrize(
    ("dtype", "length", "reverse", "form", "state", "unroll", "block_d"), LTI_CASES
)
def test_time_invariant_matches_sequential(
    rng, dtype, length, reverse, form, state, unroll, block_d
):
    batch = 2
    _, b, h0, ct = make_inputs(rng, dtype, (batch, length, *state))
    a = make_lti_a(rng, dtype, lti_a_shape(form, batch, state))

    def kernel(a, b, h0):
        return linear_scan(
            a,
            b,
            h0,
            reverse=reverse,
            interpret=True,
            unroll=unroll,
            block_d=block_d,
            return_final_state=True,
        )

    def reference(a, b, h0):
        h = linear_recurrence(a, b, h0, reverse=reverse, implementation="sequential")
        return h, h[:, 0 if reverse else -1]

    (h, h_last), vjp = jax.vjp(kernel, a, b, h0)
    (h_ref, h_last_ref), vjp_ref = jax.vjp(reference, a, b, h0)
    assert h.shape == b.shape and h.dtype == b.dtype
    tol_dtype = jnp.bfloat16 if dtype == "bfloat16" else h_ref.dtype
    assert_allclose(h, h_ref, dtype=tol_dtype, n=length)
    assert_allclose(h_last, h_last_ref, dtype=tol_dtype, n=length)
    # Cotangents on both outputs (h_last's adds to the last step's).
    ct_last = jnp.asarray(rng.normal(size=h0.shape), h0.dtype)
    grads = vjp((ct.astype(h.dtype), ct_last.astype(h_last.dtype)))
    grads_ref = vjp_ref((ct.astype(h_ref.dtype), ct_last.astype(h_last_ref.dtype)))
    for name, g, g_ref, x in zip("a b h0".split(), grads, grads_ref, (a, b, h0), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        # da of a time-invariant a sums over time (and the batch when shared).
        n = length * batch if name == "a" else length
        assert_allclose(g, g_ref, dtype=tol_dtype, n=n, kind="grad", err_msg=name)


def _pallas_calls(jaxpr):
    """Every pallas_call equation in a (closed) jaxpr, nested ones included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            found.append(eqn)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    found += _pallas_calls(sub)
    return found


@pytest.mark.parametrize(("a_shape", "rows"), [((12,), 1), ((3, 12), 3)])
def test_time_invariant_a_is_not_broadcast(rng, a_shape, rows):
    """The kernels get a as (Ba, d_pad) and only b / h / dh as (batch, l, d_pad) arrays."""
    batch, length, d, block_d = 3, 9, 12, 8
    a = jnp.asarray(rng.uniform(0.5, 0.99, size=a_shape), jnp.float32)
    b = jnp.asarray(rng.normal(size=(batch, length, d)), jnp.float32)

    def loss(a, b):
        return jnp.sum(linear_scan(a, b, interpret=True, block_d=block_d) ** 2)

    calls = _pallas_calls(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(a, b))
    assert len(calls) == 2  # forward, backward
    seq = (batch, length, 16)
    for eqn, n_seq_in in zip(calls, (1, 2), strict=True):  # fwd: b; bwd: h, dh
        shapes = [v.aval.shape for v in eqn.invars]
        assert shapes[0] == (rows, 16), shapes
        assert shapes.count(seq) == n_seq_in, shapes
    # The backward writes db in full and da once per (batch row, channel).
    assert [v.aval.shape for v in calls[1].outvars] == [seq, (batch, 16), (batch, 16)]


@pytest.mark.parametrize(
    ("dtype", "form", "use_reset"),
    [("float32", "shared", False), ("complex64", "per_seq", False), ("complex64", "shared", True)],
)
def test_time_invariant_through_the_dispatcher(rng, dtype, form, use_reset):
    """linear_recurrence hands a compact a to the kernel (a broadcast one with reset)."""
    batch, length, state = 2, 7, (3, 4)
    _, b, h0, ct = make_inputs(rng, dtype, (batch, length, *state))
    a = make_lti_a(rng, dtype, lti_a_shape(form, batch, state))
    reset = jnp.asarray(rng.random((batch, length)) < 0.3) if use_reset else None

    def run(impl):
        f = lambda a, b, h0: linear_recurrence(
            a, b, h0, reverse=True, reset=reset, implementation=impl
        )
        return jax.vjp(f, a, b, h0)

    (h, vjp), (h_ref, vjp_ref) = run("pallas"), run("sequential")
    assert_allclose(h, h_ref, n=length)
    for name, g, g_ref in zip("a b h0".split(), vjp(ct), vjp_ref(ct), strict=True):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype, name
        assert_allclose(g, g_ref, n=length * batch, kind="grad", err_msg=name)


def test_time_invariant_final_state_and_default_h0(rng):
    _, b, _, _ = make_inputs(rng, "complex64", (3, 9, 4))
    a = make_lti_a(rng, "complex64", (4,))
    for reverse in (False, True):
        h, h_last = linear_scan(a, b, reverse=reverse, interpret=True, return_final_state=True)
        h_ref = linear_recurrence(a, b, reverse=reverse, implementation="sequential")
        assert_allclose(h, h_ref, n=9)
        assert_allclose(h_last, h_ref[:, 0 if reverse else -1], n=9)


def test_bad_a_shapes():
    b = jnp.ones((2, 5, 3))
    for a in (jnp.ones((3, 5, 3)), jnp.ones((2, 4, 3)), jnp.ones((4,)), jnp.ones((1, 2, 2, 5, 3))):
        with pytest.raises(ValueError, match="linear_scan: a "):
            linear_scan(a, b, interpret=True)


# ----------------------------------------------------------------------------------------
# The L-parallel two-pass scan (chunks > 1)
# ----------------------------------------------------------------------------------------

TWO_PASS_CASES = [
    # dtype, length, reverse, a form ("full": time-varying), chunks, unroll
    ("float32", 33, False, "full", 3, 4),
    ("float32", 48, True, "full", 4, 4),
    ("float32", 35, True, "shared", 5, 16),
    ("complex64", 33, True, "full", 11, 4),
    ("complex64", 48, False, "shared", 4, 4),
    ("complex64", 36, True, "per_seq", 6, 4),
    ("bfloat16", 32, False, "full", 4, 4),
    ("bfloat16", 32, True, "shared", 2, 16),
]


@pytest.mark.parametrize(("dtype", "length", "reverse", "form", "chunks", "unroll"), TWO_PASS_CASES)
def test_two_pass_matches_sequential(rng, dtype, length, reverse, form, chunks, unroll):
    batch, state = 2, (3, 4)
    a, b, h0, ct = make_inputs(rng, dtype, (batch, length, *state))
    if form != "full":
        a = make_lti_a(rng, dtype, lti_a_shape(form, batch, state))

    def kernel(a, b, h0):
        return linear_scan(
            a, b, h0, reverse=reverse, interpret=True, unroll=unroll, block_d=8, chunks=chunks
        )

    n_a = None if form == "full" else length * batch
    check_against_sequential(kernel, a, b, h0, ct, dtype, reverse, n_a=n_a)


def test_two_pass_chunks_must_divide_length():
    x = jnp.ones((2, 10, 3))
    with pytest.raises(NotImplementedError, match="chunks"):
        linear_scan(x, x, interpret=True, chunks=4)


@pytest.mark.parametrize(
    ("batch", "blocks", "length", "expected"),
    [
        (8, 64, 4096, 1),
        (8, 32, 4096, 1),
        (1, 64, 16384, 32),
        (4, 32, 4096, 16),
        (1, 4, 300, 1),
        (2, 8, 1024, 4),
    ],
)
def test_default_chunks(batch, blocks, length, expected):
    from pallas_kernels.linear_scan import default_chunks

    assert default_chunks(batch, blocks, length) == expected
