"""The Pallas Mosaic GPU selective-scan forward (``layout="mosaic"``) against the reference.

* Interpret mode (the same kernel program, TMA copies and barriers replaced by plain copies):
  ``y``, the final state and every input's gradient (random cotangents on both outputs; the
  gradients run the backward the call defaults to from the checkpoints the Mosaic forward
  saves: the Mosaic backward of ``_selective_scan_mosaic_bwd`` in the cases without options,
  a Triton one with a channel backward or 8-step tiles) against
  ``ssmjax.ops.selective_scan(..., implementation="sequential")`` at lengths of one step, of
  a partial tile (padded and masked) and of whole tiles, with h0, grouped B/C (different
  group counts for B and C), with and without z / D / dt_bias / softplus, fp32 and bf16 I/O,
  short tiles with fewer slots than tiles (slot reuse and refill), both channel-layout
  backwards; the saved checkpoints themselves against those of the Triton channel forward;
  the forward without checkpoints (not differentiated) as both passes of the two-pass
  (chunked) forward, with blocks longer than the checkpoint interval.
* Lowering for CUDA on this CPU (``check_backend`` and ``on_hopper`` patched): the real
  Mosaic GPU lowering (register layouts, TMA, barriers), which interpret mode does not run,
  for the forward with and without the optional inputs, a masked odd length and a gradient.
* The automatic choice (``layout=None``): Mosaic on Hopper when supported; the Triton
  ``"channel"`` forward when Triton launch options are given, when the call is outside the
  Mosaic kernel's limits, off Hopper, and in interpret mode.
* Explicit ``layout="mosaic"`` outside its limits raises ``NotImplementedError`` before any
  work.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_selective_scan_kernel import check_against_sequential, make_inputs

import pallas_kernels._selective_scan_mosaic as ssm
import pallas_kernels.selective_scan as ssk
from pallas_kernels.selective_scan import selective_scan as selective_scan_kernel
from ssmjax.ops import selective_scan
from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

MOSAIC = "mosaic_gpu_v2"  # the custom call of a Mosaic GPU kernel
TRITON = "__gpu$xla.gpu.triton"  # that of a Pallas-Triton kernel

CASES = {
    # dtype, length, (g_B, g_C), full (z, D, dt_bias, softplus), n, options. d = 256, so g = 2
    # gives 128 channels (one Mosaic program) per group. Default tile: 32 steps, 3 slots.
    # Without options the backward is the Mosaic one (16-step tiles, 2 slots).
    "fp32-l1": ("float32", 1, (1, 1), True, 4, {}),  # one step: the tile is nearly all padding
    "fp32-l37-g21-n16": ("float32", 37, (2, 1), True, 16, {}),  # a partial second tile
    "fp32-l64-g12-bare": ("float32", 64, (1, 2), False, 4, {}),  # two whole tiles, unmasked
    "bf16-l37-g12": ("bfloat16", 37, (1, 2), True, 4, {}),
    # The channel backward: checkpoints every 2 steps.
    "bf16-l64-bwdchan": ("bfloat16", 64, (1, 1), True, 4, {"bwd_layout": "channel"}),
    # 6 tiles of 8 steps through 2 slots: every slot refilled twice; the last tile partial.
    "fp32-l41-tile8-stages2": (
        "float32",
        41,
        (2, 1),
        True,
        4,
        {"mosaic_tile": 8, "mosaic_stages": 2},
    ),
}


def _tol(dtype):
    return jnp.bfloat16 if jnp.dtype(dtype) == jnp.bfloat16 else jnp.float32


@pytest.mark.parametrize(
    ("dtype", "length", "groups", "full", "n", "opts"), list(CASES.values()), ids=list(CASES)
)
def test_matches_sequential(rng, dtype, length, groups, full, n, opts):
    """The differentiated call: the forward that saves checkpoints, the Triton backward."""
    args = make_inputs(rng, jnp.dtype(dtype), length, groups, full, d=256, n=n)
    check_against_sequential(rng, args, full, {"layout": "mosaic", **opts})


@pytest.mark.parametrize(
    ("bwd_layout", "opts"),
    [
        ("split", {"mosaic_tile": 8, "mosaic_stages": 1}),  # checkpoints every 4 steps
        ("channel", {"mosaic_tile": 8, "mosaic_stages": 2}),  # every 2
    ],
)
def test_checkpoints_match_the_triton_forward(rng, monkeypatch, bwd_layout, opts):
    """The states the differentiated Mosaic forward saves for the backward, ``(b, ceil(l /
    bwd_unroll), n, d)``, are those of the Triton channel forward (same formulas in
    interpret mode), at a length that is neither a whole number of tiles nor of blocks."""
    saved = []
    run_fwd = ssk._run_fwd

    def spy(cfg, p, save):
        out = run_fwd(cfg, p, save)
        if save:
            saved.append(np.asarray(out[2]))
        return out

    monkeypatch.setattr(ssk, "_run_fwd", spy)
    args = make_inputs(rng, jnp.float32, 37, (2, 1), True, d=256, n=4)
    for kw in ({"layout": "mosaic", **opts}, {"layout": "channel"}):
        f = lambda p, kw=kw: selective_scan_kernel(
            **p, dt_softplus=True, interpret=True, bwd_layout=bwd_layout, **kw
        )
        jax.vjp(f, args)  # the forward of a differentiated call
    mosaic, channel = saved
    every = 4 if bwd_layout == "split" else 2  # the default bwd_unroll of each at n = 4
    assert mosaic.shape == channel.shape == (2, -(-37 // every), 4, 256)
    np.testing.assert_allclose(mosaic, channel, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "length", "groups", "full", "n", "chunks", "opts"),
    [
        # chunks of 37 steps, a partial tile each; blocks of 8 steps (no checkpoints)
        ("float32", 74, (2, 1), True, 4, 2, {"unroll": 8}),
        ("bfloat16", 48, (1, 2), False, 4, 3, {"mosaic_tile": 8, "mosaic_stages": 2}),
    ],
)
def test_two_pass_forward_matches_sequential(rng, dtype, length, groups, full, n, chunks, opts):
    """Not differentiated: the forward without checkpoints, in blocks of ``unroll`` steps;
    chunks > 1: both passes Mosaic (the first without z and D, from zero states)."""
    args = make_inputs(rng, jnp.dtype(dtype), length, groups, full, d=256, n=n)
    kw = dict(dt_softplus=full, return_final_state=True)
    y, h = selective_scan_kernel(
        **args, **kw, interpret=True, chunks=chunks, layout="mosaic", **opts
    )
    y_ref, h_ref = selective_scan(**args, **kw, implementation="sequential")
    assert y.dtype == args["x"].dtype and h.dtype == jnp.float32
    assert_allclose(y, y_ref, dtype=_tol(dtype), n=length)
    assert_allclose(h, h_ref, dtype=_tol(dtype), n=length)


# ----------------------------------------------------------------------------------------
# Lowering for CUDA (no GPU needed) and the automatic choice of forward
# ----------------------------------------------------------------------------------------


def shapes(b, length, d, n, dtype, full, groups=(1, 1)):
    """``jax.ShapeDtypeStruct`` inputs (nothing allocated: lowering a big shape is cheap)."""
    dtype = jnp.dtype(dtype)
    sds = jax.ShapeDtypeStruct
    bc = lambda g: sds((b, length, n) if g == 1 else (b, length, g, n), dtype)
    return {
        "x": sds((b, length, d), dtype),
        "dt": sds((b, length, d), dtype),
        "A": sds((d, n), jnp.float32),
        "B": bc(groups[0]),
        "C": bc(groups[1]),
        "D": sds((d,), jnp.float32) if full else None,
        "z": sds((b, length, d), dtype) if full else None,
        "dt_bias": sds((d,), jnp.float32) if full else None,
    }


def lowered(fn, args) -> str:
    return jax.jit(fn).trace(args).lower(lowering_platforms=("cuda",)).as_text()


LOWERINGS = {
    # (b, l, d, n), dtype, full (z, D, dt_bias, softplus), (g_B, g_C), options. The gradient
    # runs the Mosaic backward where it takes the call (test_selective_scan_mosaic_bwd.py),
    # here the Triton one: a Triton backward option, or mosaic_tile 8 < its 16-step tile.
    "full-bf16": ((8, 4096, 4096, 16), "bfloat16", True, (1, 1), {"bwd_layout": "split"}),
    "odd-length": ((8, 1001, 4096, 16), "bfloat16", True, (1, 1), {"bwd_block_d": 32}),
    "bare-fp32": ((2, 1000, 1024, 16), "float32", False, (1, 1), {"bwd_layout": "channel"}),
    "groups-tile8": (
        (2, 77, 512, 4),
        "float32",
        True,
        (4, 2),
        {"mosaic_tile": 8, "mosaic_stages": 2},
    ),
    "n64-unroll8": ((2, 77, 512, 64), "bfloat16", True, (1, 1), {"unroll": 8}),
}


@pytest.mark.parametrize(
    ("shape", "dtype", "full", "groups", "opts"), list(LOWERINGS.values()), ids=list(LOWERINGS)
)
def test_lowers_to_mosaic_gpu(hopper, shape, dtype, full, groups, opts):
    """The forward lowers to one Mosaic GPU kernel and no Triton one; its gradient (the
    forward that saves checkpoints) also to a Triton backward.

    Catches what the Mosaic GPU lowering rejects (layouts of loaded vectors, TMA shapes,
    a select with a scalar condition, ...), which interpret mode does not run.
    """
    b, length, d, n = shape
    args = shapes(b, length, d, n, dtype, full, groups)

    def f(p):
        return selective_scan_kernel(**p, dt_softplus=full, chunks=1, layout="mosaic", **opts)

    text = lowered(f, args)
    assert text.count(MOSAIC) == 1 and TRITON not in text
    if n < 64:  # n = 64: the (slow to trace) backward has nothing Mosaic to add
        text = lowered(jax.grad(lambda p: jnp.sum(f(p).astype(jnp.float32))), args)
        assert text.count(MOSAIC) == 1 and TRITON in text


@pytest.mark.parametrize("shape", [(8, 4096, 4096, 16), (2, 77, 256, 4)])
def test_auto_is_mosaic_on_hopper(hopper, shape):
    """No layout: the Mosaic forward (on Hopper, where it is supported) and the Mosaic
    backward."""
    args = shapes(*shape, "bfloat16", True)
    f = lambda p: selective_scan_kernel(**p, dt_softplus=True)
    text = lowered(f, args)
    assert text.count(MOSAIC) == 1 and TRITON not in text
    text = lowered(jax.grad(lambda p: jnp.sum(f(p).astype(jnp.float32))), args)
    assert text.count(MOSAIC) == 2 and TRITON not in text


@pytest.mark.parametrize("groups", [(1, 1), (2, 2)])
def test_backward_permutes_only_block_sums(hopper, groups):
    """The split backward's per-block ``dB``/``dC`` butterfly partials ``(b, d / 16, l, 32)``
    are summed over the blocks before they are permuted to state order: no gather or
    transpose in the gradient's program touches an array of the partials' size (XLA
    materialised a 1.07 GB gather at the benchmark shape when the permutation came first)."""
    b, length, d, n = 8, 4096, 4096, 16
    args = shapes(b, length, d, n, "bfloat16", True, groups)
    f = lambda p: selective_scan_kernel(**p, dt_softplus=True, bwd_layout="split")
    text = lowered(jax.grad(lambda p: jnp.sum(f(p).astype(jnp.float32))), args)
    partial_size = b * (d // 16) * length * 2 * n
    moved = []
    for line in text.splitlines():
        if "stablehlo.gather" in line or "stablehlo.transpose" in line:
            for dims in re.findall(r"tensor<((?:\d+x)+)[a-z]", line):
                moved.append(math.prod(int(v) for v in dims.rstrip("x").split("x")))
    assert moved and max(moved) < partial_size // 16


def test_two_pass_lowers_to_mosaic_gpu(hopper):
    """A small grid on a long sequence: the default two-pass forward, both passes Mosaic."""
    args = shapes(1, 8192, 256, 4, "bfloat16", True)
    text = lowered(lambda p: selective_scan_kernel(**p, dt_softplus=True), args)
    assert text.count(MOSAIC) == 2 and TRITON not in text


FALLBACKS = {
    # (b, l, d, n), (g_B, g_C), options
    # Triton launch options given: the caller asked for the Triton forward.
    "block_d": ((2, 64, 256, 4), (1, 1), {"block_d": 64}),
    "num_warps": ((2, 64, 256, 4), (1, 1), {"num_warps": 2}),
    "ckpt_late": ((2, 64, 256, 4), (1, 1), {"ckpt_late": True}),
    "bc_block": ((2, 64, 256, 4), (1, 1), {"bc_block": True}),
    "prefetch_bc": ((2, 64, 256, 4), (1, 1), {"prefetch_bc": False}),
    # Outside the Mosaic kernel's limits.
    "d192": ((2, 64, 192, 4), (1, 1), {}),
    "d_per_group64": ((2, 64, 256, 4), (4, 1), {}),
    "n2": ((2, 64, 256, 2), (1, 1), {}),
    "tile6": ((2, 64, 256, 4), (1, 1), {"mosaic_tile": 6}),
    "bwd_state": ((2, 64, 256, 4), (1, 1), {"bwd_layout": "state"}),
    "smem": ((2, 64, 256, 4), (1, 1), {"mosaic_stages": 10}),  # 250 KiB of tiles
}


@pytest.mark.parametrize(("shape", "groups", "opts"), list(FALLBACKS.values()), ids=list(FALLBACKS))
def test_auto_falls_back_to_triton(hopper, shape, groups, opts):
    """No layout, on Hopper, but Triton options or a call the Mosaic kernel does not take:
    the Triton forward."""
    args = shapes(*shape, "bfloat16", True, groups)
    text = lowered(lambda p: selective_scan_kernel(**p, dt_softplus=True, **opts), args)
    assert MOSAIC not in text and TRITON in text


def test_auto_off_hopper_is_triton(monkeypatch):
    """A GPU that is not Hopper (here: this CPU with the backend check off)."""
    monkeypatch.setattr(ssk, "check_backend", lambda *a: None)
    assert not ssm.on_hopper()
    args = shapes(2, 64, 256, 16, "bfloat16", True)
    text = lowered(lambda p: selective_scan_kernel(**p, dt_softplus=True), args)
    assert MOSAIC not in text and TRITON in text


def test_auto_in_interpret_mode_is_channel(rng, monkeypatch):
    """``interpret=True`` never chooses Mosaic, on Hopper or not: the default forward is the
    channel layout's (the same values as ``layout="channel"``; here without Hopper)."""
    args = make_inputs(rng, jnp.float32, 5, (1, 1), True, d=256, n=4)
    f = lambda p, **kw: selective_scan_kernel(
        **p, dt_softplus=True, return_final_state=True, interpret=True, **kw
    )
    for on_hopper in (True, False):
        monkeypatch.setattr(ssm, "on_hopper", lambda on_hopper=on_hopper: on_hopper)
        jaxpr = str(jax.make_jaxpr(f)(args))
        assert "selective_scan_fwd_channel" in jaxpr and "mosaic" not in jaxpr
    for out, ref in zip(f(args), f(args, layout="channel"), strict=True):
        np.testing.assert_array_equal(out, ref)


# ----------------------------------------------------------------------------------------
# Explicit layout="mosaic" outside its limits
# ----------------------------------------------------------------------------------------


ERRORS = {
    "d_per_group64": (128, 16, (2, 1), {}, "d / g = 64 is not a multiple of 128"),
    "n2": (256, 2, (1, 1), {}, "n = 2 < 4"),
    "tile6": (256, 16, (1, 1), {"mosaic_tile": 6}, "unroll 4 does not divide mosaic_tile=6"),
    "tile_vs_unroll8": (256, 4, (1, 1), {"unroll": 8, "mosaic_tile": 4}, "unroll 8 does not"),
    "stages0": (256, 4, (1, 1), {"mosaic_stages": 0}, "must be positive"),
    "bwd_state": (256, 4, (1, 1), {"bwd_layout": "state"}, "channel layouts"),
    "block_d64": (256, 4, (1, 1), {"block_d": 64}, "block_d=128"),
    "num_warps8": (256, 4, (1, 1), {"num_warps": 8}, "num_warps=4"),
    "smem": (256, 4, (1, 1), {"mosaic_stages": 10}, "exceed"),
}


@pytest.mark.parametrize(
    ("d", "n", "groups", "opts", "match"), list(ERRORS.values()), ids=list(ERRORS)
)
def test_unsupported_mosaic_raises(rng, monkeypatch, d, n, groups, opts, match):
    """Raised by the entry point, before anything runs (here: before the scan is called)."""

    def no_scan(*a):
        raise AssertionError("the scan ran")

    monkeypatch.setattr(ssk, "_scan", no_scan)
    args = make_inputs(rng, jnp.bfloat16, 5, groups, True, d=d, n=n)
    with pytest.raises(NotImplementedError, match=match):
        selective_scan_kernel(**args, dt_softplus=True, interpret=True, layout="mosaic", **opts)


def test_mosaic_needs_hopper(rng, monkeypatch):
    """Compiled (not interpret) on a device that is not Hopper: this CPU, backend check off."""
    monkeypatch.setattr(ssk, "check_backend", lambda *a: None)
    args = make_inputs(rng, jnp.float32, 5, (1, 1), True, d=256, n=4)
    with pytest.raises(NotImplementedError, match=r"compute capability 9\.0"):
        selective_scan_kernel(**args, layout="mosaic")
    with pytest.raises(NotImplementedError, match=r"compute capability 9\.0"):
        jax.jit(lambda p: selective_scan_kernel(**p, layout="mosaic")).trace(args).lower(
            lowering_platforms=("cuda",)
        )
