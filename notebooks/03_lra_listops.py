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
# # Long Range Arena: ListOps
#
# ListOps (Nangia & Bowman 2018, in the LRA version of Tay et al. 2021) asks for the value
# of a nested expression over the digits 0-9 with the operators `MAX`, `MIN`, `MED`
# (median) and `SM` (sum modulo 10), read as a flat token sequence of up to 2000 tokens —
# a hierarchical task that a sequence model must solve without seeing the tree.
#
# This notebook generates a small ListOps set offline with the LRA generator rules
# (`ssmjax.data.listops`), prints a few examples as trees, trains a small S5 briefly and
# plots its learning curve next to the published full-scale accuracies, and ends with the
# exact commands for the full LRA run.
#
# **Runs on** CPU, a Colab T4 or any GPU; nothing is downloaded except the package.
# **Time:** 73 s at full size on a 2-core CPU (measured top to bottom, on a machine shared
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
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import ssmjax as sj
import ssmjax.data
import ssmjax.train
from ssmjax.data import listops

if "ipykernel" not in sys.modules and not os.environ.get("DISPLAY"):
    matplotlib.use("Agg")  # run as a plain script without a display: no windows
SMOKE = os.environ.get("SMOKE", "") not in ("", "0")
NOTEBOOK_START = time.perf_counter()
print(f"ssmjax {sj.__version__}, jax {jax.__version__}, devices {jax.devices()}, SMOKE={SMOKE}")

# %% [markdown]
# ## Generate a small ListOps set
#
# `generate_listops` writes `basic_{train,val,test}.tsv` in the official LRA format plus a
# `generation.json` manifest. The LRA settings are trees of depth ≤ 10 with ≤ 10 arguments
# per operator and 500-2000 tokens; to train in minutes on a CPU we keep the tree rules
# and draw much shorter expressions.

# %%
NUM_TRAIN, NUM_EVAL = (200, 100) if SMOKE else (4000, 500)
MIN_TOKENS, MAX_TOKENS = (10, 40) if SMOKE else (20, 128)
data_dir = tempfile.mkdtemp(prefix="listops-")
start = time.perf_counter()
paths = listops.generate_listops(
    data_dir,
    num_train=NUM_TRAIN,
    num_val=NUM_EVAL,
    num_test=NUM_EVAL,
    min_length=MIN_TOKENS,
    max_length=MAX_TOKENS,
    workers=1,
    progress=False,
)
print(f"generated {NUM_TRAIN + 2 * NUM_EVAL} examples in {time.perf_counter() - start:.1f} s")
manifest = json.loads(paths["manifest"].read_text())
for info in manifest["splits"].values():
    print(f"  {info['file']}: {info['examples']} examples, labels {info['label_counts']}")

# %% [markdown]
# ## Examples as trees
#
# On disk an expression is written as left-nested pairs (`( ( [MAX 2 ) 9 ) ] )`); the
# tokenizer drops the parentheses and turns `]` into `X`. `listops.parse` gives the tree and
# `listops.evaluate` its value, which is the label.


# %%
def tree_lines(tree, prefix=""):
    """The lines of a ListOps tree, each operator annotated with its value."""
    if isinstance(tree, int):
        return []
    lines = []
    children = tree[1:]
    for i, child in enumerate(children):
        last = i == len(children) - 1
        branch, extend = ("└─ ", "   ") if last else ("├─ ", "│  ")
        if isinstance(child, int):
            lines.append(f"{prefix}{branch}{child}")
        else:
            lines.append(f"{prefix}{branch}{child[0]} = {listops.evaluate(child)}")
            lines += tree_lines(child, prefix + extend)
    return lines


sources, labels = listops.read_tsv(paths["train"])
by_length = sorted(range(len(sources)), key=lambda i: len(listops.tokenize(sources[i])))
for i in (by_length[0], by_length[len(by_length) // 10], by_length[len(by_length) // 4]):
    tree = listops.parse(sources[i])
    tokens = listops.tokenize(sources[i])
    print(f"on disk : {sources[i]}")
    print(f"tokens  : {' '.join(tokens)}   ({len(tokens)} tokens)")
    print(f"label   : {labels[i]}   (evaluate: {listops.evaluate(tree)})")
    print(f"{tree[0]} = {listops.evaluate(tree)}")
    print("\n".join(tree_lines(tree)), end="\n\n")

# %% [markdown]
# ## Load it like the real LRA data
#
# `ssmjax.data.load_listops(data_dir)` reads the official files and regenerated ones alike
# (uint8 token ids, 0 = padding, lengths for the mask).

# %%
MAX_LEN = 64 if SMOKE else 128
dataset = sj.data.load_listops(data_dir, max_len=MAX_LEN, cache=False)
print(dataset.info["provenance"][:120])
print({s: getattr(dataset, s).inputs.shape for s in ("train", "val", "test")})
majority = np.bincount(dataset.test.labels, minlength=10).max() / len(dataset.test.labels)

fig, axes = plt.subplots(1, 2, figsize=(11, 3))
axes[0].hist(dataset.train.lengths, bins=30)
axes[0].set(xlabel="tokens", ylabel="examples", title="training sequence lengths")
axes[1].bar(range(10), np.bincount(dataset.train.labels, minlength=10))
axes[1].set(xlabel="label (value of the expression)", ylabel="examples", title="labels")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Train a small S5
#
# The layer settings of S5's ListOps run (bidirectional, block-diagonal HiPPO-N init,
# `BfastandCdecay` optimizer groups, `half_glu2` blocks) at a fraction of its size
# (the published model has 8 layers of width 128 and trains 40 epochs on 96,000 sequences
# of 500-2000 tokens). `train_and_evaluate` runs in a background thread while the cell
# redraws the curves from `workdir/metrics.jsonl`. The dashed lines are the **published
# full-scale test accuracies** (LRA ListOps, from the papers; not computed here) — the
# point of the plot is the gap between minutes on a CPU and the full benchmark.

# %%
from ssmjax.optim import OptimConfig
from ssmjax.train import Config, DataConfig, ModelConfig, TrainConfig

PUBLISHED = {"S5": 62.15, "LRU": 60.2, "S4": 59.60, "Transformer": 36.37}  # test %, full LRA
EPOCHS = 1 if SMOKE else 5
config = Config(
    name="listops-s5-small",
    model=ModelConfig(
        layer="s5",
        d_model=16 if SMOKE else 64,
        n_layers=1 if SMOKE else 4,
        activation="half_glu2",
        bn_momentum=0.95,
        layer_kwargs={"d_state": 16, "blocks": 4, "bidirectional": True, "c_init": "lecun_normal"},
    ),
    data=DataConfig(
        name="listops",
        kwargs={"data_dir": data_dir, "max_len": MAX_LEN},
        batch_size=20 if SMOKE else 32,
        eval_batch_size=250,
    ),
    optim=OptimConfig(lr=3e-3, ssm_lr=1e-3, weight_decay=0.04, preset="BfastandCdecay"),
    train=TrainConfig(
        epochs=EPOCHS, warmup_epochs=0 if SMOKE else 1, log_every=5 if SMOKE else 25, progress=False
    ),
)
workdir = tempfile.mkdtemp(prefix="listops-s5-")


# %%
def read_curves(workdir):
    """Train and validation records of ``metrics.jsonl`` (empty while it is being created)."""
    try:
        return sj.train.read_metrics(workdir, "train"), sj.train.read_metrics(workdir, "val")
    except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or a line half written
        return [], []


def draw(axes, workdir):
    train, val = read_curves(workdir)
    for ax in axes:
        ax.clear()
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if train:
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r["loss"] for r in train], label="train")
        axes[1].plot(steps, [100 * r["accuracy"] for r in train], label="train (this run)")
    if val:
        steps = [r["step"] for r in val]
        axes[0].plot(steps, [r["loss"] for r in val], "o-", label="validation")
        axes[1].plot(steps, [100 * r["accuracy"] for r in val], "o-", label="validation (this run)")
    for i, (model, acc) in enumerate(PUBLISHED.items()):
        axes[1].axhline(acc, ls="--", lw=1, color=f"C{i + 2}", label=f"{model}: {acc} (published)")
    axes[1].axhline(100 * majority, ls=":", color="k", lw=1, label="majority class (this data)")
    axes[0].set_ylabel("cross-entropy")
    axes[1].set(ylabel="accuracy, %", ylim=(0, 100))
    if train or val:
        axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7, loc="upper left", ncol=2)


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
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
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
    f"best validation accuracy {100 * summary['best_val_accuracy']:.1f}%, "
    f"test accuracy there {100 * summary['test_accuracy_at_best_val']:.1f}% "
    f"(majority class {100 * majority:.1f}%)"
)

# %% [markdown]
# ## The full LRA run
#
# **Data.** LRA's ListOps files (`listops-1000/basic_{train,val,test}.tsv`, 96,000 / 2,000 /
# 2,000 examples) come inside the LRA release archive `lra_release.gz` from Google's
# `long-range-arena` storage bucket (about 7.7 GB, reported to answer HTTP 403 lately).
# ssmjax can instead regenerate a set with the same generator rules and the same format
# offline (same distribution, different examples). `load_listops` accepts either: a folder
# that holds the three TSVs (or the LRA layout `lra_release/listops-1000` under it), given
# as `data_dir`; without `data_dir` it looks in `$SSMJAX_DATA/listops` (default
# `~/.cache/ssmjax/listops`).
#
# **Commands** (from a clone of the repository, where `experiments/` lives; the config is
# S5's published ListOps setting, 40 epochs, on a GPU):

# %%
DIR = "data/listops"
print(f"python -m ssmjax.data.generate listops --out {DIR}")
print(
    "python -m experiments.train --config experiments/configs/lra/listops.py:s5 "
    f"--workdir runs/listops-s5 --config.data.kwargs.data_dir={DIR}"
)
print(f"\nnotebook wall time: {time.perf_counter() - NOTEBOOK_START:.0f} s")
