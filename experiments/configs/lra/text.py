"""LRA Text: byte-level IMDb, 4096 tokens, 2 classes (download: aclImdb_v1.tar.gz).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S5 89.31, S4 86.82, LRU 89.4 (models.md section 2).
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

DATA = DataConfig(name="text", kwargs={"variant": "lra"}, buckets=(1024, 2048, 4096))
S5 = S5Row(
    depth=6,
    d_model=256,
    ssm_size=192,
    blocks=12,
    batch=50,
    ssm_lr=1e-3,
    lr=4e-3,
    wd=0.07,
    epochs=35,
    dropout=0.1,
    c_init="lecun_normal",
    activation="half_glu2",
    preset="standard",
    warmup=0,
    dt_global=True,
)
S4 = S4Row(
    depth=6,
    d_model=256,
    d_state=4,
    prenorm=True,
    dropout=0.0,
    batch=16,
    lr=0.01,
    wd=0.05,
    epochs=32,
    dt_global=True,
)


def get_config(arg=None):
    return select(
        "text",
        arg,
        {
            "s5": lambda: s5_config("text-s5", DATA, S5),
            "s4": lambda: s4_config("text-s4", DATA, S4),
            "s4d": lambda: s4_config("text-s4d", DATA, S4, layer="s4d"),
            "lru": lambda: lru_config("text-lru", DATA, epochs=35),
            "mamba": lambda: selective_config("text-mamba", DATA, "mamba", epochs=32, batch=16),
            "gla": lambda: selective_config("text-gla", DATA, "gla", epochs=32, batch=16),
        },
    )
