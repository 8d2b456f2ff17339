"""Shared benchmark helpers: median wall time and device time after warm-up, and result tables.

Two clocks, as the benchmark protocol (``performance.md`` section 8) asks: **per call**, the
wall time of one call from the host, synchronised (``time_ms``), which on the lent H100
includes 0.1-0.5 ms of JAX dispatch and synchronisation around every call; and **device
time**, the sum of the kernel times of one call measured by CUPTI (``device_ms``), which is
what a kernel costs inside a larger jitted program such as a training step and what floors
are compared with.
"""

import datetime
import platform
import time

import jax
import numpy as np

SCAN_SHAPES = {  # the linear-scan benchmark shapes: name -> ((b, l, d), dtype, time-invariant a)
    "fp32-tv": ((8, 4096, 2048), "float32", False),
    "c64-ti": ((8, 4096, 1024), "complex64", True),
    "c64-tv": ((8, 4096, 1024), "complex64", False),
    "fp32-ti": ((8, 4096, 2048), "float32", True),  # a real time-invariant a (S4D-real)
}


def parse_scan_shape(spec: str, shapes: dict = SCAN_SHAPES):
    """``"c64-ti"`` (a ``shapes`` entry) or ``"c64-ti:8x4096x256"`` (its kind at another
    ``(batch, l, d)``) -> ``((batch, l, d), dtype, time-invariant a)``."""
    kind, _, dims = spec.partition(":")
    if kind not in shapes:
        raise ValueError(f"unknown shape {kind!r} in {spec!r}; one of {sorted(shapes)}")
    shape, dtype, lti = shapes[kind]
    if dims:
        shape = tuple(int(x) for x in dims.split("x"))
        if len(shape) != 3:
            raise ValueError(f"{spec!r}: give batch x l x d")
    return shape, dtype, lti


def median_ms(run, sync, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of ``run()`` then ``sync()`` in milliseconds, after ``warmup`` calls
    (any framework: ``sync`` waits for the device)."""
    for _ in range(warmup):
        run()
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def time_ms(fn, *args, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds (compiled, warmed up, synced)."""
    out = {}

    def run():
        out["y"] = fn(*args)

    return median_ms(run, lambda: jax.block_until_ready(out["y"]), warmup, repeats)


def device_ms(fn, *args, iterations: int = 10) -> float | None:
    """Median over ``iterations`` calls of the summed kernel time of ``fn(*args)`` in
    milliseconds, measured by CUPTI (``jax.experimental.mosaic.gpu.profiler.measure``; the
    calls are issued back to back and synchronised at the end, gaps between kernels are not
    counted). ``None`` where CUPTI cannot run (no GPU) or ``fn`` launches no kernel."""
    if jax.devices()[0].platform != "gpu":
        return None
    from jax.experimental.mosaic.gpu import profiler

    jax.block_until_ready(fn(*args))  # compiled and warm before CUPTI attaches
    try:
        _, timings = profiler.measure(fn, iterations=iterations)(*args)
    except RuntimeError as e:  # e.g. a program whose kernels differ between calls
        print(f"device_ms: {e}", flush=True)
        return None
    if timings is None:
        return None
    if KERNEL_TIMES:
        for name, ms in kernel_times(fn, *args):
            print(f"    kernel {ms:8.4f} ms  {name[:100]}", flush=True)
    return float(np.median(timings if iterations > 1 else [timings]))


KERNEL_TIMES = False  # set by the scripts' --kernel-times: device_ms also prints each kernel


def kernel_times(fn, *args, iterations: int = 5) -> list[tuple[str, float]]:
    """Each kernel of one ``fn(*args)`` call in launch order, ``(name, median ms)`` over
    ``iterations`` calls (CUPTI); empty where CUPTI cannot run. Shows where a program's
    device time goes (e.g. the XLA kernels around a Pallas kernel)."""
    if jax.devices()[0].platform != "gpu":
        return []
    from jax.experimental.mosaic.gpu import profiler

    jax.block_until_ready(fn(*args))
    try:
        _, timings = profiler.measure(fn, aggregate=False, iterations=iterations)(*args)
    except RuntimeError as e:
        print(f"kernel_times: {e}", flush=True)
        return []
    if not timings:
        return []
    runs = timings if iterations > 1 else [timings]
    return [
        (name, float(np.median([run[i][1] for run in runs]))) for i, (name, _) in enumerate(runs[0])
    ]


def header(command: str) -> str:
    """Where and how a table was measured."""
    dev = jax.devices()[0]
    return (
        f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, "
        f"python {platform.python_version()}, date {datetime.date.today().isoformat()}\n"
        f"command: `{command}`"
    )


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` (dicts) restricted to ``columns``."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
