"""LRA Pathfinder-32: 1024 pixels, 2 classes (regenerate with
``python -m ssmjax.data.generate pathfinder --resolution 32 --difficulty 14 --out DIR``).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S5 95.33, S4 94.20, LRU 95.1.
"""

from experiments.configs._builders import S4Row, S5Row, select, variants
from ssmjax.train import DataConfig

DATA = DataConfig(name="pathfinder", kwargs={"resolution": 32})
S5 = S5Row(
    depth=6,
    d_model=192,
    ssm_size=256,
    blocks=8,
    batch=64,
    ssm_lr=9e-4,
    lr=4.5e-3,
    wd=0.03,
    epochs=200,
    dropout=0.05,
    c_init="trunc_standard_normal",
    activation="half_glu1",
    preset="standard",
    bn_momentum=0.9,
)
S4 = S4Row(
    depth=6,
    d_model=256,
    d_state=64,
    prenorm=True,
    dropout=0.0,
    batch=64,
    lr=0.004,
    wd=0.05,
    epochs=200,
    dt_global=False,
    n_ssm=None,
)


def get_config(arg=None):
    return select(
        "pathfinder",
        arg,
        variants(
            "pathfinder", DATA, S5, S4, lru_epochs=200, selective_epochs=200, selective_batch=32
        ),
    )
