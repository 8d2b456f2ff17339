"""``layout="mosaic_lookback"`` (the single-read L-parallel scan with a decoupled look-back
as a Pallas Mosaic GPU kernel) against the sequential reference in float64, forward and
every gradient, in interpret mode; its status words; its limits; its lowering for CUDA on
this CPU (the Mosaic GPU kernels, which interpret mode does not compile).

Chunks are ``ceil(l / chunks)`` steps rounded up to whole 32-step tiles, so odd lengths pad
the sequence (at its end, or at its start when ``reverse``), and state sizes that are not
multiples of 128 are zero-padded to whole 128-channel programs.

The interpreter runs the chunks one after another in ticket order, so every earlier chunk
has published its inclusive end state when a look-back starts: with ``INCLUSIVE_EVERY``
raised, most chunks publish only their aggregate and the look-backs have to add those up,
as they do on a GPU when earlier chunks are still running. ``PROGRAMS_PER_SM`` set runs the
persistent, double-buffered form (in the interpreter a grid of 2 programs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels._linear_scan_lookback_mosaic as lbm
import pallas_kernels._lookback_mosaic_ops as lbo
import pallas_kernels.linear_scan as ls
from pallas_kernels.linear_scan import linear_scan
from ssmjax.ops import linear_recurrence
from ssmjax.testing import assert_allclose

pytestmark = pytest.mark.usefixtures("fast_compile")  # (compile-bound interpreted kernels)

MOSAIC = "mosaic_gpu_v2"  # the custom call of a Mosaic GPU kernel
TRITON = "__gpu$xla.gpu.triton"  # that of a Pallas-Triton kernel
BATCH = 2

CASES = {
    # dtype, length, d, chunks (None: the default), reverse, a form, with h0
    # l = 77, chunks=3: 3 chunks of 32 steps, 19 padded; chunks=2: 2 of 64, 51 padded
    "c64-l77-c32-shared": ("complex64", 77, 128, 3, False, "shared", True),
    "c64-l77-c64-perseq-rev": ("complex64", 77, 128, 2, True, "per_seq", True),
    # d = 192: zero-padded to two 128-channel programs
    "c64-l100-c32-shared-rev-no-h0-d192": ("complex64", 100, 192, 4, True, "shared", False),
    "c64-l1-rev": ("complex64", 1, 128, 1, True, "per_seq", True),  # one 32-step chunk
    "fp32-l45-c32-perseq-d96": ("float32", 45, 96, 2, False, "per_seq", True),
    "fp32-l130-c64-shared-rev-no-h0": ("float32", 130, 128, 3, True, "shared", False),
    "fp32-l150-default-chunks": ("float32", 150, 128, None, False, "shared", True),
    "bf16-l70-c32-shared": ("bfloat16", 70, 128, 3, False, "shared", True),
    "bf16-l50-c64-perseq-rev": ("bfloat16", 50, 128, 1, True, "per_seq", True),
}


def _inputs(rng, dtype, batch, length, d, form):
    """``a, b, h0, ct``: decays ``0.5 <= |a| < 0.99`` (random sign or phase), never zero;
    ``b``, ``h0`` and the cotangent normal."""
    shape = (batch, length, d)
    a_shape = {"shared": (d,), "per_seq": (batch, d)}[form]
    mag = rng.uniform(0.5, 0.99, size=a_shape)
    if dtype == "complex64":
        cplx = lambda s: rng.normal(size=s) + 1j * rng.normal(size=s)
        a = mag * np.exp(1j * rng.uniform(-np.pi, np.pi, size=a_shape))
        xs = (a, cplx(shape), cplx((batch, d)), cplx(shape))
        return tuple(jnp.asarray(x, jnp.complex64) for x in xs)
    a = mag * rng.choice([-1.0, 1.0], size=a_shape)
    return (
        jnp.asarray(a, dtype),
        jnp.asarray(rng.normal(size=shape), dtype),
        jnp.asarray(rng.normal(size=(batch, d)), jnp.float32),
        jnp.asarray(rng.normal(size=shape), jnp.float32),
    )


def _reference(a, b, h0, ct, reverse):
    """``h`` and the gradients w.r.t. ``a``, ``b``, ``h0`` of the sequential scan in float64
    (complex128), as NumPy arrays (``None`` for an absent ``h0``)."""
    wide = jnp.complex128 if jnp.iscomplexobj(b) else jnp.float64
    with jax.enable_x64(True):
        args = [None if x is None else jnp.asarray(np.asarray(x), wide) for x in (a, b, h0)]

        def f(a, b, h0):
            return linear_recurrence(a, b, h0, reverse=reverse, implementation="sequential")

        h, vjp = jax.vjp(f, *args)
        assert h.dtype == wide
        grads = vjp(jnp.asarray(np.asarray(ct), wide))
        return np.asarray(h), [None if g is None else np.asarray(g) for g in grads]


def _check(rng, dtype, length, d, chunks, reverse, form, with_h0):
    """The kernel's ``h`` and gradients against :func:`_reference` on fresh inputs."""
    a, b, h0, ct = _inputs(rng, dtype, BATCH, length, d, form)
    h0 = h0 if with_h0 else None
    tol = jnp.bfloat16 if jnp.dtype(dtype) == jnp.bfloat16 else jnp.float32

    def kernel(a, b, h0):
        return linear_scan(
            a, b, h0, reverse=reverse, interpret=True, layout="mosaic_lookback", chunks=chunks
        )

    h, vjp = jax.vjp(kernel, a, b, h0)
    h_ref, grads_ref = _reference(a, b, h0, ct, reverse)
    assert h.shape == b.shape and h.dtype == b.dtype
    assert_allclose(h, h_ref, dtype=tol, n=length)
    grads = vjp(ct.astype(h.dtype))
    n_a = length * BATCH if form == "shared" else length
    for name, g, g_ref, x in zip(("a", "b", "h0"), grads, grads_ref, (a, b, h0), strict=True):
        if x is None:
            assert g is None and g_ref is None, name
            continue
        assert g.shape == x.shape and g.dtype == x.dtype, name
        n = n_a if name == "a" else length
        assert_allclose(g, g_ref, dtype=tol, n=n, kind="grad", err_msg=name)


@pytest.mark.parametrize(
    ("dtype", "length", "d", "chunks", "reverse", "form", "with_h0"),
    list(CASES.values()),
    ids=list(CASES),
)
def test_mosaic_lookback_matches_sequential(rng, dtype, length, d, chunks, reverse, form, with_h0):
    """Forward and the gradients w.r.t. ``a``, ``b``, ``h0`` at padded lengths and state
    sizes, chunks of 32 and 64 steps, real, complex and bf16, shared and per-sequence ``a``."""
    _check(rng, dtype, length, d, chunks, reverse, form, with_h0)


@pytest.mark.parametrize(
    ("dtype", "length", "chunks", "reverse", "form", "with_h0", "every"),
    [
        # 5 chunks of 32 steps (10 padded), inclusive states of 0 and 3: chunks 2 and 3 add
        # up aggregates
        ("complex64", 150, 5, True, "per_seq", True, 3),
        # 7 chunks of 32 steps (24 padded), inclusive states of 0, 3 and 6
        ("float32", 200, 7, False, "shared", False, 3),
        # only chunk 0 publishes its inclusive state: every look-back walks back to it
        ("complex64", 100, 4, False, "shared", True, 1 << 20),
    ],
    ids=["c64-rev-perseq-every3", "fp32-shared-no-h0-every3", "c64-only-chunk0-inclusive"],
)
def test_mosaic_lookback_adds_aggregates(
    rng, monkeypatch, dtype, length, chunks, reverse, form, with_h0, every
):
    """Most chunks publish only their aggregate (``INCLUSIVE_EVERY`` raised): the look-backs
    add up ``A^k``-weighted aggregates down to an inclusive state, forward and backward."""
    monkeypatch.setattr(lbm, "INCLUSIVE_EVERY", every)
    _check(rng, dtype, length, 128, chunks, reverse, form, with_h0)


def test_aggregates_are_not_inclusive_states(rng, monkeypatch):
    """Sensitivity of the check above: a look-back that takes a chunk's aggregate as its
    inclusive end state (reads aggregate rows for both) gets a wrong forward."""
    monkeypatch.setattr(lbm, "INCLUSIVE_EVERY", 3)
    look_back = lbo._Interpret.look_back

    def aggregates_only(self, status_ref, k0, rows_of, *args):
        return look_back(self, status_ref, k0, lambda k, inc: rows_of(k, False), *args)

    a, b, h0, _ = _inputs(rng, "float32", BATCH, 100, 128, "shared")
    kw = dict(interpret=True, layout="mosaic_lookback", chunks=4)
    h_ref, _ = _reference(a, b, h0, b, False)
    assert_allclose(linear_scan(a, b, h0, **kw), h_ref, n=100)
    monkeypatch.setattr(lbo._Interpret, "look_back", aggregates_only)
    h = np.asarray(linear_scan(a, b, h0, **kw))
    assert np.max(np.abs(h[:, 32:] - h_ref[:, 32:])) > 0.1  # chunks 1-3 start wrong
    np.testing.assert_allclose(h[:, :32], h_ref[:, :32], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("dtype", "length", "d", "chunks", "reverse", "form", "every"),
    [
        # 4 chunks x 2 programs of 128 channels x 2 sequences = 16 tickets
        ("complex64", 100, 256, 4, False, "per_seq", 1),
        ("float32", 90, 128, 3, True, "shared", 2),
    ],
    ids=["c64-d256", "fp32-rev-every2"],
)
def test_persistent_matches_sequential(
    rng, monkeypatch, dtype, length, d, chunks, reverse, form, every
):
    """The persistent grid (``PROGRAMS_PER_SM = 1``: 2 programs in the interpreter) that
    loops over the tickets, staging the next chunk into the other buffer while it scans
    this one."""
    monkeypatch.setattr(lbm, "PROGRAMS_PER_SM", 1)
    monkeypatch.setattr(lbm, "INCLUSIVE_EVERY", every)
    _check(rng, dtype, length, d, chunks, reverse, form, True)


def test_global_stores_and_staged_h_match_sequential(rng, monkeypatch):
    """``TMA_STORE`` and ``STREAM_H`` off (the tests above run them on, the defaults): rows
    stored from registers one by one, the backward's ``h`` staged beside ``dh``; bf16,
    ``d`` padded to two programs."""
    assert lbm.TMA_STORE and lbm.STREAM_H  # the forms the other tests check
    monkeypatch.setattr(lbm, "TMA_STORE", False)
    monkeypatch.setattr(lbm, "STREAM_H", False)
    _check(rng, "bfloat16", 70, 192, 1, False, "shared", True)


@pytest.mark.parametrize("form", ["shared", "per_seq"])
def test_tickets_match_sequential(rng, monkeypatch, form):
    """``GRID_ORDER`` off (the tests above run it on, the default): each program takes its
    chunk as a ticket from the counter."""
    assert lbm.GRID_ORDER  # the form the other tests check
    monkeypatch.setattr(lbm, "GRID_ORDER", False)
    _check(rng, "complex64", 77, 192, 3, form == "shared", form, True)


def test_status_words_round_trip(rng):
    """Published values decode to themselves bit for bit; only the NaN with every bit set
    (never produced by GPU arithmetic) encodes to the unpublished word 0."""
    special = np.asarray(
        [0.0, -0.0, 1.5, -3.25e-38, np.inf, -np.inf, 1e-45, -1e-45, 1.17e-38, 3.4e38],
        np.float32,
    )
    denormals = (rng.integers(1, 1 << 23, size=64) | (rng.integers(0, 2, 64) << 31)).astype(
        np.uint32
    )
    x = np.concatenate(
        [special, rng.normal(size=256).astype(np.float32) * 1e3, denormals.view(np.float32)]
    )
    assert np.sum(np.abs(x) < np.finfo(np.float32).tiny) > 64  # denormals and zeros
    w = lbo._encode(jnp.asarray(x))
    assert w.dtype == jnp.int32 and w.shape == x.shape
    np.testing.assert_array_equal(np.asarray(w), ~x.view(np.int32))
    assert not np.any(np.asarray(w) == 0)
    back = np.asarray(lbo._decode(w))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.view(np.int32), x.view(np.int32))
    # NaNs: the GPU's canonical one (0x7FFFFFFF) and jnp.nan are published; 0xFFFFFFFF is
    # the one value that reads as unpublished.
    nans = np.asarray([0x7FFFFFFF, 0xFFFFFFFF], np.uint32).view(np.float32)
    nan_words = np.asarray(lbo._encode(jnp.asarray(nans)))
    assert nan_words[0] != 0 and nan_words[1] == 0
    assert int(lbo._encode(jnp.float32(jnp.nan))) != 0
    assert np.asarray(lbo._decode(jnp.asarray(nan_words))).view(np.uint32)[0] == 0x7FFFFFFF


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(a_time_varying=True), "needs a time-invariant a"),
        (dict(chunks=0), "chunks=0 for l=300"),
        (dict(chunks=301), "chunks=301 for l=300"),
    ],
    ids=["time-varying-a", "chunks0", "chunks-above-l"],
)
def test_mosaic_lookback_limits(monkeypatch, kwargs, match):
    """Raised by the entry point, before the scan is called."""
    monkeypatch.setattr(ls, "_scan", lambda *a: pytest.fail("the scan ran"))
    length = 300
    a = jnp.full((length, 128) if kwargs.pop("a_time_varying", False) else (128,), 0.5)
    if a.ndim == 2:
        a = a[None]
    b = jnp.ones((1, length, 128))
    with pytest.raises(NotImplementedError, match=match):
        linear_scan(a, b, interpret=True, layout="mosaic_lookback", **kwargs)


def test_mosaic_lookback_needs_hopper(monkeypatch):
    """Compiled (not interpret) on a device that is not Hopper: this CPU, backend check off."""
    monkeypatch.setattr(ls, "check_backend", lambda *a: None)
    assert not lbm.on_hopper()
    a, b = jnp.full((128,), 0.5), jnp.ones((1, 64, 128))
    with pytest.raises(NotImplementedError, match=r"mosaic_lookback.*compute capability 9\.0"):
        linear_scan(a, b, layout="mosaic_lookback")


def _lowered(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize(
    ("dtype", "shape", "form", "reverse", "programs_per_sm", "knobs_on"),
    [
        ("complex64", (8, 4096, 256), "shared", False, 0, True),
        ("float32", (2, 1000, 384), "per_seq", True, 0, True),
        ("bfloat16", (2, 1000, 128), "shared", False, 0, True),
        ("complex64", (2, 4096, 256), "per_seq", True, 1, True),
        ("complex64", (8, 4096, 256), "shared", True, 0, False),
        ("bfloat16", (2, 1000, 128), "per_seq", True, 1, False),
    ],
    ids=[
        "c64-shared",
        "fp32-perseq-rev-odd",
        "bf16-odd",
        "c64-persistent-rev",
        "c64-rev-knobs-off",
        "bf16-persistent-rev-knobs-off",
    ],
)
def test_mosaic_lookback_lowers_to_mosaic_gpu(
    hopper, monkeypatch, dtype, shape, form, reverse, programs_per_sm, knobs_on
):
    """One Mosaic GPU kernel forward, two for the gradient w.r.t. ``a``, ``b``, ``h0``
    (forward and adjoint), no Triton kernel, each lowered for CUDA on this CPU: catches what
    the Mosaic GPU lowering rejects (TMA shapes, layouts, the inline PTX), which interpret
    mode does not run. ``knobs_on``: ``TMA_STORE``, ``STREAM_H`` and ``GRID_ORDER`` as by
    default (on) or all off."""
    monkeypatch.setattr(lbm, "on_hopper", lambda: True)
    monkeypatch.setattr(lbm, "PROGRAMS_PER_SM", programs_per_sm)
    monkeypatch.setattr(lbm, "TMA_STORE", knobs_on)
    monkeypatch.setattr(lbm, "STREAM_H", knobs_on)
    monkeypatch.setattr(lbm, "GRID_ORDER", knobs_on)
    batch, _, d = shape
    sds = jax.ShapeDtypeStruct
    a_shape = (d,) if form == "shared" else (batch, d)
    h0_dtype = jnp.complex64 if dtype == "complex64" else jnp.float32
    a, b, h0 = sds(a_shape, dtype), sds(shape, dtype), sds((batch, d), h0_dtype)

    def f(a, b, h0):
        return linear_scan(a, b, h0, reverse=reverse, layout="mosaic_lookback")

    def grad(a, b, h0):
        loss = lambda *x: jnp.sum(jnp.abs(f(*x).astype(b.dtype)) ** 2).real
        return jax.grad(loss, argnums=(0, 1, 2))(a, b, h0)

    text = _lowered(f, a, b, h0)
    assert text.count(MOSAIC) == 1 and TRITON not in text
    assert "linear_scan_lookback_mosaic" in text
    text = _lowered(grad, a, b, h0)
    assert text.count(MOSAIC) == 2 and TRITON not in text
    assert "linear_scan_lookback_mosaic_bwd" in text


@pytest.mark.parametrize("grid_order", [True, False], ids=["grid-order", "ticket"])
def test_status_buffers_are_zero_filled_before_each_call(hopper, monkeypatch, grid_order):
    """The kernel never clears its status words (and, taking tickets, its counter): they are
    ``pl.get_global`` semaphore arrays, which the Mosaic GPU lowering passes in as a
    zero-filled operand of every call. Checked in the lowered program for CUDA: the kernel's
    last operand (``2 * planes * chunks * batch * d`` int32, one more for the counter) is a
    broadcast zero, aliased to an output, in the forward and the backward call."""
    import re

    monkeypatch.setattr(lbm, "on_hopper", lambda: True)
    monkeypatch.setattr(lbm, "GRID_ORDER", grid_order)
    batch, length, d = 8, 4096, 256
    sds = jax.ShapeDtypeStruct
    a, b = sds((d,), jnp.complex64), sds((batch, length, d), jnp.complex64)

    def grad(a, b):
        loss = lambda a, b: jnp.sum(jnp.abs(linear_scan(a, b, layout="mosaic_lookback")) ** 2)
        return jax.grad(loss, argnums=(0, 1))(a, b)

    text = _lowered(grad, a, b)
    n = 2 * 2 * (length // lbm.CHUNK) * batch * d + (0 if grid_order else 1)
    zeros = set(re.findall(r"(%\w+) = stablehlo.constant dense<0> : tensor<i32>", text))
    filled = re.findall(
        rf"(%\w+) = stablehlo.broadcast_in_dim (%\w+), dims = \[\] : \(tensor<i32>\) -> "
        rf"tensor<{n}xi32>",
        text,
    )
    calls = re.findall(r"stablehlo.custom_call @mosaic_gpu_v2\(([^)]*)\)", text)
    assert len(calls) == 2
    for call in calls:
        last = call.split(", ")[-1]
        assert any(v == last and c in zeros for v, c in filled), (last, filled)
    assert text.count("output_operand_alias") >= 2
