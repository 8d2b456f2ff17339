"""Instruction mix of the anchor's compiled Mamba-1 forward (SASS), for the floor analysis.

No profiler runs on the lent GPU, so this reads what the hardware executes instead: the
kernel is compiled in a child process with its PTX dumped (``MOSAIC_GPU_DUMP_PTX``: the
Mosaic GPU kernels of jax-linear-attention, ``--impls jla``), assembled with ``ptxas -v``
(registers, spills) and disassembled with ``cuobjdump -sass``. The time loop (the
innermost backward branch around most of the ``MUFU.EX2`` work) is cut out and its
instructions are counted by unit, per thread and step (steps = ``y`` stores in the loop),
then per channel-step. From those counts, lower bounds on the loop's time at the benchmark
shape follow from the per-SM issue rates (the ``--clock-ghz`` clock, 132 SMs): 4
warp-instructions/clk issued, MUFU 0.5, FP32 4, INT 2, memory (LSU) 1 (Hopper SM: 4
schedulers, 16 MUFU, 128 FP32, 64 INT32, 32 load/store lanes).

Our Pallas-Triton kernels cannot be read this way on JAX 0.11.2: XLA writes no PTX under
``--xla_dump_to`` (with or without ``--xla_gpu_dump_llvmir``) and its serialized executable
holds no plain cubin or PTX (both tried on the H100, 2026-12-06).

    python -m experiments.bench.sass [--impls jla] [--keep DIR]

The ``ptxas`` used is the first of: ``$PTXAS``, ``ptxas`` on the PATH, the CUDA packages of
the JAX install, Triton's; its version is printed.
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


def analyse(impl: str, shape, work: str, keep: str | None) -> list[dict]:
    """Time-loop instruction counts of every kernel of ``impl``'s forward with one."""
    if impl != "jla":
        raise NotImplementedError(
            f"{impl}: only Mosaic GPU kernels dump their PTX (see the module docstring)"
        )
    dump = os.path.join(work, re.sub(r"\W", "_", impl))
    os.makedirs(dump, exist_ok=True)
    env = dict(os.environ, MOSAIC_GPU_DUMP_PTX="1", MOSAIC_GPU_DUMP_TO=dump)
    cmd = [sys.executable, "-m", "experiments.bench.sass", "--child", impl]
    cmd += ["--shape", ",".join(map(str, shape))]
    p = subprocess.run(cmd, env=env, text=True, capture_output=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    ptxs = [f for f in glob.glob(f"{dump}/**/*.ptx", recursive=True) if "ex2" in open(f).read()]
    if not ptxs:
        raise RuntimeError(f"no PTX with ex2 dumped under {dump}: {os.listdir(dump)[:20]}")
    rows = []
    for ptx in ptxs:
        cubin, log, version = assemble(ptx, dump)
        regs = _registers(log)
        for fname, insns in parse_sass(disassemble(cubin)).items():
            body, n_ex2 = time_loop(insns)
            if body is None or n_ex2 < 4:
                continue
            if keep:
                os.makedirs(keep, exist_ok=True)
                with open(os.path.join(keep, re.sub(r"\W", "_", fname) + ".sass"), "w") as f:
                    f.write("\n".join(f"/*{a:04x}*/ {t}" for a, t in body) + "\n")
            rows.append(
                {
                    "impl": impl,
                    "kernel": fname,
                    "ptxas": version,
                    "counts": dict(mix(body)),
                    **regs.get(fname, {}),
                }
            )
    return rows


def report(rows, shape, clock_ghz) -> list[dict]:
    """Per thread-step counts (steps = ``y`` stores in the loop; one channel per thread)
    and the unit bounds of each kernel at ``shape``."""
    b, length, d, _ = shape
    out = []
    for r in rows:
        c = r["counts"]
        steps = max(c.get("stg", 1), 1)
        per_step = {k: v / steps for k, v in c.items()}
        row = {
            "impl": r["impl"],
            "kernel": r["kernel"][:40],
            "ptxas": r["ptxas"],
            "regs": r.get("regs", ""),
            "spill B": r.get("spill", ""),
            "steps/iter": steps,
        }
        for k in (
            "total",
            "mufu",
            "fp32",
            "int",
            "conv",
            "ldg/stg",
            "lds/sts",
            "shfl",
            "uniform",
            "other",
        ):
            row[k] = per_step.get(k, 0.0)
        for k, v in bounds_ms(per_step, b * length * d, clock_ghz).items():
            row[f"{k} ms"] = v
        out.append(row)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="jla")
    parser.add_argument("--shape", default="8,4096,4096,16", help="b,l,d,n")
    parser.add_argument("--clock-ghz", type=float, default=1.755)
    parser.add_argument("--keep", default=None, help="folder for the loop bodies' SASS")
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
            found = analyse(impl, shape, work, args.keep)
            for r in found:
                print(json.dumps(r), flush=True)
            rows += found
    cols = ["impl", "kernel", "ptxas", "regs", "spill B", "steps/iter", "total", "mufu"]
    cols += ["fp32", "int", "conv", "ldg/stg", "lds/sts", "shfl", "uniform", "other"]
    cols += ["issue ms", "mufu ms", "fp32 ms", "int ms", "mem ms"]
    print(
        f"\nper thread-step instruction counts in the time loop; bounds at {shape}, "
        f"{args.clock_ghz} GHz, 132 SMs"
    )
    print(table(report(rows, shape, args.clock_ghz), cols))


if __name__ == "__main__":
    main()
