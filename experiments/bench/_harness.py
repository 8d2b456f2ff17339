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


def time_ms(fn, *args, warmup: int = 2, repeats: int = 7) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds (compiled, warmed up, synced)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


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
    return float(np.median(timings if iterations > 1 else [timings]))


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
