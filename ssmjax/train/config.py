"""Typed, frozen experiment configs and dotted command-line overrides."""

import ast
import dataclasses
import json
from typing import Any

from ssmjax.optim import OptimConfig

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "config_to_dict",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The classifier (see :class:`ssmjax.models.SequenceClassifier`).

    Attributes:
      layer: registered layer name (``"s5"``, ``"s4"``, ``"s4d"``, ``"lru"``, ``"mamba"``...).
      d_model: width.
      n_layers: residual blocks.
      pooling: ``"mean"`` or ``"last"``.
      norm: ``"batch"``, ``"layer"``, ``"rms"`` or ``"none"``.
      prenorm: pre- or post-norm.
      activation: block output variant.
      dropout: dropout rate.
      bn_momentum: BatchNorm momentum.
      layer_kwargs: keyword arguments of the layer (``d_state``, ``bidirectional``, ...).
    """

    layer: str = "s5"
    d_model: int = 64
    n_layers: int = 4
    pooling: str = "mean"
    norm: str = "batch"
    prenorm: bool = True
    activation: str = "half_glu2"
    dropout: float = 0.0
    bn_momentum: float = 0.9
    layer_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which task and how to batch it.

    Attributes:
      name: dataset name for :func:`ssmjax.data.load`.
      kwargs: keyword arguments of the loader (``data_dir``, ...).
      batch_size: global training batch size (split over devices).
      eval_batch_size: evaluation batch size.
      buckets: optional padded-length buckets for variable-length tasks.
    """

    name: str = "mnist1d"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 64
    eval_batch_size: int = 256
    buckets: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The loop.

    Attributes:
      seed: model init, dropout and data-order seed.
      epochs: passes over the training set.
      max_steps: stop after this many steps in total (0: no limit) — for smoke tests and
        for splitting a run; the schedule still follows ``epochs``.
      log_every: steps between metric records (and host syncs).
      eval_every: evaluate every this many epochs.
      checkpoint_every: save a checkpoint every this many steps (0: at each evaluation).
      keep_checkpoints: how many recent checkpoints to keep.
      progress: show a tqdm progress bar.
      devices: how many local devices to shard the batch over (0: all).
      warmup_epochs: learning-rate warmup in epochs (used when ``optim.warmup_steps`` is 0).
    """

    seed: int = 0
    epochs: int = 10
    warmup_epochs: float = 0.0
    max_steps: int = 0
    log_every: int = 50
    eval_every: int = 1
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True
    devices: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """A whole experiment: ``model``, ``data``, ``optim`` and ``train``."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    name: str = ""


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text.lower() in ("none", "null"):
            return None
        return text


def _set(obj, keys: list[str], value, full: str):
    key, rest = keys[0], keys[1:]
    if isinstance(obj, dict):
        new = dict(obj)
        new[key] = _set(obj[key], rest, value, full) if rest else value
        return new
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"override {full!r}: {key!r} is not a config field")
    names = {f.name: f for f in dataclasses.fields(obj)}
    if key not in names:
        raise ValueError(f"override {full!r}: unknown field {key!r}; fields: {sorted(names)}")
    if rest:
        value = _set(getattr(obj, key), rest, value, full)
    else:
        current = getattr(obj, key)
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        elif current is not None and value is not None and not isinstance(value, type(current)):
            raise ValueError(f"override {full!r}: expected {type(current).__name__}, got {value!r}")
    return dataclasses.replace(obj, **{key: value})


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Applies ``["model.d_model=64", "model.layer_kwargs.d_state=32", ...]``.

    Values are Python literals (``64``, ``1e-3``, ``True``, ``"s4"``, ``(64, 128)``); bare
    words are strings. A key inside a dict field (``layer_kwargs``) may be new.

    >>> c = apply_overrides(Config(), ["model.d_model=32", "optim.lr=0.01"])
    >>> c.model.d_model, c.optim.lr
    (32, 0.01)
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.path=value")
        path, text = item.split("=", 1)
        keys = path.strip().removeprefix("config.").split(".")
        config = _set(config, keys, _parse_value(text.strip()), item)
    # Re-run validation of the changed dataclasses (OptimConfig checks its preset...).
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model),
        data=dataclasses.replace(config.data),
        optim=dataclasses.replace(config.optim),
        train=dataclasses.replace(config.train),
    )


def config_to_dict(config: Config) -> dict:
    """A JSON-serialisable dict of the config (written next to the checkpoints)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
