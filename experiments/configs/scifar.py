"""Sequential CIFAR-10 in colour: 1024 steps x 3 channels, 10 classes.

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S4 91.13, S5 90.10, LRU 89.0 (models.md section 2.2).
The sequential-image hyperparameters are not in the reference tables: these rows reuse
the LRA Image settings of each model with this task's epochs — an ssmjax choice, not a
published recipe.
"""

from experiments.configs._builders import image_rows, select, variants
from ssmjax.train import DataConfig

DATA = DataConfig(name="scifar")
S5, S4 = image_rows(epochs=200)


def get_config(arg=None):
    return select(
        "scifar",
        arg,
        variants("scifar", DATA, S5, S4, lru_epochs=200, selective_epochs=200, selective_batch=50),
    )
