"""LRA Image: grayscale CIFAR-10 as 1024 pixels, 10 classes (download: CIFAR-10 python).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S5 88.00, S4 88.65, LRU 87.0. The S5 row leaves the activation unstated in the reference
notes; half_glu1 is used.
"""

from experiments.configs._builders import image_rows, select, variants
from ssmjax.train import DataConfig

DATA = DataConfig(name="image", kwargs={"variant": "s4"})
S5, _ = image_rows(epochs=250)
_, S4 = image_rows(epochs=200)


def get_config(arg=None):
    return select(
        "image",
        arg,
        variants("image", DATA, S5, S4, lru_epochs=180, selective_epochs=200, selective_batch=50),
    )
