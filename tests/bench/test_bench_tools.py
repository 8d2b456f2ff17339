"""Benchmark tools: the SASS reader of experiments/bench/sass.py (on small hand-written
listings in the cuobjdump -sass and nvdisasm formats) and the bench rows' option parser."""

import pytest

from experiments.bench.sass import bounds_ms, mix, opcode, parse_sass, time_loop

CUOBJDUMP = """
        code for sm_90a
                Function : selective_scan_fwd_split
        .headerflags    @"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x00000a00ff017624 */
        /*0010*/                   S2R R0, SR_TID.X ;                     /* 0x0000000000007919 */
        /*0020*/                   LDG.E.U16 R2, desc[UR4][R4.64] ;       /* 0x0000000404027981 */
        /*0030*/                   FMUL R3, R2, R6 ;                      /* 0x0000000602037220 */
        /*0040*/                   MUFU.EX2 R3, R3 ;                      /* 0x0000000300037308 */
        /*0050*/                   FFMA R7, R3, R7, R8 ;                  /* 0x0000000703077223 */
        /*0060*/                   MUFU.EX2 R9, R9 ;                      /* 0x0000000900097308 */
        /*0070*/                   SHFL.BFLY PT, R10, R7, 0x1, 0x1f ;     /* 0x0000000107097f89 */
        /*0080*/                   STG.E.U16 desc[UR4][R4.64], R10 ;      /* 0x0000000a04007986 */
        /*0090*/                   IADD3 R4, P0, R4, 0x2000, RZ ;         /* 0x0000200004047810 */
        /*00a0*/              @!P0 BRA 0x20 ;                             /* 0xfffffff000007947 */
        /*00b0*/                   MUFU.EX2 R11, R11 ;                    /* 0x0000000b000b7308 */
        /*00c0*/                   EXIT ;                                 /* 0x000000000000794d */
                ..........
"""

NVDISASM = """
        .text.mamba1_fwd:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDS R2, [R5] ;
        /*0020*/                   MUFU.EX2 R3, R2 ;
.L_x_1:
        /*0030*/                   MUFU.EX2 R4, R2 ;
        /*0040*/                   FFMA R7, R3, R7, R4 ;
        /*0050*/                   MUFU.EX2 R8, R2 ;
        /*0060*/                   STG.E.U16 desc[UR4][R4.64], R7 ;
        /*0070*/               @P0 BRA `(.L_x_1) ;
        /*0080*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0090*/               @P1 BRA `(.L_x_0) ;
        /*00a0*/                   EXIT ;
"""


def test_opcode_strips_the_predicate():
    assert opcode("@!P0 MUFU.EX2 R3, R2") == "MUFU.EX2"
    assert opcode("@UP1 BRA 0x20") == "BRA"
    assert opcode("FFMA R7, R3, R7, R8") == "FFMA"


def test_cuobjdump_loop_and_mix():
    funcs = parse_sass(CUOBJDUMP)
    assert list(funcs) == ["selective_scan_fwd_split"]
    body, n_ex2 = time_loop(funcs["selective_scan_fwd_split"])
    assert n_ex2 == 2  # the EX2 after the loop is not counted
    assert [a for a, _ in body] == list(range(0x20, 0xB0, 0x10))
    c = mix(body)
    assert (c["mufu"], c["fp32"], c["int"], c["ldg/stg"], c["shfl"]) == (2, 2, 1, 2, 1)
    assert (c["stg"], c["other"], c["total"]) == (1, 1, 9)  # BRA is "other"


def test_nvdisasm_labels_pick_the_innermost_loop():
    body, n_ex2 = time_loop(parse_sass(NVDISASM)["mamba1_fwd"])
    assert n_ex2 == 2  # the inner loop .L_x_1 holds 2 of the outer loop's 3 EX2
    assert [a for a, _ in body] == list(range(0x30, 0x80, 0x10))


def test_an_outer_loop_when_the_inner_holds_too_few():
    extra = "MUFU.EX2 R3, R2 ;\n /*0024*/ MUFU.EX2 R5, R5 ;\n /*0028*/ MUFU.EX2 R6, R6"
    body, n_ex2 = time_loop(parse_sass(NVDISASM.replace("MUFU.EX2 R3, R2", extra))["mamba1_fwd"])
    assert n_ex2 == 5 and body[0][0] == 0x10  # the inner loop holds 2 < 5 / 2


def test_nvdisasm_unknown_label_is_no_loop():
    listing = NVDISASM.replace("@P0 BRA `(.L_x_1)", "@P0 BRA `(.L_x_9)")
    body, n_ex2 = time_loop(parse_sass(listing)["mamba1_fwd"])
    assert n_ex2 == 3 and body[0][0] == 0x10  # the inner branch's label is unknown


def test_bounds_scale_with_the_counts():
    b = bounds_ms({"total": 64.0, "mufu": 16.0}, 32 * 132 * 1e6, clock_ghz=1.0)
    # 64 warp-instr per 32 channel-steps -> 64e6 per SM at 4/clk, 1 GHz: 16 ms
    assert b["issue"] == pytest.approx(16.0)
    assert b["mufu"] == pytest.approx(16e6 / 0.5 / 1e9 * 1e3)


def test_kernel_options_of_a_bench_row():
    from experiments.bench.kernels import kernel_options

    assert kernel_options("layout=channel+pack_bc=False+unroll=8+fast_math") == {
        "layout": "channel",
        "pack_bc": False,
        "unroll": 8,
        "fast_math": True,
    }


def test_loop_geometry_of_the_layouts():
    from experiments.bench.sass import loop_geometry

    fwd, bwd = "selective_scan_fwd_channel", "selective_scan_bwd_split"
    two_warps, one_warp = {"block_d": 64, "warps": 2}, {"block_d": 64, "warps": 1}
    assert loop_geometry("pallas", fwd, {}, 16, two_warps) == (4, 1.0)
    assert loop_geometry("pallas", bwd, {}, 16, {"block_d": 16, "warps": 1}) == (4, 0.5)
    assert loop_geometry("pallas:unroll=8", fwd, {}, 16, one_warp) == (8, 2.0)
    assert loop_geometry("pallas:unroll=8", bwd, {}, 8, {"block_d": 16, "warps": 1}) == (8, 0.5)
    split_fwd = "selective_scan_fwd_split"
    split_launch = {"block_d": 32, "warps": 2}  # two threads per channel
    assert loop_geometry("pallas:layout=split", split_fwd, {}, 16, split_launch) == (4, 0.5)
    chan_bwd = "selective_scan_bwd_channel"
    assert loop_geometry("pallas", chan_bwd, {}, 16, {"block_d": 32, "warps": 1}) == (2, 1.0)
    assert loop_geometry("jla", "mamba1_fwd", {"stg": 4}, 16, None) == (4, 1.0)
    with pytest.raises(NotImplementedError, match="state layout"):
        loop_geometry("pallas:layout=state", "selective_scan_fwd_state", {}, 16, two_warps)


def test_triton_kernels_lowered_for_cuda_on_any_machine(monkeypatch):
    """The forward's Triton IR comes out of a CUDA lowering without a GPU (nothing runs)."""
    import jax
    import jax.numpy as jnp

    import pallas_kernels.selective_scan as kernel_module
    from experiments.bench.sass import _triton_kernels

    monkeypatch.setattr(kernel_module, "check_backend", lambda *a, **k: None)
    b, length, d, n = 2, 16, 64, 16
    args = {
        "x": jax.ShapeDtypeStruct((b, length, d), jnp.bfloat16),
        "dt": jax.ShapeDtypeStruct((b, length, d), jnp.bfloat16),
        "A": jax.ShapeDtypeStruct((d, n), jnp.float32),
        "B": jax.ShapeDtypeStruct((b, length, n), jnp.bfloat16),
        "C": jax.ShapeDtypeStruct((b, length, n), jnp.bfloat16),
    }
    kernels = _triton_kernels(lambda a: kernel_module.selective_scan(**a), args)
    assert len(kernels) == 1
    ir_bytes, warps, stages, grid = kernels[0]
    assert ir_bytes.startswith(b"ML\xefR") and warps == 2 and stages >= 1  # MLIR bytecode
    assert grid == (b, d // 64, 1)  # 64-channel blocks


def test_linear_mosaic_variants_and_shapes():
    from experiments.bench.linear_mosaic import parse_shape, parse_variant

    assert parse_variant("base") == ({}, {})
    assert parse_variant("stages=5+tile=16+unroll=4") == (
        {"MAX_STAGES": 5, "TILE": 16},
        {"unroll": 4},
    )
    assert parse_variant("chunks=8+split=2") == ({"END_SPLIT": 2}, {"chunks": 8})
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variant("fast")
    assert parse_shape("c64-ti") == ((8, 4096, 1024), "complex64", True)
    assert parse_shape("fp32-tv:4x8192x2048") == ((4, 8192, 2048), "float32", False)


@pytest.mark.usefixtures("fast_compile")
def test_linear_mosaic_rows_interpreted(monkeypatch):
    """The variant table on tiny shapes, the kernels interpreted: every variant checked
    against the associative scan (switches restored after each)."""
    import functools

    import experiments.bench.linear_mosaic as lmb
    import pallas_kernels._linear_scan_mosaic as lm
    import pallas_kernels._linear_scan_mosaic_chunked as lmc
    import pallas_kernels.linear_scan as ls

    monkeypatch.setattr(lmb, "linear_scan", functools.partial(ls.linear_scan, interpret=True))
    planes = functools.partial(ls.linear_scan_planes, interpret=True)
    monkeypatch.setattr(lmb, "linear_scan_planes", planes)
    monkeypatch.setitem(lmb.SHAPES, "tiny", ((2, 40, 128), "complex64", True))
    monkeypatch.setitem(lmb.SHAPES, "tiny-l128", ((1, 128, 128), "complex64", True))
    rows = lmb.bench_shape("tiny", ["base", "stages=1+tile=16"], repeats=1)
    rows += lmb.bench_shape("tiny-l128", ["chunks=2+split=2"], repeats=1)
    assert [r["variant"] for r in rows[2:4]] == ["base", "stages=1+tile=16"]
    assert rows[-1]["variant"] == "chunks=2+split=2"
    assert all(r["ok"] == "OK" for r in (*rows[2:4], rows[-1]))
    assert (lm.MAX_STAGES, lm.TILE, lmc.END_SPLIT) == (3, 32, 1)


def test_bandwidth_shapes_bytes_and_rows():
    from experiments.bench.bandwidth import forward_bytes, parse_shape, rate_row, scan_configs

    assert parse_shape("c64-ti") == ((8, 4096, 1024), 2, True)
    assert parse_shape("fp32-tv:4x8192x2048") == ((4, 8192, 2048), 1, False)
    with pytest.raises(ValueError, match="unknown shape"):
        parse_shape("bf16-tv")
    with pytest.raises(ValueError, match="batch x l x d"):
        parse_shape("fp32-tv:8x4096")
    # fp32 (8, 4096, 2048): a, b and h of 268 MB each; complex TI: b and h, two planes each.
    assert forward_bytes((8, 4096, 2048), 1, False) == 3 * 8 * 4096 * 2048 * 4
    assert forward_bytes((8, 4096, 1024), 2, True) == 2 * 2 * 8 * 4096 * 1024 * 4
    row = rate_row("x", 0.5, 1.5e9)
    assert row["TB/s"] == pytest.approx(3.0)
    assert row["/ 3.0 TB/s"] == pytest.approx(1.0)
    assert row["/ 3.35 TB/s"] == pytest.approx(3.35 / 3.0)
    scan = scan_configs("scan", 1)
    assert all(c["BD"] >= 32 * c["num_warps"] for c in scan) and len(scan) == 18
    assert scan_configs("tile", 2) == [] and len(scan_configs("tile", 1)) == 24


_INTERPRETED_BANDWIDTH = """
import torch
torch.Tensor.cuda = lambda self: self
torch.cuda.synchronize = lambda: None
import experiments.bench.bandwidth as bw
bw.SHAPES.update({"tiny-tv": ((2, 48, 256), "float32", False),
                  "tiny-ti": ((2, 24, 128), "complex64", True),
                  "tiny-ctv": ((1, 16, 128), "complex64", False)})
short = bw.scan_configs
bw.scan_configs = lambda g, p: short(g, p)[:2]
for name in ("tiny-tv", "tiny-ti", "tiny-ctv"):
    rows = bw.run_shape(name, ("stream", "scan", "tile"), 0, 1, True, log=lambda *a: None)
    checked = [r for r in rows if "ok" in r]
    assert len(checked) >= 8, [(r["row"], r.get("note")) for r in rows]
    assert all(r["ok"] == "OK" for r in checked), [r for r in rows if r.get("ok") != "OK"]
    print(name, len(checked), "OK")
"""


def test_bandwidth_triton_scans_interpreted():
    """The Triton scans of the bandwidth table (Triton's interpreter on CPU tensors, in a
    fresh process) equal the float64 sequential scan, the streaming kernel its elementwise
    op. Runs where torch is installed (not a dependency of the library; the GPU image has
    it)."""
    import os
    import pathlib
    import subprocess
    import sys

    pytest.importorskip("torch")
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _INTERPRETED_BANDWIDTH],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [
        "tiny-tv",
        "10",
        "OK",
        "tiny-ti",
        "8",
        "OK",
        "tiny-ctv",
        "8",
        "OK",
    ]


def test_kernels_scan_shapes():
    from experiments.bench._harness import parse_scan_shape

    assert parse_scan_shape("c64-ti:8x4096x256") == ((8, 4096, 256), "complex64", True)
    assert parse_scan_shape("fp32-tv:2x16384x2048") == ((2, 16384, 2048), "float32", False)
    assert parse_scan_shape("c64-tv") == ((8, 4096, 1024), "complex64", False)
    assert parse_scan_shape("fp32-ti:8x4096x256") == ((8, 4096, 256), "float32", True)
    for bad in ("bf16-tv:1x2x3", "c64-tv:8x4096", "fp32"):
        with pytest.raises(ValueError):
            parse_scan_shape(bad)


def test_device_time_needs_a_gpu():
    """``device_ms`` (CUPTI) answers ``None`` and ``kernel_times`` no kernel off the GPU
    rather than made-up times; the per-call clock still runs."""
    import jax.numpy as jnp

    from experiments.bench._harness import device_ms, kernel_times, time_ms

    x = jnp.linspace(0.0, 1.0, 64)
    assert device_ms(jnp.sin, x) is None
    assert kernel_times(jnp.sin, x) == []
    assert time_ms(jnp.sin, x, repeats=3) > 0.0


def test_bandwidth_jax_rows_interpreted(monkeypatch):
    """The JAX rows of the bandwidth table: the Mosaic forward (interpreted) checked against
    a float64 sequential scan, time-invariant complex planes and time-varying fp32."""
    import functools

    import numpy as np

    import experiments.bench.bandwidth as bw
    import pallas_kernels.linear_scan as ls

    for fn in ("linear_scan", "linear_scan_planes"):
        monkeypatch.setattr(ls, fn, functools.partial(getattr(ls, fn), interpret=True))
    for lti, planes in ((True, 2), (False, 1)):
        a, b = bw.host_inputs((2, 40, 128), planes, lti)
        ac, bc = a.astype(np.float64), b.astype(np.float64)
        if planes == 2:
            ac, bc = ac[0] + 1j * ac[1], bc[0] + 1j * bc[1]
        else:
            ac, bc = ac[0], bc[0]
        h, ref = np.zeros_like(bc[:, 0]), np.zeros_like(bc)
        for t in range(bc.shape[1]):
            h = (ac if lti else ac[:, t]) * h + bc[:, t]
            ref[:, t] = h
        ref = np.stack([ref.real, ref.imag]) if planes == 2 else ref[None]
        rows = bw.jax_rows("tiny", a, b, lti, ref, (0, 1), 1, lambda *x: None)
        assert [r["row"] for r in rows] == ["jax xla elementwise", "jax mosaic linear_scan"]
        assert rows[1]["ok"] == "OK" and rows[1]["err"] < 1e-5, rows
        assert rows[0]["dev ms"] is None and "ok" not in rows[0]


@pytest.mark.usefixtures("fast_compile")
@pytest.mark.parametrize(("dtype", "lti"), [("float32", False), ("complex64", True)])
def test_kernels_plain_jax_rows(dtype, lti):
    """The issue's baselines in ``experiments.bench.kernels``: plain ``lax.associative_scan``
    (autodiff; a time-invariant ``a`` broadcast) and ``lax.scan`` rows next to the library's
    associative form, each checked against the sequential reference, with every row's
    speed-up over both associative forms."""
    from experiments.bench.kernels import bench_scan
    from ssmjax.testing import tolerance

    impls = ("associative", "lax.associative_scan", "lax.scan")
    length = 64
    rows = bench_scan((2, length, 32), dtype, 3.35, 2, lti, impls)
    assert [r["impl"] for r in rows] == list(impls)
    rtol_fwd, _ = tolerance(dtype, n=length)
    rtol_grad, _ = tolerance(dtype, n=length, kind="grad")
    for r in rows:
        assert r["err fwd"] < rtol_fwd and r["err grad"] < rtol_grad, r
        assert r["lax.assoc/this fwd+bwd"] > 0 and r["assoc/this fwd+bwd"] > 0
    assert rows[1]["lax.assoc/this fwd+bwd"] == 1.0 and rows[0]["assoc/this fwd+bwd"] == 1.0


@pytest.mark.parametrize("planes_only", [False, True])
def test_kernels_planes_only_drops_complex_kernel_rows(planes_only):
    """``--planes-only``: a complex shape's kernel rows only on planes (on this CPU both kernel
    rows fail to compile and say so; the XLA row is there either way)."""
    from experiments.bench.kernels import bench_scan

    impls = ("pallas:layout=lookback", "associative")
    rows = bench_scan((1, 16, 8), "complex64", 3.35, 1, True, impls, planes_only)
    names = [r["impl"] for r in rows]
    kernel_row = ["pallas:layout=lookback"] if not planes_only else []
    assert names == [*kernel_row, "associative", "pallas:layout=lookback planes"]
    assert all("GPU" in r["note"] for r in rows if r["impl"].startswith("pallas")), rows


def test_lookback_bench_reports_each_config(capsys):
    """``experiments.bench.lookback``: the plain baseline row, then one row per config (here
    each says why it cannot run on a CPU)."""
    import pallas_kernels._linear_scan_lookback_mosaic as lbm
    from experiments.bench.lookback import main

    knobs = ("INCLUSIVE_EVERY", "PROGRAMS_PER_SM", "TMA_STORE", "STREAM_H")
    knobs += ("GRID_ORDER",)
    defaults = {k: getattr(lbm, k) for k in knobs}
    try:
        main(["--shape", "1x16x8", "--configs", "auto,triton,8/8/1,m64,m64srn,m32p1e2sr"])
        out = capsys.readouterr().out
        for cfg in ("| lax.associative_scan |", "| auto |", "| triton |", "| 8/8/1 |"):
            assert cfg in out
        assert "| m64 |" in out and "| m32p1e2sr |" in out and "| m64srn |" in out
        assert out.count("needs a GPU") == 12  # printed as each row is made, then in the table
        # The Mosaic look-back row's knobs were set for it (the last row).
        assert [getattr(lbm, k) for k in knobs] == [2, 1, True, True, False]
    finally:
        for k, v in defaults.items():
            setattr(lbm, k, v)


def test_lookback_parts_variants_lower_for_cuda(monkeypatch):
    """``experiments.bench.lookback_parts``: its TMA copy kernel (both waits) and the
    look-back kernel with the look-back taken out, by grid order and by ticket, each lower to
    one Mosaic GPU kernel for CUDA on this CPU, and the copy takes no scan."""
    import jax
    import jax.numpy as jnp

    import experiments.bench.lookback_parts as parts
    import pallas_kernels._linear_scan_lookback_mosaic as lbm
    import pallas_kernels.linear_scan as ls
    from pallas_kernels.linear_scan import linear_scan_planes

    monkeypatch.setattr(ls, "check_backend", lambda *a: None)
    monkeypatch.setattr(lbm, "on_hopper", lambda: True)
    lower = lambda f, *a: jax.jit(f).trace(*a).lower(lowering_platforms=("cuda",)).as_text()
    bp = (jnp.ones((2, 128, 256)), jnp.ones((2, 128, 256)))
    ap = (jnp.full((256,), 0.5), jnp.full((256,), 0.1))
    for form in ((64, 128, False), (32, 256, True)):  # chunk, width, read_wait
        text = lower(lambda bp, form=form: parts.tma_copy(bp, *form), bp)
        assert text.count("mosaic_gpu") >= 1 and "tma_copy" in text
    monkeypatch.setattr(lbm, "_Compiled", parts._NoWait)
    for grid_order in (True, False):
        monkeypatch.setattr(lbm, "GRID_ORDER", grid_order)
        text = lower(lambda ap, bp: linear_scan_planes(ap, bp, layout="mosaic_lookback"), ap, bp)
        assert "linear_scan_lookback_mosaic" in text


def test_lookback_parts_rows_on_a_cpu(capsys):
    """On a CPU every row is printed: the XLA copy runs (no device time), the Mosaic rows
    say why they cannot."""
    from experiments.bench.lookback_parts import main

    main(["--shape", "1x64x128", "--copies", "c64w128"])
    out = capsys.readouterr().out
    for row in ("xla copy", "tma copy c64w128", "kernel", "ticket", "no wait", "ticket, no wait"):
        assert f"| {row} |" in out
    assert out.count("needs a GPU") >= 4


@pytest.mark.usefixtures("fast_compile")
def test_kernels_check_runs_the_chosen_cases(monkeypatch, capsys):
    """``experiments.bench.kernels --check`` with ``--linear-reverse yes``: only reverse
    cases, each the kernel (here the Mosaic look-back scan in the interpreter) against the
    sequential form; an unknown direction is refused."""
    import functools

    import experiments.bench.kernels as kb
    from pallas_kernels.linear_scan import linear_scan

    monkeypatch.setattr(kb, "linear_scan", functools.partial(linear_scan, interpret=True))
    argv = ["--check", "--no-bench", "--skip-ss", "--linear-forms", "mosaic-lookback-zero"]
    argv += ["--linear-dtypes", "float32", "--linear-lengths", "33", "--linear-reverse", "yes"]
    kb.main(argv)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "mosaic-lookback-zero" in line and "l=" in line]
    assert len(rows) == 1 and "rev=True" in rows[0] and rows[0].endswith(" ok"), out
    assert "checks: ALL OK" in out
    with pytest.raises(SystemExit):
        kb.main([*argv[:-1], "backwards"])
