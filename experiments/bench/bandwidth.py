"""What this GPU's memory moves for the linear scan's forward traffic, by every means at hand.

The ``linear_scan`` forward reads ``a`` and ``b`` and writes ``h`` (time-invariant ``a``:
reads ``b``, writes ``h``), once each. Its target is "within 1.3x of the HBM floor"; this
script measures, side by side in one process on the same arrays, how fast that traffic can
move on this GPU at all:

* **torch**: ``copy_`` (cudaMemcpy device to device), ``torch.mul(out=)`` and
  ``torch.add(out=)`` (vendor elementwise kernels), read-only ``sum`` and write-only ``fill_``;
* **triton stream**: a plain Triton elementwise kernel ``h = 0.5 a + b`` over the flat arrays,
  a small sweep of block sizes and warps (the best streaming kernel we can write);
* **triton scan**: the recurrence itself written in Triton, one program per (channel block,
  batch row) walking the time axis (rows pipelined ``stages`` deep by the compiler), and a
  tiled form that loads ``(T, BD)`` tiles and scans each with ``tl.associative_scan``;
* **jax**: XLA's fused elementwise op moving the same arrays, and the library's Mosaic GPU
  ``linear_scan`` forward (the default on Hopper).

Every scan result is checked against a float64 sequential scan in the same run. Two clocks:
``ms``, the wall-clock median per call after warm-up, each call synchronised, the same way
for torch and JAX; and ``dev ms``, device time: ``triton.testing.do_bench`` (CUDA events,
median) for torch and Triton, the summed kernel time by CUPTI for JAX
(``experiments.bench._harness.device_ms``). TB/s and the floor ratios use device time.
``--profile`` runs each row once without checks or warm-up, for ``ncu``::

    python -m experiments.bench.bandwidth [--shapes fp32-tv,c64-ti] [--repeats 15]
        [--only torch,stream,scan,tile,jax] [--profile]

Needs a CUDA GPU with PyTorch and Triton (the lent H100's image has both); the Mosaic row
needs Hopper.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np

from experiments.bench._harness import (
    SCAN_SHAPES,
    device_ms,
    header,
    median_ms,
    parse_scan_shape,
    table,
)

try:  # the kernels are plain Triton: importable wherever triton is, runnable on a GPU
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the GPU image has triton
    triton = tl = None

SHAPES = dict(SCAN_SHAPES)  # name: ((batch, l, d), dtype, time-invariant a)
GROUPS = ("torch", "stream", "scan", "tile", "jax")
SPEC_TBPS = 3.35  # H100 SXM HBM3, the vendor's figure
COPY_TBPS = 3.0  # performance.md's copy ceiling, the floor of the target


def parse_shape(name: str):
    """``"fp32-tv"`` or ``"fp32-tv:4x8192x2048"``: ``((batch, l, d), planes, lti)`` (planes:
    1 real, 2 complex)."""
    shape, dtype, lti = parse_scan_shape(name, SHAPES)
    return shape, 2 if dtype == "complex64" else 1, lti


def forward_bytes(shape, planes: int, lti: bool) -> int:
    """Bytes the forward must move: ``a`` (unless time-invariant), ``b`` and ``h``, fp32."""
    size = int(np.prod(shape)) * planes * 4
    return (2 if lti else 3) * size


def rate_row(name: str, ms: float, nbytes: int, dev_ms: float | None = None, **extra) -> dict:
    """A table row: per-call time, device time (``dev``), achieved TB/s on device time (per
    call where none) and the ratios of that time to the two floors."""
    row = {"row": name, "ms": ms, "dev ms": dev_ms, "GB": nbytes / 1e9}
    t = dev_ms or ms
    row["TB/s"] = nbytes / t / 1e9
    row["/ 3.0 TB/s"] = t / (nbytes / COPY_TBPS / 1e9)
    row["/ 3.35 TB/s"] = t / (nbytes / SPEC_TBPS / 1e9)
    row.update(extra)
    return row


def scan_configs(group: str, planes: int) -> list[dict]:
    """Triton launch configurations swept for a group (``scan`` or ``tile``)."""
    if group == "scan":
        grid = itertools.product((128, 256, 512), (1, 2, 4), (2, 4))
        return [{"BD": bd, "num_warps": w, "STAGES": s} for bd, w, s in grid if bd >= 32 * w]
    if group == "tile" and planes == 1:
        grid = itertools.product((32, 64, 128), (16, 32), (4, 8), (2, 3))
        return [{"BD": bd, "T": t, "num_warps": w, "STAGES": s} for bd, t, w, s in grid]
    return []


# ----------------------------------------------------------------------------------------
# Triton kernels (fp32; complex as two planes stacked on a leading axis)
# ----------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _stream_kernel(a_ptr, b_ptr, h_ptr, n, BLOCK: tl.constexpr, READ_A: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        b = tl.load(b_ptr + offs, mask=mask)
        if READ_A:
            h = 0.5 * tl.load(a_ptr + offs, mask=mask) + b
        else:
            h = 1.0001 * b
        tl.store(h_ptr + offs, h, mask=mask)

    @triton.jit
    def _scan_kernel(
        a_ptr,
        b_ptr,
        h_ptr,
        L: tl.constexpr,
        D: tl.constexpr,
        plane,  # elements between the real and imaginary planes of b and h
        a_plane,  # of a
        PLANES: tl.constexpr,
        LTI: tl.constexpr,
        BD: tl.constexpr,
        STAGES: tl.constexpr,
    ):
        cols = tl.program_id(0) * BD + tl.arange(0, BD)
        row0 = tl.program_id(1).to(tl.int64) * L * D
        if LTI:
            ar = tl.load(a_ptr + cols)
            if PLANES == 2:
                ai = tl.load(a_ptr + a_plane + cols)
        hr = tl.zeros([BD], tl.float32)
        hi = tl.zeros([BD], tl.float32)
        for t in tl.range(0, L, num_stages=STAGES):
            off = row0 + t * D + cols
            if not LTI:
                ar = tl.load(a_ptr + off)
                if PLANES == 2:
                    ai = tl.load(a_ptr + a_plane + off)
            br = tl.load(b_ptr + off)
            if PLANES == 2:
                bi = tl.load(b_ptr + plane + off)
                hr, hi = ar * hr - ai * hi + br, ar * hi + ai * hr + bi
                tl.store(h_ptr + plane + off, hi)
            else:
                hr = ar * hr + br
            tl.store(h_ptr + off, hr)

    @triton.jit
    def _combine(a1, b1, a2, b2):
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _tile_kernel(
        a_ptr,
        b_ptr,
        h_ptr,
        L: tl.constexpr,
        D: tl.constexpr,
        BD: tl.constexpr,
        T: tl.constexpr,
        STAGES: tl.constexpr,
    ):
        cols = tl.program_id(0) * BD + tl.arange(0, BD)
        rows = tl.arange(0, T)
        off = tl.program_id(1).to(tl.int64) * L * D + rows[:, None] * D + cols[None, :]
        h = tl.zeros([BD], tl.float32)
        last = rows[:, None] == T - 1
        for t0 in tl.range(0, L, T, num_stages=STAGES):
            a = tl.load(a_ptr + off + t0 * D)
            b = tl.load(b_ptr + off + t0 * D)
            ac, bc = tl.associative_scan((a, b), 0, _combine)
            hh = bc + ac * h[None, :]
            tl.store(h_ptr + off + t0 * D, hh)
            h = tl.sum(tl.where(last, hh, 0.0), axis=0)


# ----------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------


def host_inputs(shape, planes, lti, seed=0):
    """``a`` (``(planes, d)`` when ``lti``, else ``(planes, *shape)``) with ``|a| < 1``,
    ``b`` of ``(planes, *shape)``: float32 numpy."""
    rng = np.random.default_rng(seed)
    a_shape = shape[2:] if lti else shape
    r = rng.uniform(0.9, 0.999, size=a_shape).astype(np.float32)
    if planes == 2:
        th = rng.uniform(0.0, 0.3, size=a_shape).astype(np.float32)
        a = np.stack([r * np.cos(th), r * np.sin(th)])
    else:
        a = r[None]
    b = rng.standard_normal(size=(planes, *shape), dtype=np.float32)
    return a, b


def reference_scan(torch, a, b, lti):
    """float64 sequential scan on the GPU (planes in, planes out)."""
    a64, b64 = a.double(), b.double()
    if a64.shape[0] == 2:
        a64 = torch.complex(a64[0], a64[1])
        b64 = torch.complex(b64[0], b64[1])
    else:
        a64, b64 = a64[0], b64[0]
    h = torch.zeros_like(b64[:, 0])
    out = torch.empty_like(b64)
    for t in range(b64.shape[1]):
        h = (a64 if lti else a64[:, t]) * h + b64[:, t]
        out[:, t] = h
    if out.is_complex():
        return torch.stack([out.real, out.imag]).float()
    return out[None].float()


def rel_err(x, ref) -> float:
    return float((x - ref).abs().max() / ref.abs().max())


def _add_row(rows, log, shape, row_name, nbytes, run, sync, error, device, timing, **extra):
    """Runs ``run`` once and checks it (``error()``: max relative error, or ``None`` for no
    check), times it on both clocks (``timing = (warmup, repeats)``; ``device()``: device ms,
    only when ``repeats >= 2``) and appends its row, or a note where it fails."""
    warmup, repeats = timing
    try:
        run()
        sync()
        err = error()
        if err is not None:
            extra.update(err=err, ok="OK" if err < 1e-4 else "FAIL")
        ms = median_ms(run, sync, warmup, repeats)
        dev = device() if repeats >= 2 else None
    except Exception as e:  # a config that does not compile: say so, go on
        rows.append({"shape": shape, "row": row_name, "note": f"{type(e).__name__}: {e}"[:160]})
        return
    row = {"shape": shape, **rate_row(row_name, ms, nbytes, dev, **extra)}
    rows.append(row)
    ok = extra.get("ok", "")
    log(f"  {shape} {row_name:<44} {ms:8.3f} ms dev {dev} {row['TB/s']:6.2f} TB/s {ok}")


def run_shape(name, groups, warmup, repeats, check, log=print):
    import torch

    shape, planes, lti = parse_shape(name)
    bsz, length, d = shape
    nbytes = forward_bytes(shape, planes, lti)
    a_np, b_np = host_inputs(shape, planes, lti)
    a, b = torch.from_numpy(a_np).cuda(), torch.from_numpy(b_np).cuda()
    h = torch.empty_like(b)
    ref = reference_scan(torch, a, b, lti) if check else None
    torch.cuda.empty_cache()
    sync = torch.cuda.synchronize
    timing = (warmup, repeats)
    rows = []

    def add(row_name, fn, moved=nbytes, scan=False, expect=None, **extra):
        want = ref if scan else (expect if expect is not None and check else None)

        def error():
            if want is None:
                return None
            return rel_err(h, want if scan else want())

        h.fill_(float("nan"))
        device = lambda: triton.testing.do_bench(fn, return_mode="median")
        _add_row(rows, log, name, row_name, moved, fn, sync, error, device, timing, **extra)

    flat_b, flat_h = b.reshape(-1), h.reshape(-1)
    n = flat_b.numel()
    if "torch" in groups:
        size = n * 4
        add("torch copy_ (1 read, 1 write)", lambda: flat_h.copy_(flat_b), moved=2 * size)
        add("torch sum (read only)", lambda: flat_b.sum(), moved=size)
        add("torch fill_ (write only)", lambda: flat_h.fill_(1.0), moved=size)
        if not lti:
            flat_a = a.reshape(-1)
            add("torch add(out=) (2 reads, 1 write)", lambda: torch.add(flat_a, flat_b, out=flat_h))
        else:
            add("torch mul(out=) (1 read, 1 write)", lambda: torch.mul(flat_b, 1.0001, out=flat_h))
    if "stream" in groups:
        flat_a = a.reshape(-1) if not lti else flat_b
        for block, warps in itertools.product((1024, 4096, 8192), (4, 8)):
            grid = (triton.cdiv(n, block),)
            fn = lambda g=grid, bl=block, w=warps: _stream_kernel[g](
                flat_a, flat_b, flat_h, n, BLOCK=bl, READ_A=not lti, num_warps=w
            )
            want = (lambda: 1.0001 * b) if lti else (lambda: 0.5 * a + b)
            add(f"triton stream BLOCK={block} warps={warps}", fn, expect=want)
    for group in ("scan", "tile"):
        if group not in groups:
            continue
        for cfg in scan_configs(group, planes):
            if d % cfg["BD"]:
                continue
            grid = (d // cfg["BD"], bsz)
            if group == "scan":
                fn = lambda g=grid, c=cfg: _scan_kernel[g](
                    a, b, h, length, d, b[0].numel(), a[0].numel(), PLANES=planes, LTI=lti, **c
                )
            else:
                if length % cfg["T"]:
                    continue
                fn = lambda g=grid, c=cfg: _tile_kernel[g](a, b, h, length, d, **c)
            label = " ".join(f"{k}={v}" for k, v in cfg.items())
            add(f"triton {group} {label}", fn, scan=True, programs=grid[0] * grid[1])
    if "jax" in groups:
        ref_np = None if ref is None else ref.cpu().numpy()
        rows += jax_rows(name, a_np, b_np, lti, ref_np, timing, nbytes, log)
    return rows


def jax_rows(name, a_np, b_np, lti, ref, timing, nbytes, log):
    """The JAX rows of a shape: XLA's fused elementwise op moving the forward's arrays, and
    the Mosaic ``linear_scan`` forward checked against ``ref`` (numpy planes, or ``None``)."""
    import jax
    import jax.numpy as jnp

    from pallas_kernels.linear_scan import linear_scan, linear_scan_planes

    a = tuple(jnp.asarray(x) for x in a_np)
    b = tuple(jnp.asarray(x) for x in b_np)
    if lti:
        copy = jax.jit(lambda a, b: tuple(x * 1.0001 for x in b))
    else:
        copy = jax.jit(lambda a, b: tuple(0.5 * x + y for x, y in zip(a, b, strict=True)))
    if len(b) == 1:
        kernel = jax.jit(lambda a, b: (linear_scan(a[0], b[0], layout="mosaic"),))
    else:
        kernel = jax.jit(lambda a, b: tuple(linear_scan_planes(a, b, layout="mosaic")))
    rows = []
    cases = (("jax xla elementwise", copy, False), ("jax mosaic linear_scan", kernel, True))
    for row_name, fn, scan in cases:
        out = {}

        def run(fn=fn, out=out):
            out["h"] = fn(a, b)

        def sync(out=out):
            jax.block_until_ready(out["h"])

        def error(out=out, scan=scan):
            if not scan or ref is None:
                return None
            got = np.stack([np.asarray(x) for x in out["h"]])
            return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))

        device = lambda fn=fn: device_ms(fn, a, b)
        _add_row(rows, log, name, row_name, nbytes, run, sync, error, device, timing)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="fp32-tv,c64-ti")
    parser.add_argument("--only", default=",".join(GROUPS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--profile", action="store_true", help="one untimed run a row, for ncu")
    args = parser.parse_args(argv)
    groups = args.only.split(",")
    if unknown := set(groups) - set(GROUPS):
        parser.error(f"unknown groups {sorted(unknown)}; of {GROUPS}")
    for s in args.shapes.split(","):
        parse_shape(s)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
    import torch

    if triton is None or not torch.cuda.is_available():
        raise SystemExit("bandwidth: needs a CUDA GPU with PyTorch and Triton")
    warmup, repeats = (0, 1) if args.profile else (3, args.repeats)
    rows = []
    for name in args.shapes.split(","):
        rows += run_shape(name, groups, warmup, repeats, check=not args.profile)
    if args.profile:
        return
    argv = sys.argv[1:] if argv is None else argv
    print(header("python -m experiments.bench.bandwidth " + " ".join(argv)))
    print(f"torch {torch.__version__}, triton {triton.__version__}, {torch.cuda.get_device_name()}")
    cols = ["shape", "row", "ms", "dev ms", "GB", "TB/s", "/ 3.0 TB/s", "/ 3.35 TB/s"]
    cols += ["programs"]
    print(table(rows, [*cols, "err", "ok", "note"]))


if __name__ == "__main__":
    main()
