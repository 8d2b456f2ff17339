"""LRA Path-X: Pathfinder at 128x128 = 16384 pixels, 2 classes.

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S5 98.58, S4 96.35, LRU 94.2. dt_min is 1e-4 as in S4 and S5.
"""

from experiments.configs._builders import S4Row, S5Row, select, variants
from ssmjax.train import DataConfig

DATA = DataConfig(name="pathx", kwargs={})
S5 = S5Row(
    depth=6,
    d_model=128,
    ssm_size=256,
    blocks=16,
    batch=32,
    ssm_lr=6e-4,
    lr=1.8e-3,
    wd=0.06,
    epochs=75,
    dropout=0.0,
    c_init="complex_normal",
    activation="half_glu1",
    preset="BandCdecay",
    bn_momentum=0.9,
    dt_min=1e-4,
)
S4 = S4Row(
    depth=6,
    d_model=256,
    d_state=64,
    prenorm=True,
    dropout=0.0,
    batch=16,
    lr=0.001,
    wd=0.05,
    epochs=50,
    dt_global=False,
    n_ssm=None,
    dt_min=1e-4,
)


def get_config(arg=None):
    return select(
        "pathx",
        arg,
        variants("pathx", DATA, S5, S4, lru_epochs=50, selective_epochs=50, selective_batch=16),
    )
