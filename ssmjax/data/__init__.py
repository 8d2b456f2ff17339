"""Datasets for LRA and sequential-image tasks, with one interface and a batching iterator."""

from ssmjax.data._dataset import Dataset as Dataset
from ssmjax.data._dataset import Split as Split
from ssmjax.data._dataset import cache_dir as cache_dir
from ssmjax.data._dataset import iterate_batches as iterate_batches
from ssmjax.data._dataset import num_batches as num_batches
from ssmjax.data.mnist1d import load_mnist1d as load_mnist1d
from ssmjax.data.registry import load as load
