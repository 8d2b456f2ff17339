"""LRA ListOps (10 classes, up to 2000 tokens; regenerate with
``python -m ssmjax.data.generate listops --out DIR``).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S5 62.15, S4 59.60, LRU 60.2 (models.md section 2).
"""

from experiments.configs._builders import S4Row, S5Row, select, variants
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
        variants("listops", DATA, S5, S4, lru_epochs=40, selective_epochs=40, selective_batch=32),
    )
