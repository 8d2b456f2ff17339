"""Instruction mix of the compiled Mamba-1 forward kernels (SASS): ours and the anchor's.

No profiler runs on the lent GPU, so this reads what the hardware executes instead. Our
Pallas-Triton forward is lowered for CUDA (no GPU needed), its Triton IR taken from the
custom call and compiled by the ``triton`` package (pip ``triton``, 3.6 here; it stands in
for XLA's bundled Triton, which receives the same IR, so the counts may differ a little
from the program that runs). The anchor's Mosaic GPU kernel (``--impls jla``, GPU machine
with its wheel) is compiled in a child process with its PTX dumped
(``MOSAIC_GPU_DUMP_PTX``) and assembled with ``ptxas -v``. Each cubin is disassembled
(``cuobjdump -sass``), the time loop (the innermost backward branch around most of the
``MUFU.EX2`` work) cut out and its instructions counted by unit, per channel and step
(:func:`loop_geometry`: steps per iteration and channels per thread, half a channel in the
split layout). From those counts, lower bounds
on the loop's time at ``--shape`` follow from the per-SM issue rates (the ``--clock-ghz``
clock, 132 SMs): 4 warp-instructions/clk issued, MUFU 0.5, FP32 4, INT 2, memory (LSU) 1
(Hopper SM: 4 schedulers, 16 MUFU, 128 FP32, 64 INT32, 32 load/store lanes).

XLA itself (JAX 0.11.2) writes no PTX under ``--xla_dump_to`` (also with
``--xla_gpu_dump_llvmir``) and its serialized executable holds no plain cubin or PTX (both
tried on the H100, 2026-12-06), hence the stand-in compiler.

    pip install triton==3.6.0   # once, on any Linux x86-64 machine (no GPU needed)
    python -m experiments.bench.sass [--impls pallas,pallas:num_warps=1,jla] [--grad] [--keep DIR]

``--grad``: for ours, the kernels of a gradient (the forward that saves checkpoints, and the
backward; steps per iteration from the kernel options, see :func:`loop_geometry`).

The ``ptxas``/``cuobjdump`` used are the first of: ``$PTXAS``/``$CUOBJDUMP``, the PATH, the
CUDA packages of the JAX install, Triton's.
"""

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# ----------------------------------------------------------------------------------------
# SASS parsing (pure; tested on CPU)
# ----------------------------------------------------------------------------------------

_FUNC = re.compile(r"^\s*(?:Function\s*:\s*(\S+)|\.text\.(\S+):)")
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_TARGET = re.compile(r"\b(?:BRA|JMP)\b(?:\.\S+)?\s+(?:\S+\s+)?(?:(0x[0-9a-f]+)|`\(([^)]+)\))")
_PRED = re.compile(r"^@!?U?P(?:[0-6]|T)\s+")

UNITS = {
    "mufu": ("MUFU",),
    "fp32": ("FFMA", "FMUL", "FADD", "FMNMX", "FSETP", "FSEL", "FSET", "FCHK", "FSWZADD"),
    "fp16": ("HADD2", "HMUL2", "HFMA2", "HSETP2", "HMNMX2"),
    "int": (
        "IMAD",
        "IADD3",
        "IADD",
        "LEA",
        "LOP3",
        "SHF",
        "SHL",
        "SHR",
        "ISETP",
        "IMNMX",
        "SEL",
        "PRMT",
        "IABS",
        "POPC",
        "FLO",
        "BMSK",
        "BREV",
        "IMUL",
        "MOV",
        "VIADD",
        "VIMNMX",
        "IDP",
        "ISCADD",
        "LOP",
        "P2R",
        "R2P",
        "PLOP3",
        "CS2R",
        "S2R",
    ),
    "conv": ("F2F", "F2I", "I2F", "FRND", "F2FP", "I2FP"),
    "ldg/stg": ("LDG", "STG", "LD", "ST", "ATOM", "ATOMG", "RED", "LDGSTS", "UTMALDG"),
    "lds/sts": ("LDS", "STS", "LDSM", "ATOMS"),
    "shfl": ("SHFL",),
    "uniform": ("ULDC", "UMOV", "UIADD3", "ULEA", "USHF", "ULOP3", "UISETP", "USEL", "UIMAD"),
}
_UNIT_OF = {op: unit for unit, ops in UNITS.items() for op in ops}
# Per-SM issue rates in warp-instructions per clock (Hopper SM: 4 schedulers, 16 MUFU
# lanes, 128 FP32 lanes, 64 INT32 lanes, 32 load/store lanes).
RATES = {"issue": 4.0, "mufu": 0.5, "fp32": 4.0, "int": 2.0, "mem": 1.0}


def opcode(text: str) -> str:
    """``"@!P0 MUFU.EX2 R3, R2"`` -> ``"MUFU.EX2"``."""
    return _PRED.sub("", text.strip()).split(None, 1)[0] if text.strip() else ""


def unit_of(op: str) -> str:
    base = op.split(".", 1)[0]
    if base in _UNIT_OF:
        return _UNIT_OF[base]
    if base.startswith("U"):
        return "uniform"
    return "other"


def parse_sass(text: str) -> dict:
    """``{function: [(address, text), ...]}`` from ``cuobjdump -sass`` or ``nvdisasm``
    output; labels (``.L_x_N:``) resolved to the address of the next instruction, branch
    texts rewritten to carry numeric targets (``BRA 0x...``)."""
    funcs, name, labels, pending = {}, None, {}, []
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            name = m.group(1) or m.group(2)
            funcs[name], labels[name], pending = [], {}, []
            continue
        if name is None:
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSN.search(line)
        if m:
            addr = int(m.group(1), 16)
            for label in pending:
                labels[name][label] = addr
            pending = []
            funcs[name].append((addr, m.group(2)))
    out = {}
    for fname, insns in funcs.items():
        fixed = []
        for addr, text in insns:
            t = _TARGET.search(text)
            if t and t.group(2) in labels[fname]:
                text = text.replace(f"`({t.group(2)})", hex(labels[fname][t.group(2)]))
            fixed.append((addr, text))
        out[fname] = fixed
    return out


def loops(insns) -> list[tuple[int, int]]:
    """``(start, end)`` address ranges of the backward branches' loops."""
    found = []
    for addr, text in insns:
        t = _TARGET.search(text)
        if t and t.group(1) and int(t.group(1), 16) <= addr:
            found.append((int(t.group(1), 16), addr))
    return found


def time_loop(insns, key: str = "MUFU.EX2"):
    """The hot loop: the innermost loop holding at least half as many ``key`` instructions
    as the loop holding the most. Returns ``(instructions, count)``, or ``(None, 0)`` when
    no loop holds one."""
    found = []
    for start, end in loops(insns):
        body = [(a, t) for a, t in insns if start <= a <= end]
        found.append((sum(opcode(t).startswith(key) for _, t in body), body))
    most = max((k for k, _ in found), default=0)
    if most == 0:
        return None, 0
    k, body = min(((k, b) for k, b in found if 2 * k >= most), key=lambda kb: len(kb[1]))
    return body, k


def mix(body) -> collections.Counter:
    """Instruction counts by unit (``UNITS``, plus ``other``), ``ex2``, ``stg``, ``total``."""
    c = collections.Counter()
    for _, text in body:
        op = opcode(text)
        if not op or op == "NOP":
            continue
        c[unit_of(op)] += 1
        c["total"] += 1
        c["ex2"] += op.startswith("MUFU.EX2")
        c["stg"] += op.startswith("STG")
    return c


def bounds_ms(per_channel_step: dict, channel_steps: float, clock_ghz: float, sms: int = 132):
    """Lower bounds (ms) on the loop's time from each unit's issue rate (``RATES``)."""
    per_sm_clk = sms * clock_ghz * 1e9
    warp_instr = {k: v * channel_steps / 32.0 for k, v in per_channel_step.items()}
    mem = warp_instr.get("ldg/stg", 0) + warp_instr.get("lds/sts", 0) + warp_instr.get("shfl", 0)
    return {
        "issue": warp_instr.get("total", 0) / RATES["issue"] / per_sm_clk * 1e3,
        "mufu": warp_instr.get("mufu", 0) / RATES["mufu"] / per_sm_clk * 1e3,
        "fp32": warp_instr.get("fp32", 0) / RATES["fp32"] / per_sm_clk * 1e3,
        "int": warp_instr.get("int", 0) / RATES["int"] / per_sm_clk * 1e3,
        "mem": mem / RATES["mem"] / per_sm_clk * 1e3,
    }


# ----------------------------------------------------------------------------------------
# Compiling, assembling, disassembling (GPU machine)
# ----------------------------------------------------------------------------------------


def _tool_candidates(name: str) -> list[str]:
    found = [os.environ.get(name.upper()), shutil.which(name)]
    for mod in ("nvidia", "triton"):
        try:
            roots = list(__import__(mod).__path__)
        except Exception:
            continue
        for root in roots:
            found += sorted(glob.glob(f"{root}/**/bin/{name}", recursive=True), reverse=True)
    return [f for f in dict.fromkeys(found) if f]


def assemble(ptx_path: str, out_dir: str):
    """``(cubin path, ptxas -v log, ptxas version)`` with the first ptxas that takes the PTX
    (an older one gets the PTX's ``.version`` lowered to its own)."""
    errors = []
    for ptxas in _tool_candidates("ptxas"):
        ver = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
        cubin = os.path.join(out_dir, os.path.basename(ptx_path) + ".cubin")
        src = open(ptx_path).read()
        target = re.search(r"\.target\s+(sm_\w+)", src)
        arch = target.group(1) if target else "sm_90a"
        for attempt in range(2):
            p = subprocess.run(
                [ptxas, f"-arch={arch}", "-v", ptx_path, "-o", cubin],
                capture_output=True,
                text=True,
            )
            if p.returncode == 0:
                release = re.search(r"release ([\d.]+)", ver)
                return cubin, p.stdout + p.stderr, release.group(1) if release else "?"
            errors.append(f"{ptxas}: {p.stderr.strip()[:300]}")
            m = re.search(r"current version is '([\d.]+)'", p.stderr)
            newest = m and m.group(1)
            if attempt or not newest:
                break
            lowered = os.path.join(out_dir, "lowered_" + os.path.basename(ptx_path))
            open(lowered, "w").write(re.sub(r"\.version\s+[\d.]+", f".version {newest}", src))
            ptx_path = lowered
    raise RuntimeError("no ptxas took " + ptx_path + ":\n" + "\n".join(errors))


def disassemble(cubin: str) -> str:
    for tool in _tool_candidates("cuobjdump"):
        p = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout
    for tool in _tool_candidates("nvdisasm"):
        p = subprocess.run([tool, "-c", cubin], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout
    raise RuntimeError(f"no cuobjdump/nvdisasm could disassemble {cubin}")


def _registers(log: str) -> dict:
    """ptxas -v: per function its registers and spill bytes."""
    out, name = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'|Function properties for (\S+)", line)
        if m:
            name = m.group(1) or m.group(2)
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            out.setdefault(name, {})["regs"] = int(m.group(1))
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            out.setdefault(name, {})["spill"] = int(m.group(1)) + int(m.group(2))
    return out


def child(impl: str, shape) -> None:
    """Compiles and runs ``impl``'s forward once (its PTX dumped by the environment the
    parent set)."""
    import jax
    import jax.numpy as jnp

    from experiments.bench.kernels import ss_fns, ss_inputs

    b, length, d, n = shape
    fwd, _ = ss_fns(impl)
    jax.block_until_ready(fwd(ss_inputs(b, length, d, n, jnp.bfloat16)))


def _jla_cubins(impl: str, shape, dump: str) -> list:
    """The anchor's kernels: PTX dumped by Mosaic GPU in a child process, then ptxas."""
    env = dict(os.environ, MOSAIC_GPU_DUMP_PTX="1", MOSAIC_GPU_DUMP_TO=dump)
    cmd = [sys.executable, "-m", "experiments.bench.sass", "--child", impl]
    cmd += ["--shape", ",".join(map(str, shape))]
    p = subprocess.run(cmd, env=env, text=True, capture_output=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    ptxs = [f for f in glob.glob(f"{dump}/**/*.ptx", recursive=True) if "ex2" in open(f).read()]
    if not ptxs:
        raise RuntimeError(f"no PTX with ex2 dumped under {dump}: {os.listdir(dump)[:20]}")
    out = []
    for ptx in ptxs:
        cubin, log, version = assemble(ptx, dump)
        out.append((cubin, _registers(log), f"ptxas {version}", None))
    return out


def _triton_kernels(fn, *args) -> list:
    """``(TTIR bytecode, num_warps, num_stages, grid)`` of every Pallas-Triton kernel in
    ``fn(*args)``, lowered for CUDA (works on a machine without a GPU)."""
    import jax

    module = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).compiler_ir()
    found = []

    def integer(attr) -> int:
        return int(str(attr).split()[0])

    def walk(op):
        for region in op.regions:
            for block in region:
                for inner in block.operations:
                    attrs = inner.operation.attributes
                    if inner.operation.name == "stablehlo.custom_call":
                        config = (
                            attrs["mhlo.backend_config"] if "mhlo.backend_config" in attrs else {}
                        )
                        if "ir" in config:
                            grid = tuple(integer(config[f"grid_{a}"]) for a in "xyz")
                            warps, stages = (
                                integer(config["num_warps"]),
                                integer(config["num_stages"]),
                            )
                            found.append((config["ir"].value_bytes, warps, stages, grid))
                    walk(inner.operation)

    walk(module.operation)
    return found


def _pallas_cubins(impl: str, shape, dump: str, grad: bool = False) -> list:
    """Our kernels (the forward; with ``grad`` the saving forward and the backward of a
    gradient): their TTIR (as XLA would receive it) compiled by the ``triton``
    package (pip ``triton``; it stands in for XLA's bundled Triton, so counts can differ a
    little from what runs), then its cubin's registers (``cuobjdump -res-usage``)."""
    import jax
    import jax.numpy as jnp
    import triton
    from jaxlib.mlir import ir
    from jaxlib.triton import dialect
    from triton.backends.compiler import GPUTarget

    import pallas_kernels.selective_scan as kernel_module
    from experiments.bench.kernels import kernel_options, ss_inputs

    opts = kernel_options(impl.split(":", 1)[1]) if ":" in impl else {}
    b, length, d, n = shape
    small = ss_inputs(1, 8, 8, n, jnp.bfloat16)  # only dtypes and ranks are taken from it
    full = {"x": (b, length, d), "dt": (b, length, d), "z": (b, length, d), "A": (d, n)}
    full.update({"B": (b, length, n), "C": (b, length, n), "D": (d,), "dt_bias": (d,)})
    args = {k: jax.ShapeDtypeStruct(full[k], v.dtype) for k, v in small.items()}
    real_check = kernel_module.check_backend
    kernel_module.check_backend = lambda *a, **k: None  # lowering only, nothing runs

    def run(a):
        return kernel_module.selective_scan(**a, dt_softplus=True, **opts)

    fn = jax.grad(lambda a: jnp.sum(run(a).astype(jnp.float32))) if grad else run
    try:
        kernels = _triton_kernels(fn, args)
    finally:
        kernel_module.check_backend = real_check
    out = []
    for i, (data, warps, stages, grid) in enumerate(kernels):
        ctx = ir.Context()
        dialect.register_dialect(ctx)
        with ctx:
            text = ir.Module.parse(data).operation.get_asm(print_generic_op_form=True)
        path = os.path.join(dump, f"kernel{i}.ttir")
        with open(path, "w") as f:
            f.write(text)
        compiled = triton.compile(
            path,
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": warps, "num_stages": stages},
        )
        cubin = path.replace(".ttir", ".cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        launch = {"block_d": d // grid[1], "warps": warps}  # grid (b, d / block_d)
        out.append((cubin, _res_usage(cubin), f"triton {triton.__version__}", launch))
    return out


def _res_usage(cubin: str) -> dict:
    """``cuobjdump -res-usage``: per function its registers and local (spill) bytes."""
    for tool in _tool_candidates("cuobjdump"):
        p = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True)
        if p.returncode:
            continue
        out, name = {}, None
        for line in p.stdout.splitlines():
            m = re.search(r"Function (\S+?):?\s*$", line)
            if m:
                name = m.group(1)
            m = re.search(r"REG:(\d+).*LOCAL:(\d+)", line)
            if m and name:
                out[name] = {"regs": int(m.group(1)), "spill": int(m.group(2))}
        return out
    return {}


def loop_geometry(impl: str, kernel: str, counts: dict, n: int, launch) -> tuple[float, float]:
    """``(steps per loop iteration, channels per thread)`` of a kernel's time loop.

    The anchor's loop stores one ``y`` per thread and step; our forward runs ``unroll``
    steps per iteration and our backward ``bwd_unroll`` (the options, or
    :func:`pallas_kernels.selective_scan.selective_scan`'s defaults for them; ptxas did not
    unroll further in any kernel counted: the forward-only loops hold ``unroll`` ``y``
    stores).
    Channels per thread come from our launch (``block_d / (32 num_warps)``: 1/2 in the
    split layout); the anchor runs one channel per thread."""
    if impl == "jla":
        return max(counts.get("stg", 1), 1), 1.0
    from experiments.bench.kernels import kernel_options

    if kernel.endswith("_state"):
        raise NotImplementedError(f"{impl}: the state layout spreads a channel's states")
    opts = kernel_options(impl.split(":", 1)[1]) if ":" in impl else {}
    unroll = opts.get("unroll", 4)
    if "bwd" not in kernel:
        steps = unroll
    elif kernel.endswith("_split"):
        steps = opts.get("bwd_unroll", min(unroll, max(1, 64 // n)))
    else:
        steps = opts.get("bwd_unroll", min(unroll, 2))
    return steps, launch["block_d"] / (32 * launch["warps"])


def analyse(impl: str, shape, work: str, keep: str | None, grad: bool = False) -> list[dict]:
    """Time-loop instruction counts of every kernel of ``impl``'s forward (with ``grad``,
    for ours: of the saving forward and the backward) that has one."""
    dump = os.path.join(work, re.sub(r"\W", "_", impl) + ("_grad" if grad else ""))
    os.makedirs(dump, exist_ok=True)
    if impl == "jla":
        images = _jla_cubins(impl, shape, dump)
    else:
        images = _pallas_cubins(impl, shape, dump, grad)
    rows = []
    for cubin, regs, compiler, launch in images:
        for fname, insns in parse_sass(disassemble(cubin)).items():
            body, n_ex2 = time_loop(insns)
            if body is None or n_ex2 < 4:
                continue
            if keep:
                os.makedirs(keep, exist_ok=True)
                tag = re.sub(r"\W", "_", f"{impl}_{fname}")[:120]
                with open(os.path.join(keep, tag + ".sass"), "w") as f:
                    f.write("\n".join(f"/*{a:04x}*/ {t}" for a, t in body) + "\n")
            counts = dict(mix(body))
            steps, per_thread = loop_geometry(impl, fname, counts, shape[3], launch)
            rows.append(
                {
                    "impl": impl,
                    "kernel": fname,
                    "compiler": compiler,
                    "steps/iter": steps,
                    "ch/thread": per_thread,
                    "counts": counts,
                    **regs.get(fname, {}),
                }
            )
    return rows


UNIT_COLUMNS = ("total", "mufu", "fp32", "int", "conv", "ldg/stg", "lds/sts", "shfl", "uniform")


def report(rows, shape, clock_ghz) -> list[dict]:
    """Per channel-step counts (per loop iteration / steps / channels per thread, see
    :func:`loop_geometry`) and the unit bounds at ``shape``."""
    b, length, d, _ = shape
    out = []
    for r in rows:
        c = r["counts"]
        per_ch = {k: v / r["steps/iter"] / r["ch/thread"] for k, v in c.items()}
        row = {k: r.get(k, "") for k in ("impl", "compiler", "regs", "ch/thread", "steps/iter")}
        row.update({"kernel": r["kernel"][:32], "spill B": r.get("spill", "")})
        row.update({k: per_ch.get(k, 0.0) for k in (*UNIT_COLUMNS, "ex2")})
        for k, v in bounds_ms(per_ch, b * length * d, clock_ghz).items():
            row[f"{k} ms"] = v
        out.append(row)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--impls",
        default="pallas,jla",
        help="comma-separated: jla (GPU machine with its wheel), pallas or pallas:<options> "
        "(any machine with the triton package)",
    )
    parser.add_argument("--shape", default="8,4096,4096,16", help="b,l,d,n (for the bounds)")
    parser.add_argument("--clock-ghz", type=float, default=1.755)
    parser.add_argument("--keep", default=None, help="folder for the loop bodies' SASS")
    parser.add_argument("--grad", action="store_true", help="ours: the kernels of a gradient")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    if args.child:
        child(args.child, shape)
        return
    from experiments.bench._harness import header, table

    print(header("python -m experiments.bench.sass " + " ".join(argv or sys.argv[1:])))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for impl in args.impls.split(","):
            try:
                found = analyse(impl, shape, work, args.keep, args.grad and impl != "jla")
            except Exception as e:  # one impl that cannot be read must not hide the others
                print(f"{impl}: {type(e).__name__}: {str(e)[-400:]}", flush=True)
                continue
            for r in found:
                print(json.dumps(r), flush=True)
            rows += found
    cols = ["impl", "kernel", "compiler", "regs", "spill B", "ch/thread", "steps/iter"]
    cols += [*UNIT_COLUMNS, "ex2", "issue ms", "mufu ms", "fp32 ms", "int ms", "mem ms"]
    print(
        f"\nper channel-step instruction counts in the time loop; bounds at {shape}, "
        f"{args.clock_ghz} GHz, 132 SMs"
    )
    print(table(report(rows, shape, args.clock_ghz), cols))


if __name__ == "__main__":
    main()
