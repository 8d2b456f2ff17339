"""The Pallas Mosaic GPU linear_scan kernels (``layout="mosaic"``) against the reference.

* Interpret mode (the same kernel programs, TMA copies and barriers replaced by plain
  copies): ``h`` and the gradients w.r.t. ``a``, ``b`` and ``h0`` (random cotangents) against
  ``ssmjax.ops.linear_recurrence(..., implementation="sequential")``, real fp32, complex64
  and bf16 I/O, a time-varying ``a`` ``(batch, l, *s)`` and a time-invariant one, shared
  ``(*s)`` or per sequence ``(batch, *s)``, forward and ``reverse``, at lengths of one step
  (a tile that is nearly all padding), of a partial tile (37: padded at the end, or at the
  start when ``reverse``), of whole tiles (64), and of more tiles than shared-memory slots
  (161: slots refilled), with a flat and a multi-dimensional state, ``unroll`` 4, 8 (the
  default) and 32; ``return_final_state`` (cotangents on both outputs);
  ``linear_scan_planes`` against ``linear_scan`` on the complex array.
* The L-parallel Mosaic scan (``chunks > 1``, time-invariant ``a``) likewise: real, complex
  and bf16, shared and per-sequence ``a``, forward and ``reverse``, 2-10 chunks of whole
  tiles (10: the loop that carries the start states), a padded state; its end-state kernel
  against the sequential scan's last state; it lowers for CUDA to two Mosaic kernels
  forward (end states, scan) and four for a gradient.
* Lowering for CUDA on this CPU (``check_backend`` and ``on_hopper`` patched): the real
  Mosaic GPU lowering (register layouts, TMA, barriers), which interpret mode does not run:
  one Mosaic GPU kernel forward, two for a gradient (forward and backward), no Triton one.
* The automatic choice: Triton in interpret mode; on "Hopper" Mosaic from 32 programs, the
  L-parallel Mosaic scan for complex time-invariant scans on fewer, else Triton.
* ``layout="mosaic"`` outside its limits (state size, ``chunks`` with a time-varying ``a`` or
  partial tiles, ``unroll``, the device)
  and an unknown layout raise ``NotImplementedError`` before any work.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_linear_scan import check_against_sequential, lti_a_shape, make_inputs, make_lti_a

import pallas_kernels._linear_scan_lookback_mosaic as lbm
import pallas_kernels._linear_scan_mosaic as lm
import pallas_kernels._linear_scan_mosaic_chunked as lmc
import pallas_kernels.linear_scan as ls
from pallas_kernels.linear_scan import linear_scan, linear_scan_planes
from ssmjax.ops import linear_recurrence
from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

MOSAIC = "mosaic_gpu_v2"  # the custom call of a Mosaic GPU kernel
TRITON = "__gpu$xla.gpu.triton"  # that of a Pallas-Triton kernel
BATCH = 2


def _tol(dtype):
    return jnp.bfloat16 if jnp.dtype(dtype) == jnp.bfloat16 else jnp.float32


def _inputs(rng, dtype, length, form, state):
    """``a, b, h0, ct``; ``form``: ``"full"`` (time-varying ``a``), ``"shared"`` or
    ``"per_seq"`` (time-invariant)."""
    a, b, h0, ct = make_inputs(rng, dtype, (BATCH, length, *state))
    if form != "full":
        a = make_lti_a(rng, dtype, lti_a_shape(form, BATCH, state))
    return a, b, h0, ct


def _n_a(form, length):
    """Reduction length behind ``da``: a time-invariant ``a`` sums over time and batch."""
    return None if form == "full" else length * BATCH


CASES = {
    # dtype, length, reverse, a form, state shape, unroll (None: the default, 8)
    # l = 1: a full (batch, 1, d) a has La == 1, so it takes the time-invariant path.
    "fp32-l1-full": ("float32", 1, False, "full", (128,), None),
    "fp32-l37-full-rev": ("float32", 37, True, "full", (256,), None),
    "fp32-l64-full-2x128-u4": ("float32", 64, False, "full", (2, 128), 4),
    "fp32-l37-shared": ("float32", 37, False, "shared", (128,), None),
    "fp32-l64-perseq-rev-4x32-u32": ("float32", 64, True, "per_seq", (4, 32), 32),
    "fp32-l161-full-rev": ("float32", 161, True, "full", (128,), None),  # 6 tiles, 3 slots
    "c64-l37-full": ("complex64", 37, False, "full", (128,), None),
    "c64-l64-full-rev": ("complex64", 64, True, "full", (128,), None),
    "c64-l1-perseq-rev": ("complex64", 1, True, "per_seq", (128,), None),
    "c64-l37-shared-rev": ("complex64", 37, True, "shared", (2, 64), None),
    "c64-l64-perseq": ("complex64", 64, False, "per_seq", (128,), None),
    "c64-l161-shared": ("complex64", 161, False, "shared", (128,), None),
    "bf16-l37-full-rev": ("bfloat16", 37, True, "full", (128,), None),
    "bf16-l64-shared": ("bfloat16", 64, False, "shared", (128,), None),
    # state sizes that are not whole programs: zero-padded to 128 / 256 channels
    "fp32-l37-full-3x40": ("float32", 37, False, "full", (3, 40), None),
    "c64-l70-perseq-rev-192": ("complex64", 70, True, "per_seq", (192,), None),
    "c64-l33-shared-64": ("complex64", 33, False, "shared", (64,), None),
}


@pytest.mark.parametrize(
    ("dtype", "length", "reverse", "form", "state", "unroll"), list(CASES.values()), ids=list(CASES)
)
def test_matches_sequential(rng, dtype, length, reverse, form, state, unroll):
    a, b, h0, ct = _inputs(rng, dtype, length, form, state)

    def kernel(a, b, h0):
        return linear_scan(
            a, b, h0, reverse=reverse, interpret=True, unroll=unroll, layout="mosaic"
        )

    check_against_sequential(kernel, a, b, h0, ct, dtype, reverse, n_a=_n_a(form, length))


CHUNKED = {
    # dtype, length, reverse, a form (time-invariant), state shape, chunks
    "fp32-l64-shared-c2": ("float32", 64, False, "shared", (128,), 2),
    "c64-l64-perseq-rev-c2": ("complex64", 64, True, "per_seq", (128,), 2),
    "c64-l96-shared-c3": ("complex64", 96, False, "shared", (2, 64), 3),
    "c64-l128-shared-rev-64-c4": ("complex64", 128, True, "shared", (64,), 4),
    "bf16-l96-perseq-rev-c3": ("bfloat16", 96, True, "per_seq", (128,), 3),
    # more chunks than one group of carried end states (GROUP = 8): the carry's loop
    "c64-l320-perseq-c10": ("complex64", 320, False, "per_seq", (128,), 10),
    "fp32-l320-shared-rev-c10": ("float32", 320, True, "shared", (128,), 10),
}


@pytest.mark.parametrize(
    ("dtype", "length", "reverse", "form", "state", "chunks"),
    list(CHUNKED.values()),
    ids=list(CHUNKED),
)
def test_chunked_matches_sequential(rng, dtype, length, reverse, form, state, chunks):
    """The L-parallel Mosaic scan (``chunks > 1``, time-invariant ``a``): chunk start states
    in closed form, the single-pass kernels on ``(batch * chunks, l / chunks, d)``, the
    backward's carry between chunks."""
    a, b, h0, ct = _inputs(rng, dtype, length, form, state)

    def kernel(a, b, h0):
        return linear_scan(
            a, b, h0, reverse=reverse, interpret=True, layout="mosaic", chunks=chunks
        )

    check_against_sequential(kernel, a, b, h0, ct, dtype, reverse, n_a=_n_a(form, length))


@pytest.mark.parametrize(
    ("dtype", "length", "reverse", "form", "chunks"),
    [("float32", 256, False, "per_seq", 2), ("complex64", 512, True, "shared", 4)],
)
def test_chunked_with_end_pieces_matches_sequential(
    rng, monkeypatch, dtype, length, reverse, form, chunks
):
    """The L-parallel scan with the end states taken per piece (``END_SPLIT = 4`` pieces a
    chunk of 4 tiles): 4 and 12 of them carried into the last chunk (the carry's loop, one
    group and a partial one)."""
    monkeypatch.setattr(lmc, "END_SPLIT", 4)
    a, b, h0, ct = _inputs(rng, dtype, length, form, (128,))

    def kernel(a, b, h0):
        return linear_scan(
            a, b, h0, reverse=reverse, interpret=True, layout="mosaic", chunks=chunks
        )

    check_against_sequential(kernel, a, b, h0, ct, dtype, reverse, n_a=_n_a(form, length))
    monkeypatch.setattr(lmc, "END_SPLIT", 3)
    with pytest.raises(ValueError, match="END_SPLIT=3 does not divide 4 tiles"):
        kernel(a, b, h0)


@pytest.mark.parametrize(
    ("planes", "reverse", "conj", "ba", "split"),
    [
        (1, False, False, 1, 1),
        (2, True, True, 2, 2),
        (2, False, False, 2, 2),
        (1, True, False, 1, 1),
    ],
)
def test_end_state_kernel_is_the_last_state(rng, planes, reverse, conj, ba, split):
    """The end-state kernel of the L-parallel scan (it walks each piece against the scan's
    order with a running power of ``a``) stores the sequential scan's state after a piece's
    last step from a zero start, fp32, for the pieces of every chunk but the last in scan
    order, ``split`` pieces a chunk, of ``Ba`` sequences (``a`` row: the sequence), with
    ``conj(a)`` when asked; partial tiles are refused."""
    chunks, length, d = 3, 32, 128
    pieces = chunks * split
    rows = ba * pieces
    if planes == 1:
        ap = (jnp.asarray(rng.uniform(-0.95, 0.95, (ba, d)), jnp.float32),)
    else:  # |a| < 1 at any phase
        r, phi = rng.uniform(0.5, 0.95, (ba, d)), rng.uniform(-3.1, 3.1, (ba, d))
        ap = (jnp.asarray(r * np.cos(phi), jnp.float32), jnp.asarray(r * np.sin(phi), jnp.float32))
    xp = tuple(jnp.asarray(rng.normal(size=(rows, length, d)), jnp.float32) for _ in range(planes))
    cfg = ls._Config(128, 8, 4, 1, False, True, 1, "mosaic")
    ends = lm.run_ends_mosaic(cfg, ap, xp, chunks, reverse, conj=conj, split=split)
    unplanes = lambda xs: xs[0] if planes == 1 else jax.lax.complex(*xs)
    a = jnp.repeat(unplanes(ap), pieces, axis=0)[:, None]  # (rows, 1, d)
    a = jnp.conj(a) if conj else a
    h = linear_recurrence(a, unplanes(xp), reverse=reverse, implementation="sequential")
    last = h[:, 0 if reverse else -1].reshape(ba, pieces, d)
    n = split * (chunks - 1)  # the pieces before the last chunk in scan order
    want = (last[:, ::-1] if reverse else last)[:, :n].reshape(ba * n, d)
    assert all(e.shape == (ba * n, d) and e.dtype == jnp.float32 for e in ends)
    assert_allclose(unplanes(ends), want, n=length)
    with pytest.raises(ValueError, match="whole 32-step tiles"):
        lm.run_ends_mosaic(cfg, ap, tuple(x[:, :24] for x in xp), chunks, reverse)
    with pytest.raises(ValueError, match=r"not sequences of 2 chunks \(>= 2\) x 4 pieces"):
        lm.run_ends_mosaic(cfg, ap, xp, 2, reverse, split=4)


@pytest.mark.parametrize(
    ("dtype", "length", "reverse", "form"),
    [("float32", 37, True, "full"), ("complex64", 37, False, "per_seq")],
)
def test_final_state_matches_sequential(rng, dtype, length, reverse, form):
    """``return_final_state``, with cotangents on both outputs (the final state's adds to
    the last step's in scan order)."""
    a, b, h0, ct = _inputs(rng, dtype, length, form, (128,))
    last = 0 if reverse else -1

    def kernel(a, b, h0):
        return linear_scan(
            a, b, h0, reverse=reverse, interpret=True, return_final_state=True, layout="mosaic"
        )

    def reference(a, b, h0):
        h = linear_recurrence(a, b, h0, reverse=reverse, implementation="sequential")
        return h, h[:, last]

    (h, h_last), vjp = jax.vjp(kernel, a, b, h0)
    (h_ref, h_last_ref), vjp_ref = jax.vjp(reference, a, b, h0)
    assert h_last.shape == h0.shape and h_last.dtype == b.dtype
    assert_allclose(h, h_ref, n=length)
    assert_allclose(h_last, h_last_ref, n=length)
    ct_last = make_inputs(rng, dtype, (BATCH, 1, 128))[3][:, 0]
    grads = vjp((ct, ct_last))
    grads_ref = vjp_ref((ct, ct_last))
    n_a = _n_a(form, length) or length
    for name, g, g_ref, x in zip("a b h0".split(), grads, grads_ref, (a, b, h0), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        n = n_a if name == "a" else length
        assert_allclose(g, g_ref, n=n, kind="grad", err_msg=name)


@pytest.mark.parametrize(("form", "reverse"), [("full", False), ("per_seq", True)])
def test_planes_match_complex(rng, form, reverse):
    """``linear_scan_planes`` (planes in, planes out) equals ``linear_scan`` on the complex
    arrays, forward and the gradient w.r.t. every plane."""
    length = 37
    a, b, h0, _ = _inputs(rng, "complex64", length, form, (128,))
    planes = [x for v in (a, b, h0) for x in (jnp.real(v), jnp.imag(v))]
    cts = tuple(jnp.asarray(rng.normal(size=b.shape), jnp.float32) for _ in range(2))
    kw = dict(reverse=reverse, interpret=True, layout="mosaic")

    def on_planes(a_re, a_im, b_re, b_im, h0_re, h0_im):
        return linear_scan_planes((a_re, a_im), (b_re, b_im), (h0_re, h0_im), **kw)

    def on_complex(a_re, a_im, b_re, b_im, h0_re, h0_im):
        c = jax.lax.complex
        h = linear_scan(c(a_re, a_im), c(b_re, b_im), c(h0_re, h0_im), **kw)
        return jnp.real(h), jnp.imag(h)

    h, vjp = jax.vjp(on_planes, *planes)
    h_ref, vjp_ref = jax.vjp(on_complex, *planes)
    for x, x_ref in zip(h, h_ref, strict=True):
        assert x.shape == b.shape and x.dtype == jnp.float32
        assert_allclose(x, x_ref, n=length)
    names = "a_re a_im b_re b_im h0_re h0_im".split()
    for name, g, g_ref, x in zip(names, vjp(cts), vjp_ref(cts), planes, strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        assert_allclose(g, g_ref, n=length * BATCH, kind="grad", err_msg=name)


# ----------------------------------------------------------------------------------------
# Lowering for CUDA (no GPU needed)
# ----------------------------------------------------------------------------------------


def shapes(dtype, batch, length, d, form):
    """``jax.ShapeDtypeStruct`` ``a, b, h0`` (nothing allocated: lowering a big shape is
    cheap)."""
    sds = jax.ShapeDtypeStruct
    a_shape = {"full": (batch, length, d), "shared": (d,), "per_seq": (batch, d)}[form]
    return sds(a_shape, dtype), sds((batch, length, d), dtype), sds((batch, d), dtype)


def lowered(fn, *args) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


LOWERINGS = {
    # dtype, (batch, l, d), a form, reverse
    "fp32-full": ("float32", (8, 4096, 2048), "full", False),
    "fp32-full-rev-odd": ("float32", (8, 1001, 2048), "full", True),
    "fp32-shared-odd": ("float32", (8, 1001, 2048), "shared", False),
    "fp32-perseq-rev": ("float32", (8, 4096, 2048), "per_seq", True),
    "c64-full-rev": ("complex64", (8, 4096, 1024), "full", True),
    "c64-full-odd": ("complex64", (8, 1001, 1024), "full", False),
    "c64-shared-rev-odd": ("complex64", (8, 1001, 1024), "shared", True),
    "c64-perseq": ("complex64", (8, 4096, 1024), "per_seq", False),
    "bf16-full-odd": ("bfloat16", (8, 1001, 2048), "full", False),
    "c64-shared-192-padded": ("complex64", (32, 1024, 192), "shared", False),
}


@pytest.mark.parametrize(
    ("dtype", "shape", "form", "reverse"), list(LOWERINGS.values()), ids=list(LOWERINGS)
)
def test_lowers_to_mosaic_gpu(hopper, dtype, shape, form, reverse):
    """One Mosaic GPU kernel forward, two for the gradient w.r.t. ``a``, ``b`` and ``h0``
    (forward and backward), no Triton kernel.

    Catches what the Mosaic GPU lowering rejects (layouts of loaded vectors, TMA shapes,
    shared-memory sizes, ...), which interpret mode does not run.
    """
    _assert_mosaic_kernels(dtype, shape, form, reverse=reverse)


def _assert_mosaic_kernels(dtype, shape, form, n_fwd=1, n_grad=2, **options):
    """``linear_scan(..., layout="mosaic", **options)`` lowers for CUDA to ``n_fwd`` Mosaic GPU
    kernels, its gradient w.r.t. ``a``, ``b``, ``h0`` to ``n_grad``, and neither to a Triton
    one."""
    args = shapes(jnp.dtype(dtype), *shape, form)

    def f(a, b, h0):
        return linear_scan(a, b, h0, layout="mosaic", **options)

    def grad(a, b, h0):
        loss = lambda *x: jnp.sum(jnp.abs(f(*x).astype(b.dtype)) ** 2).real
        return jax.grad(loss, argnums=(0, 1, 2))(a, b, h0)

    text = lowered(f, *args)
    assert text.count(MOSAIC) == n_fwd and TRITON not in text
    text = lowered(grad, *args)
    assert text.count(MOSAIC) == n_grad and TRITON not in text


@pytest.mark.parametrize(
    ("dtype", "shape", "form", "reverse", "chunks"),
    [
        ("complex64", (8, 4096, 256), "shared", False, 8),
        ("complex64", (2, 16384, 512), "per_seq", True, 32),
        ("float32", (8, 4096, 256), "shared", True, 16),
    ],
)
def test_chunked_lowers_to_mosaic_gpu(hopper, dtype, shape, form, reverse, chunks):
    """The L-parallel Mosaic scan: two Mosaic GPU kernels forward (the chunks' end states,
    the scan) and four for the gradient (those, the adjoint's end states and the backward),
    no Triton kernel."""
    _assert_mosaic_kernels(dtype, shape, form, n_fwd=2, n_grad=4, reverse=reverse, chunks=chunks)


# ----------------------------------------------------------------------------------------
# The automatic choice (layout=None)
# ----------------------------------------------------------------------------------------


def test_default_is_triton_in_interpret_mode(rng):
    """No ``layout``, interpreted: the Triton kernels, with the Mosaic layout's values."""
    a, b, h0, _ = _inputs(rng, "float32", 37, "full", (128,))
    f = lambda a, b, h0, **kw: linear_scan(a, b, h0, interpret=True, **kw)
    loss = lambda a, b, h0, **kw: jnp.sum(f(a, b, h0, **kw) ** 2)
    grad = jax.grad(loss, argnums=(0, 1, 2))
    default = str(jax.make_jaxpr(grad)(a, b, h0))
    mosaic = str(jax.make_jaxpr(lambda *x: grad(*x, layout="mosaic"))(a, b, h0))
    assert "linear_scan_fwd" in default and "linear_scan_bwd" in default
    assert "mosaic" not in default
    assert "linear_scan_fwd_mosaic" in mosaic and "linear_scan_bwd_mosaic" in mosaic
    assert_allclose(f(a, b, h0), f(a, b, h0, layout="mosaic"), n=37)


AUTO_MOSAIC = {
    # dtype, (batch, l, d), a form: 32 or more programs of 128 channels
    "fp32-full": ("float32", (8, 4096, 2048), "full"),
    "fp32-32-programs": ("float32", (2, 4096, 2048), "full"),
    "c64-full-64-programs": ("complex64", (8, 1001, 1024), "full"),
    "c64-shared": ("complex64", (8, 4096, 1024), "shared"),
    "bf16-perseq": ("bfloat16", (4, 300, 2048), "per_seq"),
}


@pytest.mark.parametrize(
    ("dtype", "shape", "form"), list(AUTO_MOSAIC.values()), ids=list(AUTO_MOSAIC)
)
def test_auto_is_mosaic_on_hopper(hopper, dtype, shape, form):
    """No ``layout``, on "Hopper", at shapes the Mosaic kernels take: Mosaic kernels only."""
    args = shapes(jnp.dtype(dtype), *shape, form)
    f = lambda a, b, h0: linear_scan(a, b, h0)
    text = lowered(f, *args)
    assert text.count(MOSAIC) == 1 and TRITON not in text
    loss = lambda *x: jnp.sum(jnp.abs(f(*x).astype(jnp.complex64)) ** 2)
    text = lowered(jax.grad(loss, argnums=(0, 1, 2)), *args)
    assert text.count(MOSAIC) == 2 and TRITON not in text


def test_auto_planes_are_mosaic_on_hopper(hopper):
    """``linear_scan_planes`` (the S5/LRU path) at an S5 shape: Mosaic."""
    sds = jax.ShapeDtypeStruct
    a = (sds((1024,), jnp.float32),) * 2
    b = (sds((8, 4096, 1024), jnp.float32),) * 2
    text = lowered(lambda a, b: linear_scan_planes(a, b), a, b)
    assert text.count(MOSAIC) == 1 and TRITON not in text


AUTO_TRITON = {
    # dtype, (batch, l, d), a form, options
    "16-programs": ("float32", (1, 4096, 2048), "full", {}),
    "c64-tv-16-programs": ("complex64", (8, 4096, 256), "full", {}),
    "d-not-128": ("float32", (64, 512, 200), "full", {}),
    "s5-192": ("complex64", (32, 1024, 192), "shared", {}),
    "block_d": ("float32", (8, 4096, 2048), "full", {"block_d": 64}),
    "unroll": ("float32", (8, 4096, 2048), "full", {"unroll": 8}),
    "num_warps": ("complex64", (8, 4096, 1024), "shared", {"num_warps": 2}),
    "num_stages": ("float32", (8, 4096, 2048), "full", {"num_stages": 2}),
    "chunks": ("float32", (8, 4096, 2048), "full", {"chunks": 1}),
}


@pytest.mark.parametrize(
    ("dtype", "shape", "form", "opts"), list(AUTO_TRITON.values()), ids=list(AUTO_TRITON)
)
def test_auto_falls_back_to_triton(hopper, dtype, shape, form, opts):
    """No ``layout``, on "Hopper": Triton for few programs, other state sizes, and any
    Triton launch option."""
    args = shapes(jnp.dtype(dtype), *shape, form)
    text = lowered(lambda a, b, h0: linear_scan(a, b, h0, **opts), *args)
    assert MOSAIC not in text and TRITON in text


def test_auto_mosaic_chunks_rule(monkeypatch):
    """Below 32 programs, a time-invariant scan gets the L-parallel Mosaic scan with
    chunks of whole tiles, >= 256 steps, towards 128 programs; none where that cannot reach
    64 programs, in interpret mode, with Triton options, or for other state sizes."""
    monkeypatch.setattr(lm, "on_hopper", lambda: True)
    rule = ls.auto_mosaic_chunks
    assert rule(8, 256, 4096, False, {}) == 8  # 16 programs
    assert rule(1, 512, 16384, False, {}) == 32  # 4 programs
    assert rule(2, 256, 16384, False, {}) == 32
    assert rule(8, 256, 1024, False, {}) == 4  # chunks of >= 256 steps
    assert rule(8, 256, 512, False, {}) == 1  # 2 chunks: 32 programs
    assert rule(8, 256, 4000, False, {}) == 1  # 4000 / 2 steps: not whole tiles
    assert rule(8, 512, 4096, False, {}) == 1  # 32 programs: the single pass
    assert rule(8, 200, 4096, False, {}) == 1
    assert rule(8, 256, 4096, True, {}) == 1
    assert rule(8, 256, 4096, False, {"chunks": 4}) == 1
    monkeypatch.setattr(lm, "on_hopper", lambda: False)
    assert rule(8, 256, 4096, False, {}) == 1


def test_auto_small_grid_is_chunked_mosaic(hopper):
    """With a time-invariant ``a`` on 16 programs: ``linear_scan_planes`` (complex) takes the
    Mosaic look-back scan (one Mosaic kernel forward, two for the gradient, no Triton; no
    end-state kernel), ``linear_scan`` (real) the L-parallel Mosaic scan (two forward, four
    for the gradient); a time-varying ``a`` there stays with Triton."""
    sds = jax.ShapeDtypeStruct
    b = (sds((8, 4096, 256), jnp.float32),) * 2
    f = lambda a, b: linear_scan_planes(a, b)

    def grad(a, b):
        loss = lambda a, b: sum(jnp.sum(h**2) for h in f(a, b))
        return jax.grad(loss, argnums=(0, 1))(a, b)

    a = (sds((256,), jnp.float32),) * 2
    assert ls.auto_lookback(256, jnp.float32)
    text = lowered(f, a, b)
    assert text.count(MOSAIC) == 1 and TRITON not in text
    assert "linear_scan_lookback_mosaic" in text and "ends_mosaic" not in text
    text = lowered(grad, a, b)
    assert text.count(MOSAIC) == 2 and TRITON not in text
    assert "linear_scan_lookback_mosaic_bwd" in text
    text = lowered(f, b, b)  # time-varying a
    assert MOSAIC not in text and TRITON in text
    text = lowered(lambda a, b: linear_scan(a, b), a[0], b[0])  # real
    assert text.count(MOSAIC) == 2 and TRITON not in text
    text = lowered(lambda a, b: linear_scan(a, b), b[0], b[0])  # real, time-varying a
    assert MOSAIC not in text and TRITON in text


SINGLE_PASS_GRIDS = {
    # (batch, l, d), a form, complex, whether layout=None takes the look-back scan
    "c64-32-programs": ((8, 4096, 512), "shared", True, True),
    "c64-64-programs-perseq": ((32, 1024, 256), "per_seq", True, True),
    "c64-64-programs-odd": ((8, 1001, 1024), "shared", True, False),  # below 1024 steps
    "c64-128-programs": ((16, 4096, 1024), "shared", True, False),
    "fp32-64-programs": ((32, 1024, 256), "shared", False, False),
}


@pytest.mark.parametrize(
    ("shape", "form", "is_complex", "lookback"),
    list(SINGLE_PASS_GRIDS.values()),
    ids=list(SINGLE_PASS_GRIDS),
)
def test_auto_single_pass_grid_kernel(hopper, shape, form, is_complex, lookback):
    """Where ``auto_layout`` picks the single-pass Mosaic scan for a time-invariant ``a``:
    complex planes on 32-64 programs from 1024 steps take the look-back scan instead (one
    Mosaic kernel forward, two for the gradient), every other grid keeps the single pass; a
    time-varying ``a`` keeps it too."""
    batch, length, d = shape
    sds = jax.ShapeDtypeStruct
    a_shape = (d,) if form == "shared" else (batch, d)
    assert ls.auto_layout(batch, d, False, {}) == "mosaic"
    if is_complex:
        assert ls.auto_lookback_single_pass(batch, d, length, jnp.float32) == lookback
    n = 2 if is_complex else 1
    a, b = (sds(a_shape, jnp.float32),) * n, (sds(shape, jnp.float32),) * n
    f = lambda a, b: linear_scan_planes(a, b) if is_complex else (linear_scan(a[0], b[0]),)

    def grad(a, b):
        loss = lambda a, b: sum(jnp.sum(h**2) for h in f(a, b))
        return jax.grad(loss, argnums=(0, 1))(a, b)

    kernel = "linear_scan_lookback_mosaic" if lookback else "linear_scan_fwd_mosaic"
    text = lowered(f, a, b)
    assert text.count(MOSAIC) == 1 and TRITON not in text and kernel in text
    text = lowered(grad, a, b)
    assert text.count(MOSAIC) == 2 and TRITON not in text
    assert ("linear_scan_lookback_mosaic_bwd" in text) == lookback
    text = lowered(f, b, b)  # time-varying a: the single pass
    assert text.count(MOSAIC) == 1 and "linear_scan_fwd_mosaic" in text


def test_auto_lookback_single_pass_rule(monkeypatch):
    """At most 64 programs (``d`` padded to whole 128-channel programs), at least 1024
    steps, and only where the look-back kernel runs (Hopper)."""
    monkeypatch.setattr(lm, "on_hopper", lambda: True)
    monkeypatch.setattr(lbm, "on_hopper", lambda: True)
    rule = ls.auto_lookback_single_pass
    assert rule(8, 512, 4096, jnp.float32) and rule(32, 256, 1024, jnp.float32)
    assert rule(2, 2048, 1024, jnp.float32) and rule(1, 8192, 16384, jnp.bfloat16)
    assert not rule(32, 256, 1023, jnp.float32)
    assert not rule(16, 1024, 4096, jnp.float32)  # 128 programs
    assert not rule(33, 256, 4096, jnp.float32)  # 66 programs
    assert not rule(64, 200, 4096, jnp.float32)  # 200 channels: 2 programs a sequence, 128
    monkeypatch.setattr(lbm, "on_hopper", lambda: False)
    assert not rule(8, 512, 4096, jnp.float32)


def test_auto_off_hopper_is_triton(monkeypatch):
    """Compiled (not interpret) for a device that is not Hopper: Triton."""
    monkeypatch.setattr(ls, "check_backend", lambda *a: None)
    assert not lm.on_hopper()
    assert ls.auto_layout(8, 2048, False, {}) == "channel"
    assert not ls.auto_lookback(256, jnp.float32)
    args = shapes(jnp.float32, 8, 4096, 2048, "full")
    text = lowered(lambda a, b, h0: linear_scan(a, b, h0), *args)
    assert MOSAIC not in text and TRITON in text


def test_auto_layout_rule(monkeypatch):
    monkeypatch.setattr(lm, "on_hopper", lambda: True)
    assert ls.auto_layout(8, 1024, False, {}) == "mosaic"  # 64 programs
    assert ls.auto_layout(1, 8192, False, {"block_d": None}) == "mosaic"
    assert ls.auto_layout(8, 1000, False, {}) == "channel"
    assert ls.auto_layout(8, 1024, True, {}) == "channel"
    assert ls.auto_layout(8, 1024, False, {"chunks": 1}) == "channel"
    # 32 programs of 128 channels, real or complex, run Mosaic (faster than the Triton
    # two-pass scan on the H100), 16 or 31 do not.
    assert ls.auto_layout(2, 2048, False, {}) == "mosaic"
    assert ls.auto_layout(8, 512, False, {}) == "mosaic"
    assert ls.auto_layout(31, 128, False, {}) == "channel"
    assert ls.auto_layout(8, 256, False, {}) == "channel"


# ----------------------------------------------------------------------------------------
# layout="mosaic" outside its limits
# ----------------------------------------------------------------------------------------


ERRORS = {
    # state shape, length, options, match
    # make_inputs gives a time-varying a: the L-parallel Mosaic scan is time-invariant only
    "chunks2-full": ((128,), 64, {"chunks": 2}, r"\(chunks > 1\) Mosaic scan needs a time-inv"),
    "unroll3": ((128,), 5, {"unroll": 3}, "unroll=3 does not divide"),
    "unroll64": ((128,), 5, {"unroll": 64}, "unroll=64 does not divide"),
}


@pytest.mark.parametrize(
    ("state", "length", "opts", "match"), list(ERRORS.values()), ids=list(ERRORS)
)
def test_unsupported_mosaic_raises(rng, monkeypatch, state, length, opts, match):
    """Raised by the entry point, before anything runs (here: before the scan is called)."""

    def no_scan(*a):
        raise AssertionError("the scan ran")

    monkeypatch.setattr(ls, "_scan", no_scan)
    a, b, h0, _ = make_inputs(rng, "float32", (BATCH, length, *state))
    with pytest.raises(NotImplementedError, match="linear_scan: layout='mosaic': .*" + match):
        linear_scan(a, b, h0, interpret=True, layout="mosaic", **opts)


def test_mosaic_chunks_of_whole_tiles(rng, monkeypatch):
    """``chunks > 1`` cuts the sequence into chunks of whole 32-step tiles (a partial tile
    would put its padding between a chunk and the carry it receives)."""
    monkeypatch.setattr(ls, "_scan", lambda *a: pytest.fail("the scan ran"))
    _, b, h0, _ = make_inputs(rng, "float32", (BATCH, 96, 128))
    a_lti = make_lti_a(rng, "float32", lti_a_shape("shared", BATCH, (128,)))
    with pytest.raises(NotImplementedError, match="chunks of 24 steps are not whole 32-step"):
        linear_scan(a_lti, b, h0, interpret=True, layout="mosaic", chunks=4)


def test_unknown_layout_raises(rng, monkeypatch):
    monkeypatch.setattr(ls, "_scan", lambda *a: pytest.fail("the scan ran"))
    a, b, h0, _ = make_inputs(rng, "complex64", (BATCH, 5, 128))
    with pytest.raises(NotImplementedError, match="layout='bogus'"):
        linear_scan(a, b, h0, interpret=True, layout="bogus")
    planes = lambda x: (jnp.real(x), jnp.imag(x))
    with pytest.raises(NotImplementedError, match="layout='bogus'"):
        linear_scan_planes(planes(a), planes(b), interpret=True, layout="bogus")


def test_mosaic_needs_hopper(rng, monkeypatch):
    """Compiled (not interpret) on a device that is not Hopper: this CPU, backend check off."""
    monkeypatch.setattr(ls, "check_backend", lambda *a: None)
    assert not lm.on_hopper()
    a, b, h0, _ = make_inputs(rng, "float32", (BATCH, 5, 128))
    with pytest.raises(NotImplementedError, match=r"compute capability 9\.0"):
        linear_scan(a, b, h0, layout="mosaic")
    with pytest.raises(NotImplementedError, match=r"compute capability 9\.0"):
        lowered(lambda *x: linear_scan(*x, layout="mosaic"), a, b, h0)


def test_supported():
    assert lm.supported(256, 8, 1, interpret=True) is None
    assert lm.supported(256, 32, 1, interpret=True) is None
    assert "compute capability" in lm.supported(256, 8, 1, interpret=False)  # this CPU
    assert "128" in lm.supported(192, 8, 1, interpret=True)
    assert "chunks" in lm.supported(256, 8, 4, interpret=True)
    assert lm.supported(256, 8, 4, interpret=True, lti=True, length=128) is None
    assert "whole 32-step tiles" in lm.supported(256, 8, 4, interpret=True, lti=True, length=96)
    assert "unroll" in lm.supported(256, 16 + 8, 1, interpret=True)
