"""The training loop: exact resume, data parallelism, divergence handling, configs."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from ssmjax.data import Dataset, Split
from ssmjax.data.registry import register_dataset
from ssmjax.optim import OptimConfig
from ssmjax.train import (
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    TrainingDiverged,
    apply_overrides,
    read_metrics,
    train_and_evaluate,
)

pytestmark = pytest.mark.usefixtures("fast_compile")  # (compile-bound tiny training runs)


def _toy(n=96, length=12, seed=0, nan_from=None, tokens=False):
    """A learnable toy task: the label is whether the sequence's sum is positive."""
    rng = np.random.default_rng(seed)

    def split(n):
        if tokens:
            x = rng.integers(1, 9, size=(n, length))
            lengths = rng.integers(length // 2, length + 1, size=n)
            x = np.where(np.arange(length) < lengths[:, None], x, 0)
            y = (np.sum(x, 1) > 4.5 * lengths).astype(np.int32)
            return Split(x.astype(np.int32), y, lengths)
        x = rng.normal(size=(n, length, 2)).astype(np.float32)
        y = (x.sum((1, 2)) > 0).astype(np.int32)
        return Split(x, y)

    train = split(n)
    if nan_from is not None:
        train.inputs[nan_from:] = np.nan
    kwargs = {"vocab_size": 9} if tokens else {"d_input": 2}
    return Dataset("toy", train, split(32), split(32), num_classes=2, seq_len=length, **kwargs)


REPO = Path(__file__).resolve().parents[2]

register_dataset("toy", _toy)
register_dataset("toy_tokens", lambda **kw: _toy(tokens=True, **kw))


def small_config(**train_kwargs) -> Config:
    return Config(
        model=ModelConfig(
            layer="s5",
            d_model=8,
            n_layers=2,
            dropout=0.1,
            layer_kwargs={"d_state": 8, "bidirectional": True},
        ),
        data=DataConfig(name="toy", batch_size=8, eval_batch_size=16),
        optim=OptimConfig(lr=3e-3, ssm_lr=1e-3),
        train=TrainConfig(epochs=2, log_every=1, progress=False, devices=1, **train_kwargs),
    )


def losses(workdir):
    return [r["loss"] for r in read_metrics(workdir, "train")]


def test_resume_continues_exactly(tmp_path):
    """N steps, stop, resume for M more == N + M steps straight (same losses)."""
    straight = train_and_evaluate(small_config(max_steps=17), tmp_path / "straight")
    train_and_evaluate(small_config(max_steps=7), tmp_path / "split")  # stops mid-epoch
    resumed = train_and_evaluate(small_config(max_steps=17), tmp_path / "split")
    assert resumed["steps"] == straight["steps"] == 17
    np.testing.assert_allclose(losses(tmp_path / "split"), losses(tmp_path / "straight"), rtol=1e-6)
    assert resumed["final"]["test"] == straight["final"]["test"]


def test_one_device_vs_four_devices(tmp_path):
    if len(jax.local_devices()) < 4:
        pytest.skip("needs 4 (forced) CPU devices")
    one = small_config(max_steps=10)
    four = dataclasses.replace(one, train=dataclasses.replace(one.train, devices=4))
    a = train_and_evaluate(one, tmp_path / "one")
    b = train_and_evaluate(four, tmp_path / "four")
    assert a["devices"] == 1 and b["devices"] == 4
    np.testing.assert_allclose(losses(tmp_path / "one"), losses(tmp_path / "four"), rtol=2e-4)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = small_config(checkpoint_every=4)
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, kwargs={"nan_from": 0}),
        train=dataclasses.replace(config.train, epochs=1),
    )
    # Shuffled batches mix NaN inputs in from the first step: nothing good to keep.
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train_and_evaluate(config, tmp_path / "nan")
    assert not (tmp_path / "nan" / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "nan" / "checkpoints").iterdir()
    )


def test_padded_token_task_and_learning(tmp_path):
    config = small_config()
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, name="toy_tokens"),
        train=dataclasses.replace(config.train, epochs=6, log_every=12),
    )
    summary = train_and_evaluate(config, tmp_path / "tokens")
    records = read_metrics(tmp_path / "tokens", "train")
    assert records[-1]["loss"] < records[0]["loss"]
    assert summary["num_params"] > 0
    saved = json.loads((tmp_path / "tokens" / "config.json").read_text())
    assert saved["data"]["name"] == "toy_tokens"
    assert {"lr_ssm", "lr_regular"} <= set(records[-1])


def test_overrides():
    config = apply_overrides(
        small_config(),
        [
            "model.layer_kwargs.d_state=4",
            "optim.preset=noBCdecay",
            "train.epochs=3",
            "data.buckets=(8, 12)",
        ],
    )
    assert config.model.layer_kwargs["d_state"] == 4
    assert config.optim.preset == "noBCdecay"
    assert config.data.buckets == (8, 12)
    with pytest.raises(ValueError, match="unknown field"):
        apply_overrides(config, ["model.width=3"])
    with pytest.raises(ValueError, match="unknown optimizer preset"):
        apply_overrides(config, ["optim.preset=sgd"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(config, ["model.d_model=wide"])


def test_checkpoint_restores_in_a_fresh_process(tmp_path):
    """Stop after 2 steps, resume in a new Python process: same losses as 4 steps straight."""
    env = {**os.environ, "SSMJAX_DATA": str(tmp_path / "data"), "JAX_PLATFORMS": "cpu"}
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # (the fast_compile fixture's setting)
    base = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        "experiments/configs/mnist1d.py:s5_smoke",
        "--config.model.dropout=0.1",
        # 400 train / 100 test examples (the default 5000 take seconds to generate): still
        # 200 steps an epoch, so the 2-step run stops mid-epoch
        "--config.data.kwargs.num_samples=500",
    ]

    def run(workdir, steps):
        subprocess.run(
            [*base, "--workdir", str(workdir), f"--config.train.max_steps={steps}"],
            check=True,
            env=env,
            capture_output=True,
            cwd=os.getcwd(),
        )

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4)
    assert len(losses(tmp_path / "resumed")) == 4
    np.testing.assert_allclose(
        losses(tmp_path / "resumed"), losses(tmp_path / "straight"), rtol=1e-6
    )
