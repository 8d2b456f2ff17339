"""Shared benchmark helpers: median wall time after warm-up, and result tables."""

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
