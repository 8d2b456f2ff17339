"""Training: configs, the loop (``train_and_evaluate``), checkpoints and metrics."""

from ssmjax.train.config import Config as Config
from ssmjax.train.config import DataConfig as DataConfig
from ssmjax.train.config import ModelConfig as ModelConfig
from ssmjax.train.config import TrainConfig as TrainConfig
from ssmjax.train.config import apply_overrides as apply_overrides
from ssmjax.train.loop import TrainingDiverged as TrainingDiverged
from ssmjax.train.loop import build_model as build_model
from ssmjax.train.loop import train_and_evaluate as train_and_evaluate
from ssmjax.train.metrics import read_metrics as read_metrics
