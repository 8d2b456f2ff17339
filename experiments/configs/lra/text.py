"""LRA Text: byte-level IMDb, 4096 tokens, 2 classes (download: aclImdb_v1.tar.gz).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S5 89.31, S4 86.82, LRU 89.4 (models.md section 2).
"""

from experiments.configs._builders import S4Row, S5Row, select, variants
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
        variants("text", DATA, S5, S4, lru_epochs=35, selective_epochs=32, selective_batch=16),
    )
