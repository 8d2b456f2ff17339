"""Images as sequences: LRA Image (grayscale CIFAR-10), sCIFAR, sMNIST, psMNIST, digits.

**CIFAR-10** is read from the python pickles of ``cifar-10-python.tar.gz``
(``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; each batch a dict with
``data`` uint8 ``(n, 3072)`` = red plane, green plane, blue plane, each 32x32 row-major,
and ``labels``). A pixel sequence runs row by row: step ``32 * row + col``.

============  ===========================================  ====================  =======
task          input per step                               shape                 as
============  ===========================================  ====================  =======
image, lra    gray level 0..255 as a token (vocab 256),    ``(n, 1024)`` uint8   LRA
              TF ``rgb_to_grayscale``
image, s4     PIL gray, ``(x/255 - 122.6/255)/(61/255)``   ``(n, 1024, 1)`` f32  S4/S5
scifar_gray   same as ``image, s4``                        ``(n, 1024, 1)`` f32  S4
scifar        RGB, ``(x/255 - mean_c)/std_c``, mean        ``(n, 1024, 3)`` f32  S4/S5
              (0.4914, 0.4822, 0.4465), std (0.247,
              0.243, 0.261)
smnist        ``x/255`` in [0, 1]                          ``(n, 784, 1)`` f32   S4/S5
psmnist       as smnist, steps permuted (bit reversal)     ``(n, 784, 1)`` f32   S4/S5
digits        ``x/16`` (sklearn 8x8 digits)                ``(n, 64, 1)`` f32    --
============  ===========================================  ====================  =======

**Grayscale**: LRA's TF ``rgb_to_grayscale`` computes ``0.2989 R + 0.5870 G + 0.1140 B``
on ``x/255`` in float32 and converts back with ``floor(255.5 * y)``; S4's PIL
``convert("L")`` computes ``(19595 R + 38470 G + 7471 B + 2**15) >> 16`` (rounding). The
two differ by one level on about a quarter of random colours; each variant uses its own
(``gray=`` overrides).

**Normalisation happens per batch**: the cache holds uint8 pixels (memory-mapped) and
float inputs are a :class:`NormalizedPixels` view that normalises the rows it is indexed
with, so sCIFAR takes 0.18 GB instead of 0.74 GB (float32) of memory. ``np.asarray`` on
it gives the whole normalised float32 array.

**Splits**: the official test set is the test split; ``val_fraction`` (0.1) of the
training set is held out at random with ``seed`` (42), S4's ``random_split`` sizes
(CIFAR 45,000/5,000/10,000; MNIST 54,000/6,000/10,000). The indices are NumPy's, not
torch's, and LRA's contiguous TFDS slices cannot be reproduced without TFDS.

**MNIST** comes from the four IDX files (big-endian header, magic 2051 for images
``(n, 28, 28)``, 2049 for labels), gzipped as distributed (also found uncompressed, or
in torchvision's ``MNIST/raw``). **psMNIST** uses S4/S5's bit-reversal permutation
(:func:`bitreversal_permutation`); ``permutation="random"`` gives
``np.random.RandomState(92916).permutation(784)``, another permutation used in the
literature.
"""

import gzip
import os
import pickle
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ssmjax.data._cache import cached, file_stats
from ssmjax.data._dataset import Dataset, Split, cache_dir
from ssmjax.data.download import download, extract_members
from ssmjax.data.download import verify as verify_file

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_FILE_MD5",
    "CIFAR10_MD5",
    "CIFAR10_MIRRORS",
    "CIFAR_GRAY_MEAN",
    "CIFAR_GRAY_STD",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "NormalizedPixels",
    "bitreversal_permutation",
    "load_digits",
    "load_image",
    "load_psmnist",
    "load_scifar",
    "load_scifar_gray",
    "load_smnist",
    "read_cifar_batch",
    "read_idx",
    "rgb_to_gray",
]

Variant = Literal["lra", "s4"]
Gray = Literal["tf", "pil"]

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

_CACHE_VERSION = 1
_IDX_IMAGES, _IDX_LABELS = 2051, 2049


def _check_variant(variant: str) -> str:
    if variant not in ("lra", "s4"):
        raise ValueError(f"variant must be 'lra' or 's4', got {variant!r}")
    return variant


# ----------------------------------------------------------------------------- pixels


class NormalizedPixels:
    """A uint8 pixel array read as normalised float32: ``(x / 255 - mean) / std``.

    Indexing normalises only the selected rows, so a memory-mapped uint8 cache stays on
    disk and :func:`~ssmjax.data.iterate_batches` receives float batches. The arithmetic
    is torchvision's ``ToTensor`` then ``Normalize``, in float32.

    Args:
      pixels: ``(n, l)`` or ``(n, l, c)`` uint8; a 2-D array reads as ``(n, l, 1)``.
      mean: per-channel mean, a float or ``(c,)``.
      std: per-channel standard deviation, a float or ``(c,)``.

    >>> x = NormalizedPixels(np.array([[0, 255]], np.uint8), mean=0.5, std=0.5)
    >>> x.shape, x[0].tolist()
    ((1, 2, 1), [[-1.0], [1.0]])
    """

    dtype = np.dtype(np.float32)

    def __init__(self, pixels, mean: float | Sequence[float], std: float | Sequence[float]):
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
            raise ValueError(f"pixels must be (n, l) or (n, l, c) uint8, got {pixels.dtype}")
        self.pixels = pixels
        self.mean = np.atleast_1d(np.asarray(mean, np.float32))
        self.std = np.atleast_1d(np.asarray(std, np.float32))
        self._expand = pixels.ndim == 2
        self.shape = (*pixels.shape, 1) if self._expand else tuple(pixels.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        raw = np.asarray(self.pixels[key])
        out = (raw.astype(np.float32) / np.float32(255.0) - self.mean) / self.std
        return out[..., None] if self._expand else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError("NormalizedPixels cannot be converted without a copy")
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return (
            f"NormalizedPixels(shape={self.shape}, mean={self.mean.tolist()}, "
            f"std={self.std.tolist()})"
        )


def rgb_to_gray(rgb: np.ndarray, method: Gray = "tf") -> np.ndarray:
    """Grayscale levels of RGB pixels, as LRA (TF) or S4 (PIL) compute them.

    Args:
      rgb: ``(..., 3)`` uint8.
      method: ``"tf"`` (``tf.image.rgb_to_grayscale`` on uint8: weights 0.2989, 0.5870,
        0.1140 on ``x/255`` in float32, back with ``floor(255.5 * y)``) or ``"pil"``
        (``Image.convert("L")``: ``(19595 R + 38470 G + 7471 B + 32768) >> 16``).

    Returns:
      ``(...)`` uint8.

    >>> px = np.array([[255, 255, 255], [255, 0, 0], [10, 200, 30], [1, 2, 3]], np.uint8)
    >>> rgb_to_gray(px, "tf").tolist(), rgb_to_gray(px, "pil").tolist()
    ([255, 76, 124, 1], [255, 76, 124, 2])
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise ValueError(f"rgb must be (..., 3) uint8, got {rgb.dtype} {rgb.shape}")
    if method == "tf":
        x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
        w = np.asarray([0.2989, 0.5870, 0.1140], np.float32)
        y = x[..., 0] * w[0] + x[..., 1] * w[1] + x[..., 2] * w[2]
        return np.clip(y * np.float32(255.5), 0, 255).astype(np.uint8)
    if method == "pil":
        x = rgb.astype(np.uint32)
        y = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16
        return y.astype(np.uint8)
    raise ValueError(f"method must be 'tf' or 'pil', got {method!r}")


def bitreversal_permutation(n: int) -> np.ndarray:
    """S4/S5's psMNIST order: the bit-reversal permutation of ``2**m >= n``, cut to ``n``.

    With ``m = ceil(log2(n))``, position ``k`` of ``0..2**m - 1`` holds ``k`` with its ``m``
    bits reversed; the values ``>= n`` are dropped and the order of the rest kept. A
    permuted sequence is ``x[perm]``.

    Args:
      n: sequence length (784 for MNIST).

    Returns:
      ``(n,)`` int64, a permutation of ``0..n-1``.

    >>> bitreversal_permutation(8).tolist()
    [0, 4, 2, 6, 1, 5, 3, 7]
    >>> bitreversal_permutation(6).tolist()
    [0, 4, 2, 1, 5, 3]
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    m = max(int(n - 1).bit_length(), 0)
    k = np.arange(1 << m, dtype=np.int64)
    rev = np.zeros_like(k)
    for bit in range(m):
        rev |= ((k >> bit) & 1) << (m - 1 - bit)
    return rev[rev < n]


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices (each sorted): S4's ``random_split`` sizes."""
    n_train = int(n * (1.0 - val_fraction))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


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


def _float_splits(splits: dict[str, Split], mean, std) -> dict[str, Split]:
    return {s: Split(NormalizedPixels(v.inputs, mean, std), v.labels) for s, v in splits.items()}


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
