"""LRA ListOps (10 classes, up to 2000 tokens; regenerate with
``python -m ssmjax.data.generate listops --out DIR``).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S5 62.15, S4 59.60, LRU 60.2 (models.md section 2).
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

DATA = DataConfig(name="listops", kwargs={"variant": "lra"}, buckets=(512, 1024, 1536, 2000))
S5 = S5Row(
    depth=8,
    d_model=128,
    ssm_size=16,
    blocks=8,
    batch=50,
    ssm_lr=1e-3,
    lr=3e-3,
    wd=0.04,
    epochs=40,
    dropout=0.0,
    c_init="lecun_normal",
    activation="half_glu2",
    preset="BfastandCdecay",
    warmup=1,
)
S4 = S4Row(
    depth=6,
    d_model=256,
    d_state=4,
    prenorm=False,
    dropout=0.0,
    batch=32,
    lr=0.01,
    wd=0.05,
    epochs=40,
    dt_global=True,
)


def get_config(arg=None):
    return select(
        "listops",
        arg,
        {
            "s5": lambda: s5_config("listops-s5", DATA, S5),
            "s4": lambda: s4_config("listops-s4", DATA, S4),
            "s4d": lambda: s4_config("listops-s4d", DATA, S4, layer="s4d"),
            "lru": lambda: lru_config("listops-lru", DATA, epochs=40),
            "mamba": lambda: selective_config("listops-mamba", DATA, "mamba", epochs=40),
            "gla": lambda: selective_config("listops-gla", DATA, "gla", epochs=40),
        },
    )
