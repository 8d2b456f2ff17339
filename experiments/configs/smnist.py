"""Sequential MNIST: 784 pixels in [0, 1], 10 classes (download: MNIST IDX files).

Variants: s5 s4 s4d lru mamba gla, each with ``_smoke``. Published targets (test %):
S4 99.63, S5 99.65 (models.md section 2.2).
The sequential-image hyperparameters are not in the reference tables: these rows reuse
the LRA Image settings of each model with this task's epochs — an ssmjax choice, not a
published recipe.
"""

from experiments.configs._builders import image_rows, select, variants
from ssmjax.train import DataConfig

DATA = DataConfig(name="smnist")
S5, S4 = image_rows(epochs=100)


def get_config(arg=None):
    return select(
        "smnist",
        arg,
        variants("smnist", DATA, S5, S4, lru_epochs=100, selective_epochs=100, selective_batch=50),
    )
