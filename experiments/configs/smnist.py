"""Sequential MNIST: 784 pixels in [0, 1], 10 classes (download: MNIST IDX files).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S4 99.63, S5 99.65 (models.md section 2.2).
The sequential-image hyperparameters are not in the reference tables: these rows reuse
the LRA Image settings of each model with this task's epochs — an ssmjax choice, not a
published recipe.
"""

from experiments.configs._builders import (
    S4Row,
    S5Row,
    lru_config,
    s4_config,
    s5_config,
    select,
    selective_config,
)
from ssmjax.train import DataConfig

DATA = DataConfig(name="smnist")
S5 = S5Row(
    depth=6,
    d_model=512,
    ssm_size=384,
    blocks=3,
    batch=50,
    ssm_lr=1e-3,
    lr=4.5e-3,
    wd=0.07,
    epochs=100,
    dropout=0.1,
    c_init="lecun_normal",
    activation="half_glu1",
    preset="BfastandCdecay",
    clip_eigs=True,
)
S4 = S4Row(
    depth=6,
    d_model=512,
    d_state=64,
    prenorm=False,
    dropout=0.1,
    batch=50,
    lr=0.01,
    wd=0.05,
    epochs=100,
    dt_global=False,
)


def get_config(arg=None):
    return select(
        "smnist",
        arg,
        {
            "s5": lambda: s5_config("smnist-s5", DATA, S5),
            "s4": lambda: s4_config("smnist-s4", DATA, S4),
            "s4d": lambda: s4_config("smnist-s4d", DATA, S4, layer="s4d"),
            "lru": lambda: lru_config("smnist-lru", DATA, epochs=100),
            "mamba": lambda: selective_config("smnist-mamba", DATA, "mamba", epochs=100, batch=50),
            "gla": lambda: selective_config("smnist-gla", DATA, "gla", epochs=100, batch=50),
        },
    )
