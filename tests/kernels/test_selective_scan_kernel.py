"""The fused Pallas selective_scan kernel (interpret mode on CPU) against the reference.

Forward output, final state and the gradients w.r.t. every input (random cotangents on
``y`` and on the final state) are compared with ``ssmjax.ops.selective_scan(...,
implementation="sequential")`` at odd lengths, with h0, grouped B/C (different group counts
for B and C), with and without z / D / dt_bias / softplus, fp32 and bf16 I/O. ``unroll=4``
makes the 33-step cases run the prefetching block loop plus a tail block. Every case runs
with the forward and backward register layouts (``layout`` / ``bwd_layout`` =
``"channel"`` or ``"state"``) in the combinations below, and the channel layouts also
without prefetching B/C, with different forward / backward channel blocks, and with a
backward block (checkpoint interval ``bwd_unroll``) shorter than the forward's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels.selective_scan as ssk
from pallas_kernels.selective_scan import selective_scan as selective_scan_kernel
from ssmjax.ops import selective_scan
from ssmjax.ops.selective_scan import _auto_chain
from ssmjax.testing import assert_allclose

# Compiling, not running, is these tests' time.
pytestmark = pytest.mark.usefixtures("fast_compile")

ARGS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "h0")

CASES = [
    # dtype, length, (g_B, g_C), full (z, D, dt_bias, softplus), unroll
    ("float32", 1, (1, 1), True, 8),
    ("float32", 7, (2, 1), False, 8),
    ("float32", 33, (2, 4), True, 4),
    ("bfloat16", 33, (1, 1), True, 4),
]


def make_inputs(rng, dtype, length, groups, full, b=2, d=8, n=4):
    def bc(g):
        return rng.normal(size=(b, length, n) if g == 1 else (b, length, g, n))

    args = {
        "x": rng.normal(size=(b, length, d)),
        "dt": rng.normal(size=(b, length, d)) * 0.5 - (0.0 if full else 2.0),
        "A": -np.exp(rng.normal(size=(d, n)) * 0.5),
        "B": bc(groups[0]),
        "C": bc(groups[1]),
        "D": rng.normal(size=(d,)) if full else None,
        "z": rng.normal(size=(b, length, d)) if full else None,
        "dt_bias": rng.uniform(-3.0, -1.0, size=(d,)) if full else None,
        "h0": rng.normal(size=(b, d, n)),
    }
    if not full:
        args["dt"] = np.abs(args["dt"]) * 0.1 + 0.01
    io = ("x", "dt", "B", "C", "z")
    return {
        k: None if v is None else jnp.asarray(v, dtype if k in io else jnp.float32)
        for k, v in args.items()
    }


LAYOUTS = {
    "chan-state": {"layout": "channel"},
    "state-state": {"layout": "state"},
    "chan-chan": {"layout": "channel", "bwd_layout": "channel"},
    "state-chan": {"layout": "state", "bwd_layout": "channel"},
    "chan-chan-noprefetch": {
        "layout": "channel",
        "bwd_layout": "channel",
        "prefetch_bc": False,
        "block_d": 4,
        "bwd_block_d": 2,
    },
    # Forward blocks longer than the backward's (checkpoints every bwd_unroll steps).
    "chan-chan-bwd2": {"layout": "channel", "bwd_layout": "channel", "bwd_unroll": 2},
    "state-state-bwd2": {"layout": "state", "bwd_unroll": 2},
    # B/C loads of a whole block first; bf16 B/C as uint32 pairs (fp32 cases: unpacked).
    "chan-chan-bcblock-pack": {
        "layout": "channel",
        "bwd_layout": "channel",
        "bc_block": True,
        "pack_bc": True,
    },
    # Two threads per channel in the forward (n / 2 states each).
    "split-chan": {"layout": "split", "bwd_layout": "channel"},
    "split-state-pack": {"layout": "split", "bwd_layout": "state", "pack_bc": True},
    "chan-chan-prefetch-pack": {
        "layout": "channel",
        "bwd_layout": "channel",
        "prefetch_bc": True,
        "bwd_prefetch_bc": True,
        "pack_bc": True,
    },
    # Checkpoints stored after a block's last step (one extra, unused, at the end), into
    # each backward's checkpoint layout: (n, d) for channel (split: BUTTERFLY), (d, n).
    "chan-chan-late-bwd2": {
        "layout": "channel",
        "bwd_layout": "channel",
        "bwd_unroll": 2,
        "ckpt_late": True,
    },
    "chan-state-late": {"layout": "channel", "bwd_layout": "state", "ckpt_late": True},
}


@pytest.mark.parametrize("opts", list(LAYOUTS.values()), ids=list(LAYOUTS))
@pytest.mark.parametrize(("dtype", "length", "groups", "full", "unroll"), CASES)
def test_matches_sequential(rng, dtype, length, groups, full, unroll, opts):
    if opts.get("block_d") and 8 // max(groups) < opts["block_d"]:
        opts = {**opts, "block_d": None, "bwd_block_d": None}
    if opts.get("pack_bc") and dtype != "bfloat16":
        opts = {**opts, "pack_bc": False}
    args = make_inputs(rng, jnp.dtype(dtype), length, groups, full)
    check_against_sequential(rng, args, full, {"unroll": unroll, **opts})


def check_against_sequential(rng, args, full, opts):
    """The kernel (interpret mode, ``opts``) equals the sequential reference: ``y``, the final
    state and every input's gradient (random cotangents on both outputs), dtypes kept."""
    dtype, length = args["x"].dtype, args["x"].shape[1]

    def kernel(p):
        return selective_scan_kernel(
            **p, dt_softplus=full, return_final_state=True, interpret=True, **opts
        )

    def reference(p):
        return selective_scan(
            **p, dt_softplus=full, return_final_state=True, implementation="sequential"
        )

    (y, h), vjp = jax.vjp(kernel, args)
    (y_ref, h_ref), vjp_ref = jax.vjp(reference, args)
    assert y.dtype == dtype and h.dtype == jnp.float32
    tol = jnp.bfloat16 if dtype == jnp.bfloat16 else jnp.float32
    n = max(length, 4)
    assert_allclose(y, y_ref, dtype=tol, n=n)
    assert_allclose(h, h_ref, dtype=tol, n=n)
    cts = (
        jnp.asarray(rng.normal(size=y.shape), y.dtype),
        jnp.asarray(rng.normal(size=h.shape), jnp.float32),
    )
    (grads,), (grads_ref,) = vjp(cts), vjp_ref(cts)
    for name in ARGS:
        if args[name] is None:
            assert grads[name] is None
            continue
        assert grads[name].shape == args[name].shape, name
        assert grads[name].dtype == args[name].dtype, name
        assert_allclose(grads[name], grads_ref[name], dtype=tol, n=n, kind="grad", err_msg=name)


BUTTERFLY = {
    "channel": {"bwd_butterfly": True, "bwd_block_d": 32},
    "split": {"layout": "split", "bwd_layout": "split", "bwd_block_d": 16},
    "split-2warps-pack": {"layout": "split", "bwd_layout": "split", "bwd_block_d": 32},
    # The default launch (channel forward, split backward) with late checkpoints, and the
    # split forward's.
    "chan-split-late": {"layout": "channel", "bwd_layout": "split", "ckpt_late": True},
    "split-split-late": {"layout": "split", "bwd_layout": "split", "ckpt_late": True},
}


@pytest.mark.parametrize(
    ("dtype", "length", "groups", "full", "unroll", "n", "layout"),
    [(*CASES[2], 32, "channel"), (*CASES[2], 32, "split")]
    + [(*CASES[3], 4, layout) for layout in BUTTERFLY],  # bf16: B/C packed in pairs
)
def test_fast_math_and_butterfly_match_sequential(
    rng, dtype, length, groups, full, unroll, n, layout
):
    """``fast_math`` (its interpret twin: the same formulas on jnp) and the backward's
    butterfly ``dB``/``dC`` sums over a 32-lane warp: the channel layout's (fewer and more
    partials than lanes: ``2 n`` = 8, 64; 32 in ``test_lowers_to_triton``'s case) and the
    split layout's over the lanes of each parity (one and two warps per program)."""
    args = make_inputs(rng, jnp.dtype(dtype), length, groups, full, d=32 * max(groups), n=n)
    check_against_sequential(
        rng, args, full, {"fast_math": True, "unroll": unroll, **BUTTERFLY[layout]}
    )


def test_ckpt_late_needs_a_channel_forward(rng):
    args = make_inputs(rng, jnp.float32, 4, (1, 1), True, d=32)
    with pytest.raises(NotImplementedError, match="ckpt_late"):
        selective_scan_kernel(**args, interpret=True, layout="state", ckpt_late=True)


def test_butterfly_needs_one_warp_of_32_channels(rng):
    args = make_inputs(rng, jnp.float32, 4, (1, 1), True, d=64)
    chan = {"bwd_layout": "channel"}
    for bad in ({**chan, "bwd_block_d": 16}, {"bwd_layout": "state"}, {**chan, "bwd_num_warps": 2}):
        with pytest.raises(NotImplementedError, match="bwd_butterfly"):
            selective_scan_kernel(**args, interpret=True, bwd_butterfly=True, **bad)


@pytest.mark.parametrize(
    "opts",
    [
        {"layout": "channel", "bwd_layout": "channel", "prefetch_bc": False},
        {"layout": "state"},
        {"layout": "channel", "bwd_layout": "channel", "bc_block": True, "pack_bc": True},
        {
            "layout": "channel",
            "bwd_layout": "channel",
            "prefetch_bc": True,
            "bwd_prefetch_bc": True,
            "pack_bc": True,
        },
        {"layout": "channel", "bwd_layout": "channel", "fast_math": True, "bwd_butterfly": True},
        {"layout": "split", "prefetch_bc": True, "pack_bc": True},
        {"layout": "split", "bwd_layout": "split", "bwd_block_d": 32, "bwd_prefetch_bc": True},
    ],
    ids=[
        "channel",
        "state",
        "channel-bcblock-pack",
        "channel-prefetch-pack",
        "fast-butterfly",
        "split-prefetch-pack",
        "split-split",
    ],
)
def test_lowers_to_triton(rng, monkeypatch, opts):
    """Forward and backward lower to Triton IR (cross-lowered for CUDA, no GPU needed).

    Catches primitives or indexing the Pallas-Triton lowering rejects (slices of loaded
    values, non-power-of-two blocks, ...), which interpret mode does not.
    """
    monkeypatch.setattr(ssk, "check_backend", lambda *a: None)
    args = make_inputs(rng, jnp.bfloat16, 8, (1, 2), True, d=64, n=16)

    def f(p):
        return ssk.selective_scan(**p, dt_softplus=True, unroll=4, block_d=32, **opts)

    grad = jax.grad(lambda p: jnp.sum(f(p).astype(jnp.float32)))
    for fn in (f, grad):
        text = jax.jit(fn).trace(args).lower(lowering_platforms=("cuda",)).as_text()
        assert "triton" in text


def test_through_the_dispatcher(rng):
    args = make_inputs(rng, jnp.float32, 5, (1, 1), True)
    out = selective_scan(**args, dt_softplus=True, implementation="pallas")
    ref = selective_scan(**args, dt_softplus=True, implementation="sequential")
    assert_allclose(out, ref, n=5)


def test_auto_chain_uses_the_kernel_only_on_gpu():
    if jax.default_backend() == "gpu":
        assert _auto_chain(4096)[0] == "pallas"
    else:
        assert "pallas" not in _auto_chain(4096)


def test_fail_closed(rng):
    args = make_inputs(rng, jnp.float32, 3, (1, 1), True)
    args.pop("h0")
    if jax.default_backend() != "gpu":
        with pytest.raises(NotImplementedError, match="needs a GPU"):
            selective_scan_kernel(**args)
    bad_n = {**args, "A": args["A"][:, :3], "B": args["B"][..., :3], "C": args["C"][..., :3]}
    with pytest.raises(NotImplementedError, match="power of two"):
        selective_scan_kernel(**bad_n, interpret=True)
    with pytest.raises(NotImplementedError, match="layout"):
        selective_scan_kernel(**args, interpret=True, layout="rows")
    with pytest.raises(NotImplementedError, match="bwd_layout"):
        selective_scan_kernel(**args, interpret=True, bwd_layout="rows")
    with pytest.raises(NotImplementedError, match="dtype"):
        selective_scan_kernel(**{**args, "x": args["x"].astype(jnp.float16)}, interpret=True)
    with pytest.raises(NotImplementedError, match="must divide unroll"):
        selective_scan_kernel(**args, interpret=True, unroll=2, bwd_unroll=4)
    with pytest.raises(NotImplementedError, match="pack_bc"):
        selective_scan_kernel(**args, interpret=True, pack_bc=True)
    with pytest.raises(NotImplementedError, match="chunks"):
        selective_scan_kernel(**args, interpret=True, chunks=2)


@pytest.mark.parametrize("layout", ["channel", "split", "state"])
@pytest.mark.parametrize(
    ("dtype", "length", "groups", "full", "chunks"),
    [
        ("float32", 33, (2, 4), True, 3),
        ("float32", 32, (1, 1), False, 4),
        ("bfloat16", 24, (1, 2), True, 2),
    ],
)
def test_two_pass_forward_matches_sequential(rng, dtype, length, groups, full, chunks, layout):
    """chunks > 1 (inference): y and the final state equal the reference; gradients (which
    run the single-pass forward and backward) too."""
    args = make_inputs(rng, jnp.dtype(dtype), length, groups, full)
    opts = dict(dt_softplus=full, return_final_state=True)

    def kernel(p):
        return selective_scan_kernel(
            **p, **opts, interpret=True, unroll=4, chunks=chunks, layout=layout
        )

    def reference(p):
        return selective_scan(**p, **opts, implementation="sequential")

    y, h = kernel(args)
    y_ref, h_ref = reference(args)
    tol = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    assert y.dtype == args["x"].dtype
    assert_allclose(y, y_ref, dtype=tol, n=length)
    assert_allclose(h, h_ref, dtype=tol, n=length)
    if dtype == "float32" and layout == "channel":
        g = jax.grad(lambda p: jnp.sum(kernel(p)[0] ** 2))(args)
        g_ref = jax.grad(lambda p: jnp.sum(reference(p)[0] ** 2))(args)
        for name in ARGS:
            if args[name] is not None:
                assert_allclose(
                    g[name], g_ref[name], dtype=tol, n=length, kind="grad", err_msg=name
                )


def test_default_chunks_only_for_small_grids(rng):
    """Undifferentiated calls on a grid too small for the GPU take the two-pass forward (two
    kernel launches); large grids and differentiated calls the single pass."""
    from pallas_kernels.linear_scan import default_chunks

    args = make_inputs(rng, jnp.bfloat16, 512, (1, 1), True, b=1, d=64, n=16)
    f = lambda p: selective_scan_kernel(**p, dt_softplus=True, interpret=True)
    n_calls = lambda jaxpr: str(jaxpr).count("pallas_call")
    assert default_chunks(1, 1, 512) == 2
    assert n_calls(jax.make_jaxpr(f)(args)) == 2
    assert (
        n_calls(
            jax.make_jaxpr(lambda p: selective_scan_kernel(**p, chunks=1, interpret=True))(args)
        )
        == 1
    )
