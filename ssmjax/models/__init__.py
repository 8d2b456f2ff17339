"""Models built from the layers: classifiers for LRA and sequential images."""

from ssmjax.models.classifier import RetrievalClassifier as RetrievalClassifier
from ssmjax.models.classifier import SequenceClassifier as SequenceClassifier
from ssmjax.models.classifier import masked_pool as masked_pool
from ssmjax.models.language_model import LanguageModel as LanguageModel
