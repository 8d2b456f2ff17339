"""``ssmjax.data.load(name, **kwargs)``: every task by name."""

import importlib
from collections.abc import Callable

from ssmjax.data._dataset import Dataset

__all__ = ["available", "load", "register_dataset"]

# Built-in tasks, imported on first use: name -> "module:function".
_BUILTIN = {
    "listops": "ssmjax.data.listops:load_listops",
    "mnist1d": "ssmjax.data.mnist1d:load_mnist1d",
    "text": "ssmjax.data.text:load_text",
    "retrieval": "ssmjax.data.retrieval:load_retrieval",
    "image": "ssmjax.data.images:load_image",
    "scifar": "ssmjax.data.images:load_scifar",
    "scifar_gray": "ssmjax.data.images:load_scifar_gray",
    "smnist": "ssmjax.data.images:load_smnist",
    "psmnist": "ssmjax.data.images:load_psmnist",
    "digits": "ssmjax.data.images:load_digits",
    "pathfinder": "ssmjax.data.pathfinder:load_pathfinder",
    "pathx": "ssmjax.data.pathfinder:load_pathx",
}
_LOADERS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str, loader: Callable[..., Dataset]) -> None:
    """Makes ``load(name, **kwargs)`` call ``loader(**kwargs)``."""
    _LOADERS[name] = loader


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(set(_BUILTIN) | set(_LOADERS))


def load(name: str, **kwargs) -> Dataset:
    """Loads a task by name (``"mnist1d"``, ``"listops"``, ...).

    >>> load("nonexistent")
    Traceback (most recent call last):
    ...
    ValueError: unknown dataset 'nonexistent'; available: [...]
    """
    if name in _LOADERS:
        return _LOADERS[name](**kwargs)
    if name in _BUILTIN:
        module, fn = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), fn)(**kwargs)
    raise ValueError(f"unknown dataset {name!r}; available: {available()}")
