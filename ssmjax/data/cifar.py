"""CIFAR-10 as sequences: LRA Image, grayscale sCIFAR and colour sCIFAR (see
:mod:`ssmjax.data.images`)."""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np

from ssmjax.data._cache import cached, file_stats
from ssmjax.data._dataset import Dataset, Split, cache_dir
from ssmjax.data.download import download, extract_members
from ssmjax.data.download import verify as verify_file
from ssmjax.data.pixels import (
    _CACHE_VERSION,
    Gray,
    Variant,
    _check_variant,
    _float_splits,
    _split_indices,
    rgb_to_gray,
)

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_FILE_MD5",
    "CIFAR10_MD5",
    "CIFAR10_MIRRORS",
    "CIFAR_GRAY_MEAN",
    "CIFAR_GRAY_STD",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "load_image",
    "load_scifar",
    "load_scifar_gray",
    "read_cifar_batch",
]

# ----------------------------------------------------------------------------- sources

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
"""Where the CIFAR-10 python archive is downloaded from."""
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
"""MD5 of ``cifar-10-python.tar.gz`` (torchvision)."""
CIFAR10_FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
"""MD5 of each file in ``cifar-10-batches-py/`` (torchvision), checked before unpickling."""
CIFAR_GRAY_MEAN, CIFAR_GRAY_STD = 122.6 / 255.0, 61.0 / 255.0
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)


# ----------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of lists and NumPy arrays only (no arbitrary code)."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = _ArrayUnpickler(f, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch as images in sequence order.

    Args:
      path: ``data_batch_<k>`` or ``test_batch`` (a pickled dict with ``data`` uint8
        ``(n, 3072)``, the R, G and B planes of 32x32 row-major, and ``labels``).

    Returns:
      ``pixels`` ``(n, 1024, 3)`` uint8, step ``32 * row + col``, channels R, G, B; and
      ``labels`` ``(n,)`` int32.
    """
    batch = _unpickle(Path(path))
    data = np.asarray(batch["data"], np.uint8)
    labels = np.asarray(batch.get("labels", batch.get("fine_labels")), np.int32)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} and {len(labels)} labels")
    pixels = data.reshape(-1, 3, 32 * 32).transpose(0, 2, 1)
    return np.ascontiguousarray(pixels), labels


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def _is_cifar_folder(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CIFAR10_FILE_MD5)


def _cifar_how_to(root: Path) -> str:
    return (
        f"CIFAR-10 not found in {root}: expected {_CIFAR_DIR}/"
        f"{{{','.join(CIFAR10_FILE_MD5)}}} or the archive {CIFAR10_ARCHIVE} there.\n"
        f"Download {CIFAR10_MIRRORS[0]} (md5 {CIFAR10_MD5}) and put it in\n  {root}\n"
        "(or pass download=True, the default, on a machine with network access). With "
        "data_dir=None the loader uses $SSMJAX_DATA/cifar10 (default ~/.cache/ssmjax/cifar10)."
    )


def _locate_cifar(root: Path, download_: bool, progress: bool) -> Path:
    for folder in (root, root / _CIFAR_DIR):
        if _is_cifar_folder(folder):
            return folder
    archive = root / CIFAR10_ARCHIVE
    if download_:
        download(CIFAR10_MIRRORS, archive, md5=CIFAR10_MD5, progress=progress)
    elif archive.is_file():
        verify_file(archive, md5=CIFAR10_MD5)
    else:
        raise FileNotFoundError(_cifar_how_to(root))
    tmp = root / f".cifar.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extract_members(archive, _CIFAR_DIR, tmp, progress=progress)
        if not _is_cifar_folder(tmp / _CIFAR_DIR):
            raise ValueError(f"{archive} does not hold {_CIFAR_DIR}/ with the seven batch files")
        os.replace(tmp / _CIFAR_DIR, root / _CIFAR_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / _CIFAR_DIR


def _cifar(
    data_dir,
    *,
    pixels: str,
    seed: int,
    val_fraction: float,
    download: bool,
    cache: bool,
    verify: bool,
    progress: bool,
) -> tuple[dict[str, Split], dict]:
    """The uint8 CIFAR-10 splits and the info dict.

    ``pixels="rgb"`` gives inputs ``(n, 1024, 3)``; ``"gray_tf"`` or ``"gray_pil"`` gives
    ``(n, 1024)`` gray levels.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else cache_dir("cifar10")
    folder = _locate_cifar(root, download, progress)
    files = [folder / name for name in CIFAR10_FILE_MD5]
    key = {
        "files": file_stats(files),
        "pixels": pixels,
        "seed": seed,
        "val_fraction": val_fraction,
        "verify": verify,
    }

    def build():
        if verify:
            for path in files:
                verify_file(path, md5=CIFAR10_FILE_MD5[path.name])
        parts = [read_cifar_batch(folder / name) for name in _CIFAR_TRAIN]
        x = np.concatenate([p for p, _ in parts])
        y = np.concatenate([t for _, t in parts])
        x_test, y_test = read_cifar_batch(folder / "test_batch")
        if pixels != "rgb":
            method = pixels.removeprefix("gray_")
            x, x_test = rgb_to_gray(x, method), rgb_to_gray(x_test, method)
        train_idx, val_idx = _split_indices(len(y), val_fraction, seed)
        splits = {
            "train": Split(x[train_idx], y[train_idx]),
            "val": Split(x[val_idx], y[val_idx]),
            "test": Split(x_test, y_test),
        }
        label_names = _unpickle(folder / "batches.meta").get("label_names")
        manifest = {
            "sources": [str(p.resolve()) for p in files],
            "md5": {p.name: CIFAR10_FILE_MD5[p.name] for p in files} if verify else None,
            "label_names": label_names,
        }
        return manifest, splits

    manifest, splits, entry = cached("cifar10", key, _CACHE_VERSION, build, cache)
    info = {
        "source": f"CIFAR-10 python batches in {folder}",
        "archive": CIFAR10_ARCHIVE,
        "md5": manifest["md5"],
        "checksum": "md5 of every batch file verified" if verify else "not checked",
        "label_names": manifest["label_names"],
        "data_dir": str(folder),
        "val": f"{val_fraction:g} of the training set, numpy seed {seed}",
        "split_seed": seed,
        "cache": str(entry) if entry is not None else None,
    }
    return splits, info


def load_image(
    data_dir: str | os.PathLike | None = None,
    *,
    variant: Variant = "lra",
    gray: Gray | None = None,
    seed: int = 42,
    val_fraction: float = 0.1,
    download: bool = True,
    cache: bool = True,
    verify: bool = True,
    progress: bool = True,
) -> Dataset:
    """LRA Image: grayscale CIFAR-10 as 1024-step sequences.

    ``data_dir`` may hold ``cifar-10-batches-py/`` (or be it) or the archive
    ``cifar-10-python.tar.gz``, which is extracted there; with ``download=True`` a missing
    archive is downloaded from :data:`CIFAR10_MIRRORS` and checked against
    :data:`CIFAR10_MD5`, and every batch file against :data:`CIFAR10_FILE_MD5` (before it
    is unpickled, by an unpickler that admits NumPy arrays only). The uint8 gray levels
    are cached under ``cache_dir("cifar10", "cache", key)`` and memory-mapped.

    Args:
      data_dir: the data folder; ``None`` is ``$SSMJAX_DATA/cifar10``.
      variant: ``"lra"``: gray levels 0..255 as tokens, ``(n, 1024)`` uint8, vocabulary
        256, TF grayscale. ``"s4"``: PIL grayscale normalised with mean 122.6/255 and std
        61/255, ``(n, 1024, 1)`` float32 (normalised per batch, see the module docstring).
      gray: override the grayscale formula, ``"tf"`` or ``"pil"``.
      seed: seed of the train/validation split.
      val_fraction: share of the 50,000 training images held out (45,000/5,000).
      download: download the archive when it is missing.
      cache: read and write the processed-array cache.
      verify: check the batch files' MD5 before reading them.
      progress: show progress bars.

    Returns:
      A :class:`Dataset` with 45,000/5,000/10,000 examples, 10 classes, ``seq_len`` 1024,
      ``lengths`` ``None``.

    Raises:
      FileNotFoundError: no data and ``download=False``; the message says where to put it.
      ssmjax.data.download.DownloadError: the download failed (e.g. offline).
      ssmjax.data.download.ChecksumError: a file differs from its published checksum.
    """
    variant = _check_variant(variant)
    gray = gray or ("tf" if variant == "lra" else "pil")
    splits, info = _cifar(
        data_dir,
        pixels=f"gray_{gray}",
        seed=seed,
        val_fraction=val_fraction,
        download=download,
        cache=cache,
        verify=verify,
        progress=progress,
    )
    info.update(variant=variant, grayscale=gray)
    if variant == "lra":
        info["normalization"] = "none: gray levels 0..255 are tokens"
        return Dataset(
            "image",
            splits["train"],
            splits["val"],
            splits["test"],
            num_classes=10,
            seq_len=1024,
            vocab_size=256,
            info=info,
        )
    info["normalization"] = "(x/255 - 122.6/255) / (61/255), per batch"
    splits = _float_splits(splits, CIFAR_GRAY_MEAN, CIFAR_GRAY_STD)
    return Dataset(
        "image",
        splits["train"],
        splits["val"],
        splits["test"],
        num_classes=10,
        seq_len=1024,
        d_input=1,
        info=info,
    )


def load_scifar_gray(data_dir: str | os.PathLike | None = None, **kwargs) -> Dataset:
    """Grayscale sCIFAR as S4 runs it: :func:`load_image` with ``variant="s4"``.

    Args:
      data_dir: the data folder; ``None`` is ``$SSMJAX_DATA/cifar10``.
      **kwargs: further :func:`load_image` arguments (``seed``, ``download``, ...).

    Returns:
      A :class:`Dataset` named ``"scifar_gray"``, inputs ``(n, 1024, 1)`` float32.
    """
    ds = load_image(data_dir, **{"variant": "s4", **kwargs})
    return Dataset(
        "scifar_gray",
        ds.train,
        ds.val,
        ds.test,
        num_classes=10,
        seq_len=ds.seq_len,
        vocab_size=ds.vocab_size,
        d_input=ds.d_input,
        info=ds.info,
    )


def load_scifar(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 42,
    val_fraction: float = 0.1,
    download: bool = True,
    cache: bool = True,
    verify: bool = True,
    progress: bool = True,
) -> Dataset:
    """Sequential CIFAR-10 in colour (S4/S5): 1024 steps of 3 normalised channels.

    Data location, download and cache as :func:`load_image`. Each channel is normalised
    as ``(x/255 - mean_c) / std_c`` with :data:`CIFAR_MEAN` and :data:`CIFAR_STD`, per
    batch (the cache holds uint8). No augmentation.

    Args:
      data_dir: the data folder; ``None`` is ``$SSMJAX_DATA/cifar10``.
      seed: seed of the train/validation split.
      val_fraction: share of the training images held out (45,000/5,000).
      download: download the archive when it is missing.
      cache: read and write the processed-array cache.
      verify: check the batch files' MD5 before reading them.
      progress: show progress bars.

    Returns:
      A :class:`Dataset` with inputs ``(n, 1024, 3)`` float32 (:class:`NormalizedPixels`),
      ``d_input`` 3, 10 classes.
    """
    splits, info = _cifar(
        data_dir,
        pixels="rgb",
        seed=seed,
        val_fraction=val_fraction,
        download=download,
        cache=cache,
        verify=verify,
        progress=progress,
    )
    info.update(variant="s4", normalization=f"(x/255 - {CIFAR_MEAN}) / {CIFAR_STD}, per batch")
    splits = _float_splits(splits, CIFAR_MEAN, CIFAR_STD)
    return Dataset(
        "scifar",
        splits["train"],
        splits["val"],
        splits["test"],
        num_classes=10,
        seq_len=1024,
        d_input=3,
        info=info,
    )
