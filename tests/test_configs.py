"""Every experiment config, in every model variant, builds its model and trains two steps.

The data are small fixtures with each task's real input format (tokens and vocabulary,
pixel channels, document pairs, classes) but short sequences, so the whole matrix runs in
a few minutes on a CPU. The loaders themselves are tested on files in the official
on-disk formats in ``tests/data``.
"""

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest

from experiments.configs._builders import MODELS
from experiments.train import load_config, main
from ssmjax.data import Dataset, Split
from ssmjax.data.registry import register_dataset
from ssmjax.train import train_and_evaluate

CONFIG_DIR = Path(__file__).parents[1] / "experiments" / "configs"
CONFIG_FILES = sorted(
    str(p.relative_to(CONFIG_DIR.parents[1]))
    for p in CONFIG_DIR.rglob("*.py")
    if not p.name.startswith("_")
)

# What each task's loader yields (see ssmjax.data): tokens with a vocabulary, or channels.
TASKS = {
    "listops": {"vocab_size": 17, "num_classes": 10},
    "text": {"vocab_size": 257, "num_classes": 2},
    "retrieval": {"vocab_size": 257, "num_classes": 2, "pair": True},
    "image": {"d_input": 1, "num_classes": 10},
    "pathfinder": {"d_input": 1, "num_classes": 2},
    "pathx": {"d_input": 1, "num_classes": 2},
    "smnist": {"d_input": 1, "num_classes": 10},
    "psmnist": {"d_input": 1, "num_classes": 10},
    "scifar": {"d_input": 3, "num_classes": 10},
    "mnist1d": {"d_input": 1, "num_classes": 10},
}


def fixture(task: str, length: int = 24, n: int = 6) -> Dataset:
    spec = TASKS[task]
    rng = np.random.default_rng(0)

    def split():
        labels = rng.integers(0, spec["num_classes"], n).astype(np.int32)
        if "vocab_size" in spec:
            shape = (n, 2, length) if spec.get("pair") else (n, length)
            lengths = rng.integers(length // 2, length + 1, shape[:-1])
            x = rng.integers(1, spec["vocab_size"], shape)
            x = np.where(np.arange(length) < lengths[..., None], x, 0).astype(np.int32)
            return Split(x, labels, lengths)
        return Split(rng.normal(size=(n, length, spec["d_input"])).astype(np.float32), labels)

    kwargs = {k: spec[k] for k in ("vocab_size", "d_input") if k in spec}
    return Dataset(task, split(), split(), split(), spec["num_classes"], length, **kwargs)


for _task in TASKS:
    register_dataset(f"fixture_{_task}", lambda _task=_task, **_: fixture(_task))


pytestmark = pytest.mark.usefixtures("fast_compile")  # (compile-bound: tiny training runs)


CASES = [(f, m) for f in CONFIG_FILES for m in MODELS]


@pytest.mark.parametrize("config_file,model", CASES)
def test_config_trains_two_steps(config_file, model):
    config = load_config(f"{config_file}:{model}_smoke")
    full = load_config(f"{config_file}:{model}")
    assert config.model.layer == full.model.layer == model
    assert full.data.name in TASKS
    assert full.train.epochs >= 1 and full.optim.lr > 0
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, name=f"fixture_{full.data.name}", buckets=None),
    )
    summary = train_and_evaluate(config, workdir=None)
    assert summary["steps"] == 2
    assert np.isfinite(summary["final"]["test"]["loss"])


def test_unknown_variant_is_a_clear_error():
    module = importlib.import_module("experiments.configs.lra.listops")
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("transformer")


def test_cli_overrides_and_workdir(tmp_path, capsys):
    summary = main(
        [
            "--config",
            "experiments/configs/mnist1d.py:s5_smoke",
            "--workdir",
            str(tmp_path / "run"),
            "--config.data.name=fixture_mnist1d",
            "--config.model.d_model=6",
        ]
    )
    assert summary["steps"] == 2
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert "test accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--bogus"])
