"""Shared pixel helpers of the image datasets: :class:`NormalizedPixels`, grayscale,
the psMNIST bit-reversal order and S4's train/validation split (see
:mod:`ssmjax.data.images`)."""

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ssmjax.data._dataset import Split

__all__ = ["NormalizedPixels", "bitreversal_permutation", "rgb_to_gray"]

Variant = Literal["lra", "s4"]
Gray = Literal["tf", "pil"]

_CACHE_VERSION = 1


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


def _float_splits(splits: dict[str, Split], mean, std) -> dict[str, Split]:
    return {s: Split(NormalizedPixels(v.inputs, mean, std), v.labels) for s, v in splits.items()}
