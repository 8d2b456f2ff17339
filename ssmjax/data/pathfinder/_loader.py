"""Loading Pathfinder / Path-X: layout discovery, index, cache, :func:`load_pathfinder`."""

import json
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from ssmjax.data._dataset import Dataset, Split
from ssmjax.data.pathfinder._png import _read_png, read_metadata
from ssmjax.data.pathfinder._spec import DIFFICULTY_DIRS
from ssmjax.data.pathfinder._writer import _PROVENANCE
from ssmjax.data.pathfinder._writer import (  # for load_pathfinder's doctest
    generate_pathfinder as generate_pathfinder,
)

__all__ = ["load_pathfinder", "load_pathx"]


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

Variant = Literal["lra", "s4", "s5"]
_CACHE_VERSION = 1
_NORMALIZATION = {  # variant -> (mean, std) of NormalizedPixels on x / 255
    "s4": (0.0, 1.0),
    "s5": (0.5, 0.5),
}


def _difficulty_dir(difficulty: int | str) -> str:
    if isinstance(difficulty, str):
        if difficulty in DIFFICULTY_DIRS.values():
            return difficulty
        raise ValueError(f"unknown difficulty folder {difficulty!r}")
    if difficulty not in DIFFICULTY_DIRS:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTY_DIRS)}, got {difficulty}")
    return DIFFICULTY_DIRS[difficulty]


def _has_metadata(folder: Path) -> bool:
    meta = folder / "metadata"
    return meta.is_dir() and any(meta.glob("*.npy"))


def _candidates(root: Path, resolution: int, diff: str) -> list[Path]:
    pf = f"pathfinder{resolution}"
    return [
        root / "lra_release" / "lra_release" / pf / diff,  # the nested copy S4/S5 use
        root / "lra_release" / pf / diff,
        root / pf / diff,
        root / "pathfinder" / pf / diff,  # S4's $DATA_PATH/pathfinder/pathfinderR
        root / diff,
        root,
    ]


def _locate(data_dir, resolution: int, diff: str) -> Path:
    if data_dir is None:
        root = Path(os.environ.get("SSMJAX_DATA", Path.home() / ".cache" / "ssmjax"))
    else:
        root = Path(data_dir).expanduser()
    for c in _candidates(root, resolution, diff):
        if _has_metadata(c):
            return c
    pf = f"pathfinder{resolution}"
    raise FileNotFoundError(
        f"no Pathfinder files for {pf}/{diff} under {root}: looked for "
        f"{diff}/metadata/*.npy (with imgs/) in {root}/lra_release/lra_release/{pf} (the LRA "
        f"release, lra_release.gz extracted in {root}), {root}/lra_release/{pf}, "
        f"{root}/{pf}, {root}/pathfinder/{pf} and in {root} itself. Put the LRA files "
        f"there, or generate a regenerated copy (found there afterwards): python -m "
        f"ssmjax.data.generate pathfinder --resolution {resolution} --difficulty "
        f"{_DIFFICULTY_BY_DIR[diff]} --out {root}"
    )


_DIFFICULTY_BY_DIR = {v: k for k, v in DIFFICULTY_DIRS.items()}


def _metadata_files(folder: Path) -> list[Path]:
    files = [p for p in (folder / "metadata").glob("*.npy") if p.is_file()]
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))


def _index(folder: Path) -> tuple[list[Path], np.ndarray, dict[str, int]]:
    """Image paths and labels listed by the metadata, minus empty or missing files."""
    paths, labels = [], []
    skipped = {"empty": 0, "missing": 0, "malformed": 0}
    for meta in _metadata_files(folder):
        for row in read_metadata(meta):
            if len(row) < 4 or row[3] not in ("0", "1"):
                skipped["malformed"] += 1
                continue
            path = folder / row[0] / row[1]
            try:
                size = path.stat().st_size
            except OSError:
                skipped["missing"] += 1
                continue
            if size == 0:  # e.g. pathfinder32/curv_baseline/imgs/0/sample_172.png
                skipped["empty"] += 1
                continue
            paths.append(path)
            labels.append(int(row[3]))
    if any(skipped.values()):
        warnings.warn(
            f"Pathfinder {folder}: skipped {skipped['empty']} zero-byte PNGs, "
            f"{skipped['missing']} metadata rows whose PNG is missing and "
            f"{skipped['malformed']} malformed rows",
            stacklevel=3,
        )
    return paths, np.asarray(labels, np.int32), skipped


def _split_order(n: int, split_seed: int | None) -> tuple[np.ndarray, dict[str, int]]:
    n_val = n_test = n // 10
    sizes = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
    order = np.arange(n) if split_seed is None else np.random.default_rng(split_seed).permutation(n)
    return order, sizes


def _build(folder: Path, resolution: int, split_seed, out: Path | None, progress: bool):
    """Decodes the images into per-split uint8 arrays (``.npy`` memory maps in ``out``)."""
    from tqdm.auto import tqdm

    paths, labels, skipped = _index(folder)
    n = len(paths)
    if n == 0:
        raise FileNotFoundError(f"{folder}: the metadata lists no readable images")
    order, sizes = _split_order(n, split_seed)
    length = resolution * resolution
    arrays, start = {}, 0
    for name, size in sizes.items():
        idx = order[start : start + size]
        start += size
        if out is not None:
            x = np.lib.format.open_memmap(
                out / f"{name}_inputs.npy", mode="w+", dtype=np.uint8, shape=(size, length)
            )
        else:
            x = np.empty((size, length), np.uint8)
        arrays[name] = (idx, x)
    for name, (idx, x) in arrays.items():
        for row, k in enumerate(tqdm(idx, desc=f"{name} images", disable=not progress)):
            img = _read_png(paths[k])
            if img.shape != (resolution, resolution):
                raise ValueError(f"{paths[k]} is {img.shape}, expected {resolution}x{resolution}")
            x[row] = img.reshape(-1)
    splits = {}
    for name, (idx, x) in arrays.items():
        if out is not None:
            x.flush()
            np.save(out / f"{name}_labels.npy", labels[idx])
        splits[name] = Split(x, labels[idx])
    info = {
        "examples_read": n,
        "skipped": skipped,
        "label_counts": np.bincount(labels, minlength=2).tolist(),
    }
    return splits, info


def _load(
    name: str,
    data_dir,
    resolution: int,
    difficulty: int | str,
    variant: Variant,
    split_seed: int | None,
    cache: bool,
    progress: bool,
) -> Dataset:
    from ssmjax.data._cache import cache_entry, commit_entry, file_stats, new_entry, read_cache

    if variant not in ("lra", "s4", "s5"):
        raise ValueError(f"variant must be 'lra', 's4' or 's5', got {variant!r}")
    diff = _difficulty_dir(difficulty)
    folder = _locate(data_dir, resolution, diff).resolve()
    prov_file = folder / _PROVENANCE
    if prov_file.is_file():
        provenance = json.loads(prov_file.read_text()).get("provenance", "regenerated")
    else:
        provenance = f"Pathfinder files in {folder} (LRA release layout)"
    metas = _metadata_files(folder)
    key = {
        "task": "pathfinder",
        "folder": str(folder),
        "metadata": file_stats(metas),
        "resolution": resolution,
        "split_seed": split_seed,
    }
    splits = built = None
    entry = None
    if cache:
        entry = cache_entry("pathfinder", {"cache_version": _CACHE_VERSION, **key})
        hit = read_cache(entry, _CACHE_VERSION)
        if hit is not None:
            built, splits = hit[0]["built"], hit[1]
        else:
            tmp = new_entry(entry)
            try:
                _, built = _build(folder, resolution, split_seed, tmp, progress)
                lens = {
                    s: int(np.load(tmp / f"{s}_labels.npy").shape[0])
                    for s in ("train", "val", "test")
                }
                manifest = {
                    "cache_version": _CACHE_VERSION,
                    "key": key,
                    "built": built,
                    "examples": lens,
                }
                commit_entry(tmp, entry, manifest)
            except BaseException:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
                raise
            hit = read_cache(entry, _CACHE_VERSION)
            if hit is None:  # pragma: no cover - the entry vanished under us
                raise OSError(f"could not read back the cache entry {entry}")
            splits = hit[1]
    else:
        splits, built = _build(folder, resolution, split_seed, None, progress)
    info = {
        "source": str(folder),
        "provenance": provenance,
        "resolution": resolution,
        "difficulty": diff,
        "variant": variant,
        "split": (
            "80/10/10 contiguous in metadata order (LRA's TFDS slices)"
            if split_seed is None
            else f"80/10/10 random, numpy permutation with seed {split_seed} (S4-like)"
        ),
        "cache": str(entry) if entry is not None else None,
        **built,
    }
    seq_len = resolution * resolution
    if variant == "lra":
        info["normalization"] = "none: gray levels 0..255 are tokens"
        return Dataset(
            name,
            splits["train"],
            splits["val"],
            splits["test"],
            num_classes=2,
            seq_len=seq_len,
            vocab_size=256,
            info=info,
        )
    from ssmjax.data.images import NormalizedPixels

    mean, std = _NORMALIZATION[variant]
    info["normalization"] = f"(x/255 - {mean}) / {std}, per batch"
    floats = {s: Split(NormalizedPixels(v.inputs, mean, std), v.labels) for s, v in splits.items()}
    return Dataset(
        name,
        floats["train"],
        floats["val"],
        floats["test"],
        num_classes=2,
        seq_len=seq_len,
        d_input=1,
        info=info,
    )


def load_pathfinder(
    data_dir: str | os.PathLike | None = None,
    *,
    resolution: int = 32,
    difficulty: int | str = 14,
    variant: Variant = "lra",
    split_seed: int | None = 42,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """LRA Pathfinder (``pathfinder32``, contour length 14) from released or generated files.

    ``data_dir`` may be any level of the released layout: a folder holding
    ``lra_release/lra_release/pathfinder{R}`` (the nested copy is preferred, as in S4/S5),
    ``lra_release/pathfinder{R}``, ``pathfinder{R}`` or ``pathfinder/pathfinder{R}``, or
    the ``pathfinder{R}`` or difficulty folder itself. Output of :func:`generate_pathfinder`
    has the same layout and goes through the same code. Metadata files are read in numeric
    order (text or binary ``np.save``, :func:`read_metadata`); zero-byte PNGs and rows
    whose PNG is missing are skipped with one warning. The images are flattened row by
    row and cached as uint8 ``.npy`` memory maps with a ``manifest.json`` under
    ``cache_dir("pathfinder", "cache", key)`` (key: folder, metadata files' sizes and
    times, resolution, ``split_seed``).

    Args:
      data_dir: the data folder; ``None`` searches ``$SSMJAX_DATA`` (default
        ``~/.cache/ssmjax``), where ``--out $SSMJAX_DATA`` of the generator writes.
      resolution: image side ``R``; sequences have ``R * R`` steps.
      difficulty: 14 (LRA), 9 or 6, or the folder name (``"curv_baseline"``).
      variant: ``"lra"``: gray levels as tokens, ``(n, R*R)`` uint8, vocabulary 256.
        ``"s4"``: float pixels in [0, 1] (S4's default, ``center: False``), ``"s5"``: in
        [-1, 1] (S5; S4 with ``center``), both ``(n, R*R, 1)`` float32 views that
        normalise the rows they are indexed with.
      split_seed: 80/10/10 split by a NumPy permutation with this seed (S4 splits at
        random with seed 42, through torch, so not the same indices); ``None``: contiguous
        slices in metadata order, like LRA's TFDS slices.
      cache: read and write the uint8 cache.
      progress: show a progress bar while decoding.

    Returns:
      A :class:`Dataset` with 2 classes, ``seq_len`` ``R * R``, ``lengths`` ``None``.

    Raises:
      FileNotFoundError: no files; the message says where to put them or how to make them.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = generate_pathfinder(d, num_images=20, workers=1, progress=False)
    ...     ds = load_pathfinder(d, cache=False, progress=False)
    ...     len(ds.train), len(ds.val), len(ds.test), ds.train.inputs.shape, ds.vocab_size
    (16, 2, 2, (16, 1024), 256)
    """
    return _load(
        "pathfinder", data_dir, resolution, difficulty, variant, split_seed, cache, progress
    )


def load_pathx(
    data_dir: str | os.PathLike | None = None,
    *,
    difficulty: int | str = 14,
    variant: Variant = "lra",
    split_seed: int | None = 42,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """LRA Path-X: :func:`load_pathfinder` at resolution 128 (sequences of 16,384).

    The same arguments as :func:`load_pathfinder`, which see; the files are
    ``pathfinder128/curv_contour_length_14`` (the nested ``lra_release/lra_release`` copy
    when both are present). The uint8 cache of 200,000 images takes 3.3 GB.
    """
    return _load("pathx", data_dir, 128, difficulty, variant, split_seed, cache, progress)
