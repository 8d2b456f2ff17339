"""The Pallas Mosaic GPU selective-scan backward (``bwd_layout="mosaic"``) against the reference.

* The ``dB``/``dC`` warp butterfly: its lane algebra (the same function the compiled kernel
  builds MLIR from) on random values: every lane ends with the warp's sum of the product
  :func:`butterfly_owner` names, with ``m - 1`` scatter shuffles, for 8, 16 and 32 products.
* Interpret mode (the kernel program with TMA copies as plain copies and the shuffles as
  gathers within each warp): every input's gradient and ``h0``'s against
  ``ssmjax.ops.selective_scan(..., implementation="sequential")`` with the options of the
  backward itself -- 8-step tiles, one-step and four-step sub-tiles, one and three slots, a
  masked last tile, fp32 and bf16 (the cases without options in
  ``test_selective_scan_mosaic.py`` run it too: one step, 37 and 64 steps, grouped B/C).
* Lowering for CUDA on this CPU: the real Mosaic GPU lowering (inline shuffles, TMA of the
  checkpoints, the warp rows) of the gradient at the benchmark shape, an odd length and
  ``n = 4``; the automatic choice (Mosaic after the Mosaic forward unless a Triton backward
  option is given or the call is outside its limits).
* Explicit ``bwd_layout="mosaic"`` outside its limits raises before any work.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_selective_scan_kernel import check_against_sequential, make_inputs
from test_selective_scan_mosaic import MOSAIC, TRITON, lowered, shapes

import pallas_kernels._selective_scan_mosaic_bwd as ssb
import pallas_kernels.selective_scan as ssk
from pallas_kernels.selective_scan import selective_scan as selective_scan_kernel

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

# ----------------------------------------------------------------------------------------
# The butterfly
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [8, 16, 32])
def test_butterfly_sums_each_product_over_the_warp(rng, m):
    vals = rng.normal(size=(m, ssb.WARP))  # product i at every lane
    lanes = np.arange(ssb.WARP)
    shuffles = []

    def shfl(x, d):
        shuffles.append(d)
        return x[lanes ^ d]

    v, owner = ssb._butterfly_math(
        list(vals),
        lanes,
        shfl=shfl,
        select=np.where,
        nonzero=lambda lane, d: (lane & d) != 0,
        add=np.add,
        owner_of=lambda lane: ssb.butterfly_owner(m)[lane],
    )
    np.testing.assert_allclose(v, vals.sum(axis=1)[owner], rtol=1e-12)
    assert sorted(set(owner)) == list(range(m))  # every product is somewhere
    shift = 5 - int(np.log2(m))  # the kernel's owner formula
    np.testing.assert_array_equal(owner, (lanes >> shift) & (m - 1))
    scatter, allreduce = ssb.butterfly_plan(m)
    assert len(shuffles) == m - 1 + len(allreduce) and len(scatter) == np.log2(m)


# ----------------------------------------------------------------------------------------
# Interpret mode against the sequential reference
# ----------------------------------------------------------------------------------------


CASES = {
    # dtype, length, (g_B, g_C), full (z, D, dt_bias, softplus), n, d, options
    # 5 tiles of 8 steps (the last masked) through 1 slot, 4-step sub-tiles, 2 groups of B.
    "fp32-l37-t8-sub4-stages1": (
        "float32",
        37,
        (2, 1),
        True,
        8,
        256,
        {"mosaic_tile": 8, "bwd_unroll": 8, "mosaic_bwd_sub": 4, "mosaic_bwd_stages": 1},
    ),
    # 3 whole tiles of 8 steps, one-step sub-tiles, 3 slots (as many as tiles), no z/D/bias.
    "fp32-l24-t8-sub1-bare": (
        "float32",
        24,
        (1, 1),
        False,
        8,
        128,
        {"mosaic_tile": 8, "bwd_unroll": 8, "mosaic_bwd_sub": 1, "mosaic_bwd_stages": 3},
    ),
    # 2 tiles of 16 (the default), the last masked. (n = 16, 32 products on 32 lanes: the
    # no-option cases of test_selective_scan_mosaic.py.)
    "bf16-l20": ("bfloat16", 20, (1, 1), True, 4, 128, {"bwd_layout": "mosaic"}),
}


@pytest.mark.parametrize(
    ("dtype", "length", "groups", "full", "n", "d", "opts"), list(CASES.values()), ids=list(CASES)
)
def test_matches_sequential(rng, monkeypatch, dtype, length, groups, full, n, d, opts):
    calls = []  # the case reaches this kernel, not a fallback
    real = ssk.run_bwd_mosaic
    monkeypatch.setattr(ssk, "run_bwd_mosaic", lambda *a: calls.append(1) or real(*a))
    args = make_inputs(rng, jnp.dtype(dtype), length, groups, full, d=d, n=n)
    check_against_sequential(rng, args, full, {"layout": "mosaic", **opts})
    assert calls


# ----------------------------------------------------------------------------------------
# Lowering for CUDA and the automatic choice
# ----------------------------------------------------------------------------------------


def _grad_text(args, **opts):
    f = lambda p: selective_scan_kernel(**p, dt_softplus=True, **opts)
    return lowered(jax.grad(lambda p: jnp.sum(f(p).astype(jnp.float32))), args)


@pytest.mark.parametrize(
    ("shape", "dtype", "full", "groups"),
    [
        ((8, 4096, 4096, 16), "bfloat16", True, (1, 1)),
        ((8, 1001, 4096, 16), "bfloat16", True, (2, 1)),  # masked last tile, 2 groups
        ((2, 77, 512, 4), "float32", False, (1, 4)),
    ],
)
def test_gradient_lowers_to_two_mosaic_kernels(hopper, shape, dtype, full, groups):
    """Forward and backward Mosaic, no Triton: catches what the Mosaic GPU lowering rejects
    (the inline shuffles, the checkpoint TMA, the warp-row loads), which interpret mode does
    not run. Also the default on Hopper (no options)."""
    args = shapes(*shape, dtype, full, groups)
    for opts in ({}, {"bwd_layout": "mosaic"}):
        text = _grad_text(args, **opts)
        assert text.count(MOSAIC) == 2 and TRITON not in text
        assert "selective_scan_bwd_mosaic" in text


@pytest.mark.parametrize(
    ("n", "opts"),
    [
        (16, {"bwd_layout": "split"}),
        (16, {"bwd_block_d": 16}),
        (16, {"bwd_butterfly": True, "bwd_layout": "channel", "bwd_block_d": 32}),
        (32, {}),  # 2 n = 64 products: more than a warp's lanes
        (16, {"mosaic_tile": 8}),  # the forward's tile shorter than the backward's
        (4, {"bwd_unroll": 8, "unroll": 8}),  # 8 steps x 2 n = 64 products: not 128
        (4, {"mosaic_bwd_sub": 3}),  # no bwd_layout: outside its limits, skipped quietly
    ],
)
def test_auto_backward_falls_back_to_triton(hopper, n, opts):
    args = shapes(2, 64, 256, n, "bfloat16", True)
    text = _grad_text(args, **opts)
    assert text.count(MOSAIC) == 1 and TRITON in text


# ----------------------------------------------------------------------------------------
# Explicit bwd_layout="mosaic" outside its limits
# ----------------------------------------------------------------------------------------


ERRORS = {
    "channel-forward": (16, {"layout": "channel"}, "needs the Mosaic forward"),
    "n32": (32, {}, "n = 32 outside 4..16"),
    "sub3": (16, {"mosaic_bwd_sub": 3}, "must divide bwd_unroll=16"),
    "tile-vs-forward": (16, {"bwd_unroll": 64}, "unroll 64 does not divide mosaic_tile=32"),
    "bwd_block_d": (16, {"bwd_block_d": 16}, "one warpgroup"),
    "stages0": (16, {"mosaic_bwd_stages": 0}, "must be positive"),
    "smem": (16, {"mosaic_bwd_stages": 12}, "exceed"),
}


@pytest.mark.parametrize(("n", "opts", "match"), list(ERRORS.values()), ids=list(ERRORS))
def test_unsupported_mosaic_backward_raises(rng, monkeypatch, n, opts, match):
    def no_scan(*a):
        raise AssertionError("the scan ran")

    monkeypatch.setattr(ssk, "_scan", no_scan)
    args = make_inputs(rng, jnp.bfloat16, 5, (1, 1), True, d=256, n=n)
    with pytest.raises(NotImplementedError, match=match):
        selective_scan_kernel(**args, dt_softplus=True, interpret=True, bwd_layout="mosaic", **opts)
