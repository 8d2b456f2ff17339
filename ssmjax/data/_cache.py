"""The on-disk cache of processed datasets: one folder per set of loader settings.

Each entry holds ``{split}_inputs.npy`` (memory-mapped on load), ``{split}_labels.npy``,
optional ``{split}_lengths.npy`` and a ``manifest.json`` (provenance, file stats, settings).
An entry is built in a temporary folder and renamed into place, so it appears whole; a
damaged entry of ours is rebuilt.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ssmjax.data._dataset import Split, cache_dir

__all__ = [
    "cache_entry",
    "cached",
    "commit_entry",
    "file_stats",
    "load_npy",
    "new_entry",
    "read_cache",
    "write_cache",
]


def file_stats(paths: Iterable[Path]) -> list:
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_entry(task: str, key: Mapping) -> Path:
    """``cache_dir(task, "cache", hash(key))``: one folder per set of loader settings."""
    blob = json.dumps(key, sort_keys=True, default=str)
    return cache_dir(task, "cache") / hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not mmap:
        return np.load(path)
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path)


def read_cache(folder: Path, version: int) -> tuple[dict, dict[str, Split]] | None:
    """The cached splits (inputs memory-mapped), or ``None`` when absent or damaged.

    The manifest lists each split's example count ``n``; arrays may hold more rows than
    ``n`` (a streaming writer allocates by line count) and are cut to ``n``.
    """
    if not (folder / "manifest.json").is_file():
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("cache_version") != version:
            raise ValueError("old cache version")
        splits = {}
        for s, n in manifest["examples"].items():
            inputs = load_npy(folder / f"{s}_inputs.npy", mmap=True)[:n]
            labels = load_npy(folder / f"{s}_labels.npy", mmap=False)[:n]
            lengths = None
            if (folder / f"{s}_lengths.npy").is_file():
                lengths = load_npy(folder / f"{s}_lengths.npy", mmap=False)[:n]
            splits[s] = Split(inputs, labels, lengths)
    except (OSError, ValueError, KeyError, TypeError):  # our own damaged entry is rebuilt
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return manifest, splits


def new_entry(folder: Path) -> Path:
    """A fresh temporary folder beside ``folder`` to build a cache entry in."""
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_entry(tmp: Path, folder: Path, manifest: dict) -> None:
    """Writes the manifest and renames ``tmp`` to ``folder`` (the entry appears whole)."""
    try:
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.exists():  # else another process finished first: its copy is as good
            raise


def write_cache(folder: Path, manifest: dict, splits: Mapping[str, Split]) -> None:
    tmp = new_entry(folder)
    try:
        for s, split in splits.items():
            np.save(tmp / f"{s}_inputs.npy", np.asarray(split.inputs))
            np.save(tmp / f"{s}_labels.npy", np.asarray(split.labels))
            if split.lengths is not None:
                np.save(tmp / f"{s}_lengths.npy", np.asarray(split.lengths))
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_entry(tmp, folder, {**manifest, "examples": {s: len(v) for s, v in splits.items()}})


def cached(task: str, key: Mapping, version: int, build, cache: bool):
    """Reads the entry for ``key`` or builds it with ``build() -> (manifest, splits)``.

    Returns:
      ``(manifest, splits, entry)``; ``entry`` is ``None`` when nothing was cached (a
      read-only cache folder does not stop loading).
    """
    entry = None
    if cache:
        entry = cache_entry(task, {"cache_version": version, **key})
        if (hit := read_cache(entry, version)) is not None:
            return (*hit, entry)
    manifest, splits = build()
    manifest = {"cache_version": version, **manifest}
    if cache:
        try:
            write_cache(entry, manifest, splits)
        except OSError:
            return manifest, splits, None
        if (hit := read_cache(entry, version)) is not None:  # serve the memory maps
            return (*hit, entry)
    return manifest, splits, None
