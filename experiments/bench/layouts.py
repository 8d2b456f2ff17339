"""Pallas kernel launch configurations side by side at the benchmark shapes (GPU).

python -m experiments.bench.layouts [--deadline SECONDS] [--json PATH] [--quick]

* ``selective_scan`` (8, 4096, 4096, 16) bf16 with z, D, dt_bias and softplus: forward
  configurations (layout, channels per program ``block_d``, warps, ``unroll``) timed
  forward-only; then backward configurations (``bwd_block_d``, ``bwd_num_warps``,
  ``bwd_unroll``) timed forward+backward behind the fastest forward. With the channel
  layout, ``block_d / (32 num_warps)`` is the number of channels each thread carries.
* ``linear_scan`` (8, 4096, 2048) fp32 and (8, 4096, 1024) complex64 (time-varying ``a``,
  and complex time-invariant ``a`` of shape ``(d,)`` as in S5/LRU, row "lti"):
  ``block_d`` / warps / ``unroll``.

* ``selective_scan`` with its defaults across ``d_inner`` 1536-5120, lengths 1024-16384 at
  32K tokens, with and without the z gate.
* ``selective_scan``'s two-pass forward (``chunks``) vs its single pass.
* ``linear_scan`` single pass vs the L-parallel two-pass scan (``chunks``) vs the XLA
  associative scan, time-varying and time-invariant ``a``, including batch-1 prefill shapes.

Every configuration is checked against the XLA chunked form in the same run (relative L2
error of ``y`` and, for the forward+backward rows, of every gradient). Results are printed
as markdown tables (and written as JSON with ``--json``).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

from experiments.bench._harness import header, table, time_ms
from experiments.bench.kernels import SS_ARGS, rel_l2, scan_fns, scan_inputs, ss_fns, ss_inputs
from ssmjax.ops import linear_recurrence

# Forward configurations (the backward of a forward-only row is never run).
SS_FWD = [
    {"layout": "channel", "block_d": 64, "num_warps": 2, "unroll": 4},
    {"layout": "channel", "block_d": 64, "num_warps": 1, "unroll": 4},
    {"layout": "channel", "block_d": 128, "num_warps": 1, "unroll": 4},
    {"layout": "channel", "block_d": 128, "num_warps": 2, "unroll": 4},
    {"layout": "channel", "block_d": 256, "num_warps": 2, "unroll": 4},
    {"layout": "channel", "block_d": 128, "num_warps": 1, "unroll": 8},
    {"layout": "channel", "block_d": 64, "num_warps": 1, "unroll": 8},
    {"layout": "channel", "block_d": 32, "num_warps": 1, "unroll": 8},
    {"layout": "state", "block_d": 32, "num_warps": 4, "unroll": 8},
    {"layout": "channel", "block_d": 32, "num_warps": 1, "unroll": 4},
    {"layout": "channel", "block_d": 128, "num_warps": 4, "unroll": 4},
    {"layout": "channel", "block_d": 64, "num_warps": 2, "unroll": 2},
    {"layout": "channel", "block_d": 16, "num_warps": 1, "unroll": 4},
    # 13-18: a block's B/C loads before its stores (bc_block), bf16 B/C as uint32 pairs
    *(
        {"layout": "channel", "block_d": bd, "num_warps": w, "unroll": u, **extra}
        for bd, w, u, extra in [
            (64, 2, 4, {"bc_block": True}),
            (64, 2, 4, {"bc_block": True, "pack_bc": True}),
            (32, 1, 4, {"bc_block": True, "pack_bc": True}),
            (64, 2, 8, {"bc_block": True, "pack_bc": True}),
            (64, 2, 4, {"pack_bc": True}),
            (64, 2, 2, {"bc_block": True, "pack_bc": True}),
            # 19-20: the next block's packed B/C prefetched with its other rows
            (64, 2, 4, {"prefetch_bc": True, "pack_bc": True}),
            (64, 2, 2, {"prefetch_bc": True, "pack_bc": True}),
        ]
    ),
]

# Backward configurations, each behind the fastest forward above.
SS_BWD = [
    {"bwd_layout": "channel", "bwd_block_d": 32, "bwd_num_warps": 1, "bwd_unroll": 4},
    {"bwd_layout": "channel", "bwd_block_d": 64, "bwd_num_warps": 1, "bwd_unroll": 4},
    {"bwd_layout": "channel", "bwd_block_d": 64, "bwd_num_warps": 2, "bwd_unroll": 4},
    {"bwd_layout": "channel", "bwd_block_d": 32, "bwd_num_warps": 1, "bwd_unroll": 2},
    {"bwd_layout": "channel", "bwd_block_d": 64, "bwd_num_warps": 1, "bwd_unroll": 2},
    {"bwd_layout": "channel", "bwd_block_d": 128, "bwd_num_warps": 2, "bwd_unroll": 2},
    {"bwd_layout": "channel", "bwd_block_d": 64, "bwd_num_warps": 2, "bwd_unroll": 2},
    {"bwd_layout": "channel", "bwd_block_d": 16, "bwd_num_warps": 1, "bwd_unroll": 2},
    # 8: the next block's B/C prefetched with its other rows
    {
        "bwd_layout": "channel",
        "bwd_block_d": 32,
        "bwd_num_warps": 1,
        "bwd_unroll": 2,
        "bwd_prefetch_bc": True,
    },
]

LS_CONFIGS = [
    # (complex, block_d, warps, unroll)
    (False, 32, 1, 32),
    (False, 32, 1, 64),
    (False, 64, 2, 32),
    (False, 64, 1, 32),
    (False, 16, 1, 32),
    (True, 32, 1, 16),
    (True, 16, 1, 16),
    (True, 16, 1, 32),
    (True, 32, 1, 32),
    # time-invariant a of shape (d,) (S5 / LRU), complex64
    ("lti", 32, 1, 16),
    ("lti", 16, 1, 16),
    ("lti", 32, 1, 32),
    ("lti", 64, 2, 16),
]


def _rel(actual, desired) -> float:
    """Relative L2 error (real or complex)."""
    diff = jnp.linalg.norm((actual - desired).ravel())
    return float(diff / jnp.maximum(jnp.linalg.norm(desired.ravel()), 1e-30))


def _pick(configs, indices):
    return configs if indices is None else [configs[i] for i in indices]


def _fmt(config):
    return ", ".join(f"{k}={v}" for k, v in config.items())


def sweep_selective(quick, deadline, results, pick):
    b, length, d, n = (2, 256, 128, 16) if quick else (8, 4096, 4096, 16)
    args = ss_inputs(b, length, d, n, jnp.bfloat16)
    dy = jax.random.normal(jax.random.key(1), (b, length, d), jnp.float32)
    ref_fwd, ref_grad = ss_fns("chunked")
    y_ref = ref_fwd(args)
    g_ref = ref_grad(args, dy)
    print(f"\n## selective_scan forward configurations, {(b, length, d, n)} bf16", flush=True)
    rows = []
    for config in _pick(SS_FWD, pick.get("fwd")):
        if time.perf_counter() > deadline:
            print("  (deadline reached; rest skipped)")
            break
        t0 = time.perf_counter()
        row = dict(config)
        try:
            fwd, _ = ss_fns("pallas-kernel", **config)
            row["rel L2 y"] = rel_l2(fwd(args), y_ref)
            row["fwd ms"] = time_ms(fwd, args, repeats=10)
        except Exception as e:  # report and go on
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        row["wall s"] = time.perf_counter() - t0
        rows.append(row)
        print("  ", row, flush=True)
    cols = ["layout", "block_d", "num_warps", "unroll", "bc_block", "pack_bc", "prefetch_bc"]
    cols += ["fwd ms", "rel L2 y"]
    cols += ["wall s", "note"]
    print(table(rows, cols), flush=True)
    results["selective_scan_fwd"] = rows
    timed = [r for r in rows if "fwd ms" in r and r["rel L2 y"] < 1e-2 and r["layout"] == "channel"]
    if not timed:
        return
    best = min(timed, key=lambda r: r["fwd ms"])
    fwd_cfg = {k: best[k] for k in ("layout", "block_d", "num_warps", "unroll")}
    if pick.get("bwd_fwd") is not None:  # a fixed forward for the backward rows
        fwd_cfg = dict(SS_FWD[pick["bwd_fwd"]])
    print(f"\n## selective_scan backward configurations behind the forward {_fmt(fwd_cfg)}")
    rows = []
    for config in _pick(SS_BWD, pick.get("bwd")):
        if time.perf_counter() > deadline:
            print("  (deadline reached; rest skipped)")
            break
        t0 = time.perf_counter()
        full = {**fwd_cfg, **config}
        full["unroll"] = max(full["unroll"], config["bwd_unroll"])
        row = dict(config, unroll=full["unroll"])
        try:
            _, grad = ss_fns("pallas-kernel", **full)
            g = grad(args, dy)
            errs = [rel_l2(g[k], g_ref[k]) for k in SS_ARGS if g[k] is not None]
            row["rel L2 grads (max)"] = max(errs)
            row["fwd+bwd ms"] = time_ms(grad, args, dy, repeats=5)
        except Exception as e:
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        row["wall s"] = time.perf_counter() - t0
        rows.append(row)
        print("  ", row, flush=True)
    cols = ["bwd_layout", "bwd_block_d", "bwd_num_warps", "bwd_unroll", "bwd_prefetch_bc", "unroll"]
    cols += ["fwd+bwd ms"]
    print(table(rows, [*cols, "rel L2 grads (max)", "wall s", "note"]), flush=True)
    results["selective_scan_bwd"] = {"forward": fwd_cfg, "rows": rows}


def sweep_linear(quick, deadline, results, pick):
    shape = (2, 512, 256) if quick else (8, 4096, 2048)
    inputs = {
        False: scan_inputs(shape, "float32"),
        True: scan_inputs((*shape[:2], shape[2] // 2), "complex64"),
    }
    a, b, ct = inputs[True]
    inputs["lti"] = (a[0, 0], b, ct)
    refs = {}
    for cplx, (a, b, ct) in inputs.items():
        fwd, grad = scan_fns("associative")
        refs[cplx] = (fwd(a, b), grad(a, b, ct))
    print(f"\n## linear_scan configurations, {shape} fp32 / half width complex64", flush=True)
    rows = []
    for cplx, bd, warps, unroll in _pick(LS_CONFIGS, pick.get("ls")):
        if time.perf_counter() > deadline:
            print("  (deadline reached; rest skipped)")
            break
        a, b, ct = inputs[cplx]
        row = {"complex": cplx, "block_d": bd, "num_warps": warps, "unroll": unroll}
        try:
            fwd, grad = scan_fns("pallas-kernel", block_d=bd, num_warps=warps, unroll=unroll)
            h_ref, g_ref = refs[cplx]
            row["rel L2 h"] = _rel(fwd(a, b), h_ref)
            g = grad(a, b, ct)
            row["rel L2 grads"] = max(_rel(x, y) for x, y in zip(g, g_ref, strict=True))
            row["fwd ms"] = time_ms(fwd, a, b, repeats=20)
            row["fwd+bwd ms"] = time_ms(grad, a, b, ct, repeats=20)
        except Exception as e:
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        rows.append(row)
        print("  ", row, flush=True)
    cols = ["complex", "block_d", "num_warps", "unroll", "fwd ms", "fwd+bwd ms"]
    print(table(rows, [*cols, "rel L2 h", "rel L2 grads", "note"]), flush=True)
    results["linear_scan"] = rows


CHUNK_CASES = [
    # (b, l, d), dtype, a form ("tv": time-varying, "lti": (d,)), chunks of the pallas rows
    ((8, 4096, 1024), "complex64", "lti", (1, 2, 4, 8)),
    ((8, 4096, 2048), "float32", "tv", (1, 2, 4)),
    ((8, 4096, 1024), "complex64", "tv", (1, 2, 4, 8)),
    ((1, 16384, 2048), "float32", "tv", (1, 8, 32)),
    ((1, 16384, 1024), "complex64", "lti", (1, 8, 32)),
]


def sweep_chunks(quick, deadline, results):
    """The single-pass kernel (chunks = 1) vs the two-pass L-parallel scan vs XLA."""
    print("\n## linear_scan: single pass vs two-pass (chunks) vs lax.associative_scan")
    rows = []
    for shape, dtype, form, chunk_list in CHUNK_CASES:
        if quick:
            shape = (shape[0], 512, 64)
        if time.perf_counter() > deadline:
            print("  (deadline reached; rest skipped)")
            break
        a, b, ct = scan_inputs(shape, dtype)
        if form == "lti":
            a = a[0, 0]
        fwd, grad = scan_fns("associative")
        h_ref, g_ref = fwd(a, b), grad(a, b, ct)
        variants = [("associative", {})] + [("pallas", {"chunks": c}) for c in chunk_list]
        for impl, kw in variants:
            if time.perf_counter() > deadline:
                break
            row = {"shape": str(shape), "dtype": dtype, "a": form, "impl": impl, **kw}
            try:
                if impl == "pallas":
                    fwd, grad = scan_fns("pallas-kernel", **kw)
                    row["rel L2 h"] = _rel(fwd(a, b), h_ref)
                    g = grad(a, b, ct)
                    row["rel L2 grads"] = max(_rel(x, y) for x, y in zip(g, g_ref, strict=True))
                row["fwd ms"] = time_ms(fwd, a, b, repeats=20)
                row["fwd+bwd ms"] = time_ms(grad, a, b, ct, repeats=20)
            except Exception as e:
                row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
            print("  ", row, flush=True)
    cols = ["shape", "dtype", "a", "impl", "chunks", "fwd ms", "fwd+bwd ms", "rel L2 h"]
    print(table(rows, [*cols, "rel L2 grads", "note"]), flush=True)
    results["linear_scan_chunks"] = rows


PLANES_CONFIGS = [{}, {"chunks": 2}, {"chunks": 4}, {"block_d": 16}, {"unroll": 32}]


def sweep_planes(quick, deadline, results):
    """``linear_scan_planes`` (complex as real/imaginary planes, as the S5/LRU/S4D layers call
    it) at (8, 4096, 1024): launch options, time-varying and time-invariant ``a``; checked
    against the XLA associative form on the same planes."""
    from pallas_kernels.linear_scan import linear_scan_planes

    shape = (2, 512, 64) if quick else (8, 4096, 1024)
    print(f"\n## linear_scan_planes configurations, {shape} complex64 as planes", flush=True)
    a, b, ct = scan_inputs(shape, "complex64")
    planes = lambda z: (jnp.real(z), jnp.imag(z))
    cp = planes(ct)
    rows = []
    for form in ("tv", "lti"):
        ap, bp = planes(a if form == "tv" else a[0, 0]), planes(b)

        def fns(run):
            def loss(a_planes, b_planes):
                h_re, h_im = run(a_planes, b_planes)
                return jnp.sum(h_re * cp[0] - h_im * cp[1])

            return jax.jit(run), jax.jit(jax.grad(loss, argnums=(0, 1)))

        ref = lambda ap, bp: planes(
            linear_recurrence(
                jax.lax.complex(*ap), jax.lax.complex(*bp), implementation="associative"
            )
        )
        ref_fwd, ref_grad = fns(ref)
        h_ref, g_ref = ref_fwd(ap, bp), ref_grad(ap, bp)
        for config in PLANES_CONFIGS:
            if time.perf_counter() > deadline:
                print("  (deadline reached; rest skipped)")
                break
            row = {"a": form, **config}
            try:
                fwd, grad = fns(lambda ap, bp, config=config: linear_scan_planes(ap, bp, **config))
                row["rel L2 h"] = max(_rel(x, y) for x, y in zip(fwd(ap, bp), h_ref, strict=True))
                g = jax.tree.leaves(grad(ap, bp))
                errs = [_rel(x, y) for x, y in zip(g, jax.tree.leaves(g_ref), strict=True)]
                row["rel L2 grads"] = max(errs)
                row["fwd ms"] = time_ms(fwd, ap, bp, repeats=20)
                row["fwd+bwd ms"] = time_ms(grad, ap, bp, repeats=20)
            except Exception as e:
                row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
            print("  ", row, flush=True)
    cols = ["a", "chunks", "block_d", "unroll", "fwd ms", "fwd+bwd ms", "rel L2 h"]
    print(table(rows, [*cols, "rel L2 grads", "note"]), flush=True)
    results["linear_scan_planes"] = rows


SS_SHAPES = [
    # (b, l, d), z gate
    ((8, 4096, 1536), True),
    ((8, 4096, 2048), True),
    ((8, 4096, 5120), True),
    ((8, 4096, 4096), False),
    ((32, 1024, 4096), True),
    ((2, 16384, 4096), True),
]


def sweep_ss_shapes(quick, deadline, results):
    """The selective_scan kernel (defaults) across d_inner and lengths at n = 16, bf16, and
    the ``jax-linear-attention`` anchor where installed; forwards checked against the XLA
    chunked form."""
    print("\n## selective_scan kernel (defaults) across shapes, n = 16, bf16, softplus + D")
    rows = []
    for (b, length, d), gate in SS_SHAPES:
        if quick:
            b, length, d = 2, 256, 64
        if time.perf_counter() > deadline:
            print("  (deadline reached; rest skipped)")
            break
        args = ss_inputs(b, length, d, 16, jnp.bfloat16, gate=gate)
        dy = jax.random.normal(jax.random.key(1), (b, length, d), jnp.float32)
        row = {"b": b, "l": length, "d": d, "z": gate}
        try:
            ref_fwd, _ = ss_fns("chunked")
            fwd, grad = ss_fns("pallas-kernel")
            row["rel L2 y"] = rel_l2(fwd(args), ref_fwd(args))
            row["chunked fwd ms"] = time_ms(ref_fwd, args, repeats=5)
            row["fwd ms"] = time_ms(fwd, args, repeats=10)
            row["fwd+bwd ms"] = time_ms(grad, args, dy, repeats=5)
            row["fwd exp/s"] = b * length * d * 16 / row["fwd ms"] * 1e3
        except Exception as e:
            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        try:  # the jax-linear-attention anchor, where its wheel is installed
            jla_fwd, jla_grad = ss_fns("jla")
            row["jla rel L2 y"] = rel_l2(jla_fwd(args), ref_fwd(args))
            row["jla fwd ms"] = time_ms(jla_fwd, args, repeats=10)
            row["jla fwd+bwd ms"] = time_ms(jla_grad, args, dy, repeats=5)
            row["this/jla fwd+bwd"] = row["fwd+bwd ms"] / row["jla fwd+bwd ms"]
        except Exception as e:
            row["jla note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        rows.append(row)
        print("  ", row, flush=True)
    cols = ["b", "l", "d", "z", "fwd ms", "fwd+bwd ms", "fwd exp/s", "chunked fwd ms"]
    cols += ["jla fwd ms", "jla fwd+bwd ms", "this/jla fwd+bwd"]
    print(table(rows, [*cols, "rel L2 y", "jla rel L2 y", "note", "jla note"]), flush=True)
    results["selective_scan_shapes"] = rows


SS_CHUNKS = [((8, 4096, 4096), (1, 2, 4)), ((2, 16384, 4096), (1, 4, 8, 16))]


def sweep_ss_chunks(quick, deadline, results):
    """The selective_scan kernel's two-pass forward (``chunks``, inference) vs the single pass."""
    print("\n## selective_scan forward: single pass vs two-pass (chunks), bf16, z + softplus")
    rows = []
    for (b, length, d), chunk_list in SS_CHUNKS:
        if quick:
            b, length, d = 2, 256, 64
        args = ss_inputs(b, length, d, 16, jnp.bfloat16)
        ref_fwd, _ = ss_fns("chunked")
        y_ref = ref_fwd(args)
        for chunks in chunk_list:
            if time.perf_counter() > deadline:
                print("  (deadline reached; rest skipped)")
                break
            row = {"b": b, "l": length, "d": d, "chunks": chunks}
            try:
                fwd, _ = ss_fns("pallas-kernel", chunks=chunks)
                row["rel L2 y"] = rel_l2(fwd(args), y_ref)
                row["fwd ms"] = time_ms(fwd, args, repeats=10)
            except Exception as e:
                row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
            print("  ", row, flush=True)
    print(table(rows, ["b", "l", "d", "chunks", "fwd ms", "rel L2 y", "note"]), flush=True)
    results["selective_scan_chunks"] = rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument(
        "--only",
        choices=("selective", "linear", "chunks", "ss-shapes", "ss-chunks", "planes"),
        default=None,
    )
    for name in ("fwd", "bwd", "ls"):
        parser.add_argument(f"--{name}", default=None, help="comma-separated config indices")
    parser.add_argument("--bwd-fwd", type=int, default=None, help="forward config index")
    args = parser.parse_args(argv)
    print(header("python -m experiments.bench.layouts"))
    deadline = time.perf_counter() + args.deadline
    results = {}
    pick = {
        k: None if v is None else [int(i) for i in v.split(",")]
        for k, v in (("fwd", args.fwd), ("bwd", args.bwd), ("ls", args.ls))
    }
    pick["bwd_fwd"] = args.bwd_fwd
    if args.only in (None, "selective"):
        sweep_selective(args.quick, deadline, results, pick)
    if args.only in (None, "linear"):
        sweep_linear(args.quick, deadline, results, pick)
    if args.only in (None, "chunks"):
        sweep_chunks(args.quick, deadline, results)
    if args.only in (None, "ss-shapes"):
        sweep_ss_shapes(args.quick, deadline, results)
    if args.only in (None, "ss-chunks"):
        sweep_ss_chunks(args.quick, deadline, results)
    if args.only in (None, "planes"):
        sweep_planes(args.quick, deadline, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
