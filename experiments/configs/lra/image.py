"""LRA Image: grayscale CIFAR-10 as 1024 pixels, 10 classes (download: CIFAR-10 python).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S5 88.00, S4 88.65, LRU 87.0. The S5 row leaves the activation unstated in the reference
notes; half_glu1 is used.
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

DATA = DataConfig(name="image", kwargs={"variant": "s4"})
S5 = S5Row(
    depth=6,
    d_model=512,
    ssm_size=384,
    blocks=3,
    batch=50,
    ssm_lr=1e-3,
    lr=4.5e-3,
    wd=0.07,
    epochs=250,
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
    epochs=200,
    dt_global=False,
)


def get_config(arg=None):
    return select(
        "image",
        arg,
        {
            "s5": lambda: s5_config("image-s5", DATA, S5),
            "s4": lambda: s4_config("image-s4", DATA, S4),
            "s4d": lambda: s4_config("image-s4d", DATA, S4, layer="s4d"),
            "lru": lambda: lru_config("image-lru", DATA, epochs=180),
            "mamba": lambda: selective_config("image-mamba", DATA, "mamba", epochs=200, batch=50),
            "gla": lambda: selective_config("image-gla", DATA, "gla", epochs=200, batch=50),
        },
    )
