"""MNIST-1D (10 classes, length 40, generated offline by the ``mnist1d`` package).

Variants: ``s5`` (default, the README's main job), ``s4d``, ``lru``, ``mamba``, ``smoke``.
"""

from ssmjax.optim import OptimConfig
from ssmjax.train import Config, DataConfig, ModelConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
    variant = arg or "s5"
    data = DataConfig(name="mnist1d", batch_size=64, eval_batch_size=500)
    model = ModelConfig(
        layer="s5",
        d_model=64,
        n_layers=4,
        norm="batch",
        prenorm=True,
        activation="half_glu2",
        dropout=0.1,
        layer_kwargs={"d_state": 32, "blocks": 4, "bidirectional": True},
    )
    optim = OptimConfig(lr=4e-3, ssm_lr=2e-3, weight_decay=0.05, preset="standard")
    train = TrainConfig(epochs=60, warmup_epochs=2, log_every=20)
    if variant == "s5":
        pass
    elif variant == "s4d":
        model = ModelConfig(
            layer="s4d",
            d_model=64,
            n_layers=4,
            activation="glu",
            dropout=0.1,
            layer_kwargs={"d_state": 32, "bidirectional": True},
        )
    elif variant == "lru":
        model = ModelConfig(
            layer="lru",
            d_model=64,
            n_layers=4,
            activation="full_glu",
            dropout=0.1,
            layer_kwargs={"d_hidden": 32, "bidirectional": True, "r_min": 0.5},
        )
        optim = OptimConfig(lr=4e-3, ssm_lr=2e-3, weight_decay=0.05, preset="lru")
    elif variant == "mamba":
        model = ModelConfig(
            layer="mamba",
            d_model=64,
            n_layers=4,
            norm="layer",
            activation="none",
            dropout=0.1,
            layer_kwargs={"bidirectional": True},
        )
    elif variant == "smoke":
        model = ModelConfig(layer="s5", d_model=8, n_layers=1, layer_kwargs={"d_state": 4})
        train = TrainConfig(epochs=1, max_steps=2, log_every=1, progress=False)
    else:
        raise ValueError(f"unknown mnist1d variant {variant!r}")
    return Config(model=model, data=data, optim=optim, train=train, name=f"mnist1d-{variant}")
