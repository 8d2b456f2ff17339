"""Datasets for LRA and sequential-image tasks, with one interface and a batching iterator."""

from ssmjax.data._dataset import Dataset as Dataset
from ssmjax.data._dataset import Split as Split
from ssmjax.data._dataset import cache_dir as cache_dir
from ssmjax.data._dataset import iterate_batches as iterate_batches
from ssmjax.data._dataset import num_batches as num_batches
from ssmjax.data.images import load_digits as load_digits
from ssmjax.data.images import load_image as load_image
from ssmjax.data.images import load_psmnist as load_psmnist
from ssmjax.data.images import load_scifar as load_scifar
from ssmjax.data.images import load_scifar_gray as load_scifar_gray
from ssmjax.data.images import load_smnist as load_smnist
from ssmjax.data.listops import load_listops as load_listops
from ssmjax.data.mnist1d import load_mnist1d as load_mnist1d
from ssmjax.data.registry import load as load
from ssmjax.data.retrieval import load_retrieval as load_retrieval
from ssmjax.data.text import load_text as load_text
