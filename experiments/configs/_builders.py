"""Builds per-model variants of a task config from the published hyperparameter tables.

Sources (``shared/reference/models.md`` section 3): S5's ``run_lra_*.sh`` scripts (3.1), S4's
current ``configs/experiment/lra/s4-*.yaml`` (3.2), minimal-LRU's defaults (3.4). Mamba and GLA
never published LRA settings; their variants are ssmjax's choice, documented where used.
"""

import dataclasses

from ssmjax.optim import OptimConfig
from ssmjax.train import Config, DataConfig, ModelConfig, TrainConfig

MODELS = ("s5", "s4", "s4d", "lru", "mamba", "gla")


@dataclasses.dataclass(frozen=True, kw_only=True)
class S5Row:
    """One row of S5's LRA table."""

    depth: int
    d_model: int
    ssm_size: int
    blocks: int
    batch: int
    ssm_lr: float
    lr: float
    wd: float
    epochs: int
    dropout: float
    c_init: str
    activation: str
    preset: str
    warmup: float = 1.0
    dt_global: bool = False
    clip_eigs: bool = False
    bn_momentum: float = 0.95
    dt_min: float = 1e-3


@dataclasses.dataclass(frozen=True, kw_only=True)
class S4Row:
    """One row of S4's current LRA configs (warmup is 10% of the steps)."""

    depth: int
    d_model: int
    d_state: int
    prenorm: bool
    dropout: float
    batch: int
    lr: float
    wd: float
    epochs: int
    dt_global: bool
    n_ssm: int | None = 1
    dt_min: float = 1e-3


def s5_config(name: str, data: DataConfig, row: S5Row) -> Config:
    layer_kwargs = {
        "d_state": row.ssm_size,
        "blocks": row.blocks,
        "bidirectional": True,
        "c_init": row.c_init,
        "clip_eigs": row.clip_eigs,
        "dt_min": row.dt_min,
    }
    return Config(
        name=name,
        model=ModelConfig(
            layer="s5",
            d_model=row.d_model,
            n_layers=row.depth,
            norm="batch",
            prenorm=True,
            activation=row.activation,
            dropout=row.dropout,
            bn_momentum=row.bn_momentum,
            layer_kwargs=layer_kwargs,
        ),
        data=dataclasses.replace(data, batch_size=row.batch),
        optim=OptimConfig(
            lr=row.lr,
            ssm_lr=row.ssm_lr,
            weight_decay=row.wd,
            preset=row.preset,
            dt_global=row.dt_global,
        ),
        train=TrainConfig(epochs=row.epochs, warmup_epochs=row.warmup),
    )


def s4_config(name: str, data: DataConfig, row: S4Row, layer: str = "s4") -> Config:
    layer_kwargs = {"d_state": row.d_state, "bidirectional": True, "dt_min": row.dt_min}
    if layer == "s4":
        layer_kwargs |= {"n_ssm": row.n_ssm, "l_max": None}
    else:  # S4D-LegS: S4's diagonal mode with its default init
        layer_kwargs |= {"init": "legs"}
    return Config(
        name=name,
        model=ModelConfig(
            layer=layer,
            d_model=row.d_model,
            n_layers=row.depth,
            norm="batch",
            prenorm=row.prenorm,
            activation="glu",
            dropout=row.dropout,
            layer_kwargs=layer_kwargs,
        ),
        data=dataclasses.replace(data, batch_size=row.batch),
        optim=OptimConfig(
            lr=row.lr, ssm_lr=1e-3, weight_decay=row.wd, preset="s4", dt_global=row.dt_global
        ),
        train=TrainConfig(epochs=row.epochs, warmup_epochs=0.1 * row.epochs),
    )


def lru_config(name: str, data: DataConfig, epochs: int, **layer) -> Config:
    """minimal-LRU defaults: 4 layers, H 256, N 128, batch 64, lr 1e-3 (SSM 0.5x), wd 0.05,
    dropout 0.1, BatchNorm, prenorm. The paper's per-task r_min/r_max are unverified; the
    ring defaults are used unless a task passes its own."""
    return Config(
        name=name,
        model=ModelConfig(
            layer="lru",
            d_model=256,
            n_layers=4,
            norm="batch",
            prenorm=True,
            activation="full_glu",
            dropout=0.1,
            layer_kwargs={"d_hidden": 128, "bidirectional": True, **layer},
        ),
        data=dataclasses.replace(data, batch_size=64),
        optim=OptimConfig(lr=1e-3, ssm_lr=5e-4, weight_decay=0.05, preset="lru"),
        train=TrainConfig(epochs=epochs, warmup_epochs=1),
    )


def selective_config(
    name: str,
    data: DataConfig,
    layer: str,
    epochs: int,
    d_model=128,
    depth=6,
    batch=32,
    **layer_kwargs,
) -> Config:
    """Mamba / GLA on LRA (ssmjax's choice; no published settings): bidirectional layers
    with per-sequence reversal, pre-LayerNorm residual blocks without an extra output gate
    (both layers gate internally), AdamW lr 1e-3 with wd 0.05 and no decay on A_log, D,
    dt_bias, 10% warmup then cosine."""
    return Config(
        name=name,
        model=ModelConfig(
            layer=layer,
            d_model=d_model,
            n_layers=depth,
            norm="layer",
            prenorm=True,
            activation="none",
            dropout=0.0,
            layer_kwargs={"bidirectional": True, **layer_kwargs},
        ),
        data=dataclasses.replace(data, batch_size=batch),
        optim=OptimConfig(lr=1e-3, ssm_lr=1e-3, weight_decay=0.05, grad_clip=1.0),
        train=TrainConfig(epochs=epochs, warmup_epochs=0.1 * epochs),
    )


def smoke(config: Config) -> Config:
    """The same task and layer, shrunk to seconds: two steps of a one-block width-8 model."""
    kwargs = dict(config.model.layer_kwargs)
    for key, value in (("d_state", 4), ("d_hidden", 4), ("blocks", 1), ("headdim", 4)):
        if key in kwargs:
            kwargs[key] = value
    if config.model.layer in ("mamba", "mamba2"):
        kwargs["d_state"] = 4
    if config.model.layer == "gla":
        kwargs["num_heads"] = 2
    return dataclasses.replace(
        config,
        name=config.name + "-smoke",
        model=dataclasses.replace(config.model, d_model=8, n_layers=1, layer_kwargs=kwargs),
        data=dataclasses.replace(config.data, batch_size=2, eval_batch_size=4),
        train=TrainConfig(epochs=1, max_steps=2, log_every=1, progress=False, devices=1),
    )


def select(name: str, arg: str | None, builders: dict) -> Config:
    """``arg`` is ``"<model>"`` or ``"<model>_smoke"`` / ``"smoke"`` (= the first model)."""
    arg = arg or next(iter(builders))
    is_smoke = arg == "smoke" or arg.endswith("_smoke")
    model = arg.removesuffix("_smoke") if arg != "smoke" else next(iter(builders))
    if model not in builders:
        raise ValueError(
            f"{name}: unknown variant {arg!r}; choose from {sorted(builders)} "
            "(append _smoke for a two-step run)"
        )
    config = builders[model]()
    return smoke(config) if is_smoke else config


def variants(
    task: str,
    data: DataConfig,
    s5: S5Row,
    s4: S4Row,
    *,
    lru_epochs: int,
    selective_epochs: int,
    selective_batch: int = 32,
) -> dict:
    """The six model variants of a task, from its S5 and S4 rows (LRU and Mamba/GLA as
    documented in :func:`lru_config` and :func:`selective_config`)."""
    return {
        "s5": lambda: s5_config(f"{task}-s5", data, s5),
        "s4": lambda: s4_config(f"{task}-s4", data, s4),
        "s4d": lambda: s4_config(f"{task}-s4d", data, s4, layer="s4d"),
        "lru": lambda: lru_config(f"{task}-lru", data, epochs=lru_epochs),
        "mamba": lambda: selective_config(
            f"{task}-mamba", data, "mamba", epochs=selective_epochs, batch=selective_batch
        ),
        "gla": lambda: selective_config(
            f"{task}-gla", data, "gla", epochs=selective_epochs, batch=selective_batch
        ),
    }


def image_rows(epochs: int) -> tuple[S5Row, S4Row]:
    """The LRA Image rows of S5 and S4 with another number of epochs (the sequential-image
    tasks reuse them: their own settings are not in the reference tables)."""
    s5 = S5Row(
        depth=6,
        d_model=512,
        ssm_size=384,
        blocks=3,
        batch=50,
        ssm_lr=1e-3,
        lr=4.5e-3,
        wd=0.07,
        epochs=epochs,
        dropout=0.1,
        c_init="lecun_normal",
        activation="half_glu1",
        preset="BfastandCdecay",
        clip_eigs=True,
    )
    s4 = S4Row(
        depth=6,
        d_model=512,
        d_state=64,
        prenorm=False,
        dropout=0.1,
        batch=50,
        lr=0.01,
        wd=0.05,
        epochs=epochs,
        dt_global=False,
    )
    return s5, s4
