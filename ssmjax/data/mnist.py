"""MNIST (IDX files) as sequences: sMNIST and psMNIST; and scikit-learn's 8x8 digits
(see :mod:`ssmjax.data.images`)."""

import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ssmjax.data._cache import cached, file_stats
from ssmjax.data._dataset import Dataset, Split, cache_dir
from ssmjax.data.download import download
from ssmjax.data.download import verify as verify_file
from ssmjax.data.pixels import (
    _CACHE_VERSION,
    _float_splits,
    _split_indices,
    bitreversal_permutation,
)

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "load_digits",
    "load_psmnist",
    "load_smnist",
    "read_idx",
]

# ----------------------------------------------------------------------------- sources

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://raw.githubusercontent.com/fgnt/mnist/master/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Base URLs of the MNIST files, tried in order."""
MNIST_FILES = {
    "train_images": (
        "train-images-idx3-ubyte.gz",
        9_912_422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte.gz",
        28_881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte.gz",
        1_648_877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte.gz",
        4_542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}
"""Role -> (file name, size in bytes, SHA-256) of the gzipped IDX files (TFDS checksums)."""

_IDX_IMAGES, _IDX_LABELS = 2051, 2049


# ----------------------------------------------------------------------------- MNIST


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzipped or not): MNIST images or labels.

    Args:
      path: an IDX file; a ``.gz`` name (or gzip magic bytes) is decompressed.

    Returns:
      uint8 ``(n, rows, cols)`` for images (magic 2051) or ``(n,)`` for labels (2049).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "labels"
    ...     _ = p.write_bytes(struct.pack(">II", 2049, 3) + bytes([7, 0, 9]))
    ...     read_idx(p).tolist()
    [7, 0, 9]
    """
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for an IDX file")
    magic, n = struct.unpack(">II", data[:8])
    if magic == _IDX_IMAGES:
        rows, cols = struct.unpack(">II", data[8:16])
        shape, offset = (n, rows, cols), 16
    elif magic == _IDX_LABELS:
        shape, offset = (n,), 8
    else:
        raise ValueError(f"{path}: IDX magic {magic}, expected 2051 (images) or 2049 (labels)")
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: {len(data) - offset} data bytes, header says {expected}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _mnist_how_to(root: Path, missing: Sequence[str]) -> str:
    names = "\n".join(
        f"  {MNIST_FILES[r][0]} ({MNIST_FILES[r][1]:,} bytes, sha256 {MNIST_FILES[r][2]})"
        for r in missing
    )
    return (
        f"MNIST files missing in {root}:\n{names}\n"
        f"Download them from {MNIST_MIRRORS[0]} (or another mirror in "
        "ssmjax.data.images.MNIST_MIRRORS) and put them in\n"
        f"  {root}\n(gzipped as distributed, or uncompressed without .gz; torchvision's "
        "MNIST/raw folder works too), or pass download=True, the default, on a machine "
        "with network access. With data_dir=None the loader uses $SSMJAX_DATA/mnist "
        "(default ~/.cache/ssmjax/mnist)."
    )


def _locate_mnist(root: Path, download_: bool, progress: bool) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for role, (name, _, _) in MNIST_FILES.items():
        for folder in (root, root / "MNIST" / "raw", root / "raw"):
            for candidate in (folder / name, folder / name.removesuffix(".gz")):
                if role not in found and candidate.is_file():
                    found[role] = candidate
    missing = [r for r in MNIST_FILES if r not in found]
    if missing and not download_:
        raise FileNotFoundError(_mnist_how_to(root, missing))
    for role in missing:
        name, size, sha = MNIST_FILES[role]
        found[role] = download(
            [base + name for base in MNIST_MIRRORS],
            root / name,
            sha256=sha,
            size=size,
            progress=progress,
        )
    return found


def _permutation(permutation: str | None, seed: int) -> np.ndarray | None:
    if permutation is None:
        return None
    if permutation == "bitreversal":
        return bitreversal_permutation(784)
    if permutation == "random":
        return np.random.RandomState(seed).permutation(784)
    raise ValueError(f"permutation must be 'bitreversal' or 'random', got {permutation!r}")


def _mnist(
    name: str,
    data_dir,
    *,
    permutation: str | None,
    permutation_seed: int,
    seed: int,
    val_fraction: float,
    download: bool,
    cache: bool,
    verify: bool,
    progress: bool,
) -> Dataset:
    root = Path(data_dir).expanduser() if data_dir is not None else cache_dir("mnist")
    files = _locate_mnist(root, download, progress)
    perm = _permutation(permutation, permutation_seed)
    key = {
        "files": file_stats(files.values()),
        "permutation": permutation,
        "permutation_seed": permutation_seed if permutation == "random" else None,
        "seed": seed,
        "val_fraction": val_fraction,
        "verify": verify,
    }

    def build():
        checked = {}
        for role, path in files.items():
            fname, size, sha = MNIST_FILES[role]
            if verify and path.name == fname:  # the gzipped file as published: check it
                verify_file(path, sha256=sha, size=size)
                checked[role] = sha
        arrays = {role: read_idx(path) for role, path in files.items()}
        for part in ("train", "test"):
            x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
            if x.shape[1:] != (28, 28) or len(x) != len(y):
                raise ValueError(f"MNIST {part}: images {x.shape}, labels {y.shape}")
        x = arrays["train_images"].reshape(-1, 784)
        x_test = arrays["test_images"].reshape(-1, 784)
        if perm is not None:
            x, x_test = x[:, perm], x_test[:, perm]
        y = arrays["train_labels"].astype(np.int32)
        y_test = arrays["test_labels"].astype(np.int32)
        train_idx, val_idx = _split_indices(len(y), val_fraction, seed)
        splits = {
            "train": Split(np.ascontiguousarray(x[train_idx]), y[train_idx]),
            "val": Split(np.ascontiguousarray(x[val_idx]), y[val_idx]),
            "test": Split(np.ascontiguousarray(x_test), y_test),
        }
        manifest = {"sources": {r: str(p.resolve()) for r, p in files.items()}, "sha256": checked}
        return manifest, splits

    manifest, splits, entry = cached("mnist", key, _CACHE_VERSION, build, cache)
    unchecked = sorted(set(MNIST_FILES) - set(manifest["sha256"]))
    info = {
        "source": f"MNIST IDX files in {root}",
        "sources": manifest["sources"],
        "sha256": manifest["sha256"],
        "checksum": "sha256 verified" if not unchecked else f"not checked: {unchecked}",
        "variant": "s4",
        "normalization": "x/255 in [0, 1], per batch",
        "permutation": permutation,
        "permutation_seed": permutation_seed if permutation == "random" else None,
        "val": f"{val_fraction:g} of the training set, numpy seed {seed}",
        "split_seed": seed,
        "cache": str(entry) if entry is not None else None,
    }
    splits = _float_splits(splits, 0.0, 1.0)
    return Dataset(
        name,
        splits["train"],
        splits["val"],
        splits["test"],
        num_classes=10,
        seq_len=784,
        d_input=1,
        info=info,
    )


def load_smnist(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 42,
    val_fraction: float = 0.1,
    download: bool = True,
    cache: bool = True,
    verify: bool = True,
    progress: bool = True,
) -> Dataset:
    """Sequential MNIST: 784 pixels in row order, values ``x/255`` in [0, 1].

    ``data_dir`` holds the four IDX files (see the module docstring); missing ones are
    downloaded from :data:`MNIST_MIRRORS` with the sizes and SHA-256 of
    :data:`MNIST_FILES`, which are also checked for files already there (gzipped ones).

    Args:
      data_dir: the data folder; ``None`` is ``$SSMJAX_DATA/mnist``.
      seed: seed of the train/validation split.
      val_fraction: share of the 60,000 training images held out (54,000/6,000).
      download: download missing files.
      cache: read and write the processed-array cache (uint8, memory-mapped).
      verify: check the gzipped files' size and SHA-256 before reading them.
      progress: show progress bars.

    Returns:
      A :class:`Dataset` with inputs ``(n, 784, 1)`` float32 (:class:`NormalizedPixels`),
      ``d_input`` 1, 10 classes, no normalisation beyond ``/255`` (as S4).

    Raises:
      FileNotFoundError: files missing and ``download=False``; the message names them.
      ssmjax.data.download.DownloadError: the download failed (e.g. offline).
    """
    return _mnist(
        "smnist",
        data_dir,
        permutation=None,
        permutation_seed=0,
        seed=seed,
        val_fraction=val_fraction,
        download=download,
        cache=cache,
        verify=verify,
        progress=progress,
    )


def load_psmnist(
    data_dir: str | os.PathLike | None = None,
    *,
    permutation: Literal["bitreversal", "random"] = "bitreversal",
    permutation_seed: int = 92916,
    seed: int = 42,
    val_fraction: float = 0.1,
    download: bool = True,
    cache: bool = True,
    verify: bool = True,
    progress: bool = True,
) -> Dataset:
    """Permuted sequential MNIST: :func:`load_smnist` with the steps reordered.

    Args:
      data_dir: the data folder; ``None`` is ``$SSMJAX_DATA/mnist``.
      permutation: ``"bitreversal"`` (S4/S5, :func:`bitreversal_permutation`) or
        ``"random"`` (``np.random.RandomState(permutation_seed).permutation(784)``).
      permutation_seed: seed of the random permutation (92916, as in the literature).
      seed: seed of the train/validation split.
      val_fraction: share of the training images held out.
      download: download missing files.
      cache: read and write the processed-array cache.
      verify: check the gzipped files' size and SHA-256 before reading them.
      progress: show progress bars.

    Returns:
      A :class:`Dataset` with inputs ``(n, 784, 1)`` float32 where step ``i`` is pixel
      ``perm[i]``; ``info["permutation"]`` names the permutation.
    """
    return _mnist(
        "psmnist",
        data_dir,
        permutation=permutation,
        permutation_seed=permutation_seed,
        seed=seed,
        val_fraction=val_fraction,
        download=download,
        cache=cache,
        verify=verify,
        progress=progress,
    )


# ----------------------------------------------------------------------------- digits


def load_digits(*, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits as 64-step sequences (offline).

    The images ship inside scikit-learn, so nothing is downloaded or cached. Pixels
    (0..16) run row by row and are scaled to [0, 1]. The split is random with ``seed``.

    Args:
      seed: seed of the split.
      val_fraction: share of all images used for validation.
      test_fraction: share of all images used for testing.

    Returns:
      A :class:`Dataset` with inputs ``(n, 64, 1)`` float32, 10 classes, ``d_input`` 1.

    Raises:
      ImportError: scikit-learn is not installed.
    """
    try:
        import sklearn
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError(
            "the digits task reads the images bundled with scikit-learn: pip install scikit-learn"
        ) from e
    data = sklearn_digits()
    x = (np.asarray(data.data, np.float32) / np.float32(16.0))[..., None]
    y = np.asarray(data.target, np.int32)
    n = len(y)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    test_idx = np.sort(perm[:n_test])
    val_idx = np.sort(perm[n_test : n_test + n_val])
    train_idx = np.sort(perm[n_test + n_val :])
    return Dataset(
        "digits",
        Split(x[train_idx], y[train_idx]),
        Split(x[val_idx], y[val_idx]),
        Split(x[test_idx], y[test_idx]),
        num_classes=10,
        seq_len=64,
        d_input=1,
        info={
            "source": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
            "variant": None,
            "checksum": "not needed: the images are bundled with scikit-learn",
            "normalization": "x/16 in [0, 1]",
            "split_seed": seed,
            "val": f"{len(val_idx)} random images (seed {seed})",
            "cache": None,
        },
    )
