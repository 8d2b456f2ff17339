"""LRA Retrieval (AAN): two documents of 4000 bytes each, 2 classes, dual encoder.

Needs ``lra_release/tsv_data`` (not redistributable). Variants: s5 s4 s4d lru mamba gla,
each with ``_smoke``. Published targets (test %): S5 91.40, S4 90.90, LRU 89.9.
"""

from experiments.configs._builders import S4Row, S5Row, select, variants
from ssmjax.train import DataConfig

DATA = DataConfig(name="retrieval", kwargs={"variant": "lra"}, buckets=(1024, 2048, 4000))
S5 = S5Row(
    depth=6,
    d_model=128,
    ssm_size=256,
    blocks=16,
    batch=32,
    ssm_lr=1e-3,
    lr=2e-3,
    wd=0.05,
    epochs=20,
    dropout=0.0,
    c_init="trunc_standard_normal",
    activation="half_glu1",
    preset="standard",
    dt_global=True,
)
S4 = S4Row(
    depth=6,
    d_model=256,
    d_state=4,
    prenorm=True,
    dropout=0.0,
    batch=64,
    lr=0.01,
    wd=0.05,
    epochs=20,
    dt_global=True,
)


def get_config(arg=None):
    return select(
        "retrieval",
        arg,
        variants("retrieval", DATA, S5, S4, lru_epochs=20, selective_epochs=20, selective_batch=32),
    )
