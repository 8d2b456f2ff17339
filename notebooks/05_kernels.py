# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Scan kernels: XLA forms, Pallas and the memory floor
#
# Every ssmjax op has one switch, `implementation=`, that picks how its hot loop runs:
#
# * `"sequential"` — `lax.scan` over time, the reference;
# * `"associative"` — `lax.associative_scan`, `O(log L)` depth;
# * `"chunked"` — a scan over chunks with a parallel form inside;
# * `"pallas"` — a fused GPU kernel (Pallas, Triton lowering; Ampere or newer; on H100/H200
#   the linear scan and the selective scan, forward and backward, use the Mosaic GPU
#   lowering, inputs staged by TMA).
#
# `implementation=None` picks automatically and never an interpreted kernel. This notebook
# times the implementations of `linear_recurrence` (`h_t = a_t h_{t-1} + b_t`, the scan
# inside S5, LRU and S4D) and of Mamba's `selective_scan` on the device it runs on, checks
# them against the reference, and compares them with the **memory floor**: a scan must at
# least read `a` and `b` and write `h`, so no implementation can beat an element-wise
# `a * b` over the same arrays, which we time as the floor.
#
# **On a GPU** it shows the benchmark table and time against length for the XLA forms and
# the Pallas kernel (on GPUs older than Ampere, such as Colab's T4, the Pallas kernels do
# not compile and their rows say why). **On a CPU** no Pallas kernel runs; it says so and
# shows the XLA timings at small sizes.
# **Time:** 23 s at full size on a 2-core CPU (measured top to bottom, on a machine shared
# with other jobs). `SMOKE=1` shrinks everything to seconds (what CI runs).

# %% [markdown]
# ## Install
#
# On Colab this installs ssmjax with its notebook extras (and CUDA JAX, the `gpu` extra, on
# a GPU runtime) straight from the repository; it is skipped when `ssmjax` is already
# importable (a clone installed with `pip install -e ".[notebooks]"`, or CI).
# **`REPO` is a placeholder** for the project's public repository URL: set it to the real
# repository, or to your fork, before running this cell on Colab.
#
# Choose a GPU runtime on Colab to see the GPU numbers.

# %%
import importlib.util
import shutil
import subprocess
import sys

REPO = "https://github.com/ssmjax/ssmjax"
if importlib.util.find_spec("ssmjax") is None:
    extras = "notebooks,gpu" if shutil.which("nvidia-smi") else "notebooks"  # CUDA jax on GPUs
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", f"ssmjax[{extras}] @ git+{REPO}"],
        check=True,
    )

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import ssmjax as sj

if "ipykernel" not in sys.modules and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")  # run as a plain script without a display: no windows
SMOKE = os.environ.get("SMOKE", "") not in ("", "0")
NOTEBOOK_START = time.perf_counter()
device = jax.devices()[0]
ON_GPU = device.platform == "gpu"
print(f"ssmjax {sj.__version__}, jax {jax.__version__}, SMOKE={SMOKE}")
print(f"device: {device.device_kind} ({device.platform})")
if not ON_GPU:
    print(
        "No GPU here: Pallas kernels run only on a GPU (elsewhere implementation='pallas' "
        "runs them in the slow Pallas interpreter, for tests), so this run times the XLA "
        "implementations at small sizes."
    )

# %% [markdown]
# ## Sizes and the timer
#
# Times are medians of several calls of a jitted function after a warm-up call (so
# compilation is excluded), with `block_until_ready` so that asynchronous dispatch is not
# mistaken for speed.

# %%
if SMOKE:
    BATCH, WIDTH, LENGTHS, REPEATS = 2, 16, [32, 64], 2
elif ON_GPU:
    BATCH, WIDTH, LENGTHS, REPEATS = 8, 1024, [512, 1024, 2048, 4096, 8192, 16384], 10
else:
    BATCH, WIDTH, LENGTHS, REPEATS = 2, 256, [256, 1024, 4096, 16384], 5
IMPLS = ["sequential", "associative", "chunked"] + (["pallas"] if ON_GPU else [])


def median_ms(fn, *args, repeats=REPEATS):
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def scan_inputs(length, seed=0):
    ka, kb = jax.random.split(jax.random.key(seed))
    shape = (BATCH, length, WIDTH)
    a = jax.random.uniform(ka, shape, minval=0.9, maxval=0.999)  # decays, as in a stable SSM
    return a, jax.random.normal(kb, shape)


def markdown_table(rows, columns):
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# %% [markdown]
# ## `linear_recurrence`: every implementation against the floor

# %%
floor_fn = jax.jit(lambda a, b: a * b)  # reads a and b, writes one array: the scan's traffic
rows = []
for length in LENGTHS:
    a, b = scan_inputs(length)
    n_bytes = 3 * a.size * a.dtype.itemsize
    t_floor = median_ms(floor_fn, a, b)
    rows.append(
        {"impl": "floor (a * b)", "L": length, "ms": t_floor, "GB/s": n_bytes / t_floor / 1e6}
    )
    reference = None
    for impl in IMPLS:
        fn = jax.jit(lambda a, b, impl=impl: sj.ops.linear_recurrence(a, b, implementation=impl))
        row = {"impl": impl, "L": length}
        try:
            h = fn(a, b)
            row["ms"] = median_ms(fn, a, b)
        except Exception as e:  # e.g. a GPU the Pallas kernel does not support
            row["note"] = f"n/a: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            rows.append(row)
            continue
        if reference is None:
            reference = h
        row["GB/s"] = n_bytes / row["ms"] / 1e6
        row["x floor"] = row["ms"] / t_floor
        row["rel err"] = float(jnp.max(jnp.abs(h - reference)) / jnp.max(jnp.abs(reference)))
        rows.append(row)
print(f"(b, L, d) = ({BATCH}, L, {WIDTH}), float32, forward pass, {device.device_kind}\n")
print(markdown_table(rows, ["impl", "L", "ms", "GB/s", "x floor", "rel err", "note"]))

# %% [markdown]
# Time against length, log-log. Everything here is linear in `L`, so the lines are
# parallel once the arrays are large enough to hide fixed costs; the distance to the
# dashed floor is what is left to gain.

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
for impl in ["floor (a * b)", *IMPLS]:
    pts = [(r["L"], r["ms"]) for r in rows if r["impl"] == impl and "ms" in r]
    if pts:
        style = dict(color="k", ls="--") if impl.startswith("floor") else dict(marker="o")
        ax.plot(*zip(*pts), label=impl, **style)
ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="forward time, ms")
ax.set_xticks(LENGTHS, [str(n) for n in LENGTHS])
ax.minorticks_off()
ax.set_title(f"linear_recurrence, ({BATCH}, L, {WIDTH}) float32 on {device.device_kind}")
ax.legend()
plt.show()

# %% [markdown]
# ## Mamba's `selective_scan`
#
# The selective scan computes `exp(dt A)` for every `(batch, time, channel, state)` inside
# the loop, so it is heavier than the plain recurrence; its memory floor is reading `x`,
# `dt`, `z`, `B`, `C` and writing `y`, priced at the bandwidth of the `a * b` floor at the
# largest size above.

# %%
if SMOKE:
    SS = dict(b=1, l=32, d=16, n=4)
elif ON_GPU:
    SS = dict(b=8, l=4096, d=1024, n=16)
else:
    SS = dict(b=1, l=2048, d=128, n=16)
dtype = jnp.bfloat16 if ON_GPU else jnp.float32
rng = np.random.default_rng(0)
b_, l_, d_, n_ = SS["b"], SS["l"], SS["d"], SS["n"]
ss_args = dict(
    x=jnp.asarray(rng.normal(size=(b_, l_, d_)), dtype),
    dt=jnp.asarray(rng.normal(size=(b_, l_, d_)) * 0.5, dtype),
    A=-jnp.tile(jnp.arange(1, n_ + 1, dtype=jnp.float32), (d_, 1)),  # S4D-real, as Mamba
    B=jnp.asarray(rng.normal(size=(b_, l_, n_)), dtype),
    C=jnp.asarray(rng.normal(size=(b_, l_, n_)), dtype),
    D=jnp.ones((d_,), jnp.float32),
    z=jnp.asarray(rng.normal(size=(b_, l_, d_)), dtype),
    dt_bias=jnp.full((d_,), -3.0, jnp.float32),
)
itemsize = jnp.dtype(dtype).itemsize
ss_bytes = (4 * b_ * l_ * d_ + 2 * b_ * l_ * n_) * itemsize
bandwidth = max(r["GB/s"] for r in rows if r["impl"].startswith("floor")) * 1e6  # bytes/ms
ss_rows = [{"impl": "floor (memory)", "ms": ss_bytes / bandwidth}]
reference = None
for impl in IMPLS:
    fn = jax.jit(
        lambda args, impl=impl: sj.ops.selective_scan(**args, dt_softplus=True, implementation=impl)
    )
    row = {"impl": impl}
    try:
        y = fn(ss_args)
        row["ms"] = median_ms(fn, ss_args)
    except Exception as e:
        row["note"] = f"n/a: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        ss_rows.append(row)
        continue
    y = y.astype(jnp.float32)
    if reference is None:
        reference = y
    row["x floor"] = row["ms"] / ss_rows[0]["ms"]
    row["exp/s"] = b_ * l_ * d_ * n_ / row["ms"] * 1e3
    row["rel L2 err"] = float(jnp.linalg.norm(y - reference) / jnp.linalg.norm(reference))
    ss_rows.append(row)
print(f"(b, L, d, n) = {(b_, l_, d_, n_)}, {jnp.dtype(dtype).name} inputs, with z, D, dt_bias\n")
print(markdown_table(ss_rows, ["impl", "ms", "x floor", "exp/s", "rel L2 err", "note"]))

# %% [markdown]
# ## More
#
# From a clone of the repository, `python -m experiments.bench.scan` and (where present)
# `python -m experiments.bench.kernels` print the project's full benchmark tables, with
# gradients, complex inputs and on-device correctness checks; their results are recorded
# in `BENCHMARKS.md`.

# %%
for module in ("experiments.bench.scan", "experiments.bench.kernels"):
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # no `experiments` package: not a clone of the repository
        found = False
    print(f"python -m {module}: {'available here' if found else 'not in this installation'}")
print(f"notebook wall time: {time.perf_counter() - NOTEBOOK_START:.0f} s")
