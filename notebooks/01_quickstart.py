# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ssmjax quickstart: seven sequence layers, one interface
#
# This notebook builds every ssmjax layer (S4, S4D, S5, LRU, Mamba, Mamba-2, GLA) on a
# random batch, checks that the three ways of running a layer — the full sequence, one
# token at a time with `step`, and chunk by chunk with a carried state — give the same
# outputs, and then trains an S5 classifier on MNIST-1D for about a minute with live
# loss and accuracy curves.
#
# **Runs on** CPU, a Colab T4 or any GPU; nothing is downloaded except the package
# (MNIST-1D is generated on the spot by the `mnist1d` package).
# **Time:** 98 s at full size on a 2-core CPU (measured top to bottom, on a machine shared
# with other jobs). `SMOKE=1` shrinks everything to seconds (what CI runs).

# %% [markdown]
# ## Install
#
# On Colab this installs ssmjax with its notebook extras (and CUDA JAX, the `gpu` extra, on
# a GPU runtime) straight from the repository; it is skipped when `ssmjax` is already
# importable (a clone installed with `pip install -e ".[notebooks]"`, or CI).
# **`REPO` is a placeholder** for the project's public repository URL: set it to the real
# repository, or to your fork, before running this cell on Colab.

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
import json
import os
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
from flax import nnx

import ssmjax as sj
import ssmjax.nn
import ssmjax.train

if "ipykernel" not in sys.modules and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")  # run as a plain script without a display: no windows
SMOKE = os.environ.get("SMOKE", "") not in ("", "0")
NOTEBOOK_START = time.perf_counter()
print(f"ssmjax {sj.__version__}, jax {jax.__version__}, devices {jax.devices()}, SMOKE={SMOKE}")

# %% [markdown]
# ## Every layer, one interface
#
# Each layer maps `x: (batch, length, d_model)` to an output of the same shape:
#
# ```python
# y = layer(x, mask=None)                                # full sequence
# y, state = layer(x, state=state, return_state=True)    # streaming: carry the state
# state = layer.init_state(batch_size)
# y_t, state = layer.step(x_t, state)                    # one token, O(1) work
# ```
#
# The constructors differ only in their own hyperparameters (state size, heads, ...).

# %%
B, L, D = 2, (16 if SMOKE else 64), 16
rngs = nnx.Rngs(0)
layers = {
    "S4": sj.nn.S4(D, 16, l_max=L, rngs=rngs),
    "S4D": sj.nn.S4D(D, 16, rngs=rngs),
    "S5": sj.nn.S5(D, 16, blocks=2, rngs=rngs),
    "LRU": sj.nn.LRU(D, 16, r_min=0.5, rngs=rngs),
    "Mamba": sj.nn.Mamba(D, 8, rngs=rngs),
    "Mamba2": sj.nn.Mamba2(D, 16, headdim=8, chunk_size=16, rngs=rngs),
    "GLA": sj.nn.GLA(D, num_heads=2, rngs=rngs),
}
x = jax.random.normal(jax.random.key(1), (B, L, D))
for name, layer in layers.items():
    n_params = sum(p.size for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))
    state = layer.init_state(B)
    state_shapes = [s.shape for s in jax.tree.leaves(state)]
    print(f"{name:7s} {n_params:6d} params  y {layer(x).shape}  state {state_shapes}")

# %% [markdown]
# ## Three modes, one answer
#
# The full-sequence call uses the fast parallel form (an FFT convolution for S4/S4D, a scan
# for the others), `step` is the recurrence one token at a time, and the chunked call feeds
# `CHUNK` tokens at a time and carries the state between calls. They compute the same
# function, so the differences below are float32 rounding.

# %%
CHUNK = 8 if SMOKE else 16


@nnx.jit
def full_sequence(layer, x):
    return layer(x)


@nnx.jit
def token_by_token(layer, x):
    def body(state, x_t):
        y_t, state = layer.step(x_t, state)
        return state, y_t

    _, ys = jax.lax.scan(body, layer.init_state(x.shape[0]), jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1)


@nnx.jit
def chunk_by_chunk(layer, x):
    state = layer.init_state(x.shape[0])
    ys = []
    for start in range(0, x.shape[1], CHUNK):
        y, state = layer(x[:, start : start + CHUNK], state=state, return_state=True)
        ys.append(y)
    return jnp.concatenate(ys, axis=1)


print(f"{'layer':7s} {'max|full - step|':>17s} {'max|full - chunked|':>20s}  (max|y| in brackets)")
for name, layer in layers.items():
    y = full_sequence(layer, x)
    d_step = float(jnp.max(jnp.abs(y - token_by_token(layer, x))))
    d_chunk = float(jnp.max(jnp.abs(y - chunk_by_chunk(layer, x))))
    print(f"{name:7s} {d_step:17.2e} {d_chunk:20.2e}  ({float(jnp.max(jnp.abs(y))):.2f})")

# %% [markdown]
# A padding `mask` (`True` = real token) makes padded steps identity steps, so a padded
# batch gives, on its real tokens, what the unpadded sequence gives:

# %%
s5 = layers["S5"]
mask = jnp.arange(L)[None, :] < jnp.array([[L], [L // 2]])  # second sequence is half padding
y_masked = s5(x, mask)
y_alone = s5(x[1:, : L // 2])
gap = float(jnp.max(jnp.abs(y_masked[1, : L // 2] - y_alone[0])))
print("max |padded - alone| on real tokens:", gap)
print("outputs at padded positions are zero:", bool(jnp.all(y_masked[1, L // 2 :] == 0)))

# %% [markdown]
# ## Train S5 on MNIST-1D with live curves
#
# MNIST-1D (Greydanus 2020) is a 10-class task of 40-step one-dimensional signals that the
# `mnist1d` package generates offline. The config below is the project's main job
# (`experiments/configs/mnist1d.py:s5`: 4 bidirectional S5 blocks, 43k parameters) with
# fewer epochs. `train_and_evaluate(config, workdir)` writes `workdir/metrics.jsonl`; it
# runs in a background thread here while the cell redraws the curves from that file.
#
# From a clone, the full 20-epoch run is `python -m experiments.train` (98.8% test
# accuracy in the project README).

# %%
from ssmjax.optim import OptimConfig
from ssmjax.train import Config, DataConfig, ModelConfig, TrainConfig

EPOCHS = 1 if SMOKE else 15
config = Config(
    name="mnist1d-s5",
    model=ModelConfig(
        layer="s5",
        d_model=16 if SMOKE else 64,
        n_layers=1 if SMOKE else 4,
        activation="half_glu2",
        dropout=0.2,
        layer_kwargs={"d_state": 32, "blocks": 4, "bidirectional": True, "dt_max": 1.0},
    ),
    data=DataConfig(
        name="mnist1d",
        # val_fraction=0: the standard protocol, train on all 4000 and report the test split
        kwargs={"val_fraction": 0.0, **({"num_samples": 500} if SMOKE else {})},
        batch_size=50 if SMOKE else 64,
        eval_batch_size=500,
    ),
    optim=OptimConfig(lr=4e-3, ssm_lr=2e-3, weight_decay=0.1, preset="standard"),
    train=TrainConfig(
        epochs=EPOCHS, warmup_epochs=0 if SMOKE else 1, log_every=4 if SMOKE else 10, progress=False
    ),
)
workdir = tempfile.mkdtemp(prefix="mnist1d-s5-")
print("workdir:", workdir)


# %%
def read_curves(workdir):
    """Train and test records of ``workdir/metrics.jsonl`` (empty while it is being created)."""
    try:
        return sj.train.read_metrics(workdir, "train"), sj.train.read_metrics(workdir, "test")
    except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or a line half written
        return [], []


def draw(axes, workdir):
    train, test = read_curves(workdir)
    for ax in axes:
        ax.clear()
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if train:
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r["loss"] for r in train], label="train")
        axes[1].plot(steps, [r["accuracy"] for r in train], label="train")
    if test:
        steps = [r["step"] for r in test]
        axes[0].plot(steps, [r["loss"] for r in test], "o-", label="test")
        axes[1].plot(steps, [r["accuracy"] for r in test], "o-", label="test")
    axes[0].set_ylabel("cross-entropy")
    axes[1].set_ylabel("accuracy")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        if train or test:
            ax.legend()


def train_live(config, workdir, refresh_s=3.0):
    """Runs ``train_and_evaluate`` in a thread and redraws the curves every ``refresh_s``."""
    from IPython.display import display

    result = {}

    def run():
        try:
            result["summary"] = sj.train.train_and_evaluate(config, workdir)
        except BaseException as e:  # re-raised in the notebook's thread below
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    handle = display(fig, display_id=True)  # None outside IPython: then only the final plot
    while thread.is_alive():
        thread.join(refresh_s)
        if handle is not None:
            draw(axes, workdir)
            handle.update(fig)
    draw(axes, workdir)
    fig.suptitle(f"{config.name}: {result.get('summary', {}).get('steps', '?')} steps")
    if handle is not None:
        handle.update(fig)
        plt.close(fig)
    if "error" in result:
        raise result["error"]
    return result["summary"]


summary = train_live(config, workdir)
print(
    f"{summary['steps']} steps in {summary['seconds']:.0f} s, {summary['num_params']} parameters: "
    f"test accuracy {summary['final']['test']['accuracy']:.3f}"
)

# %% [markdown]
# The curves are in `metrics.jsonl`, one JSON record a line, so they can be re-plotted at
# any time (also while a long run is going) without touching the training process:

# %%
print(open(os.path.join(workdir, "metrics.jsonl")).readline().strip()[:200])
print(f"notebook wall time: {time.perf_counter() - NOTEBOOK_START:.0f} s")
