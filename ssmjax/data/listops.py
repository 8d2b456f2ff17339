"""ListOps (Nangia & Bowman 2018; LRA variant, Tay et al. 2021): tokenizer, evaluator,
generator and loader.

A ListOps example is a nested expression over the digits 0..9 with the operators
``MIN``, ``MAX``, ``MED`` (median, rounded down) and ``SM`` (sum modulo 10); the label is
its value. On disk (LRA ``listops-1000/basic_{train,val,test}.tsv``) the expression is
written as left-nested pairs, e.g. ``( ( ( ( [MAX 2 ) 9 ) 4 ) ] )`` for ``[MAX 2 9 4 ]``.

**Tokenisation** (LRA after its March 2021 fix, and S4/S5): ``]`` becomes ``X``, the
parentheses are deleted, and the rest is split on whitespace, so the example above is
``[MAX 2 9 4 X`` (5 tokens). The token count equals the generator's length count.

**Token ids** (one fixed table for both variants; LRA built its table from Python set
order and S4 from token frequencies, so neither order is stable or meaningful, and any
fixed order is an equivalent relabelling of a learned embedding):

====  ==========  =====================================================
id    token       meaning
====  ==========  =====================================================
0     ``<pad>``   padding (``Dataset`` convention: 0 is padding)
1     ``[MIN``    minimum
2     ``[MAX``    maximum
3     ``[MED``    median, ``int(numpy.median(args))``
4     ``[SM``     sum modulo 10
5     ``X``       closing bracket ``]``
6-15  ``0``-``9`` digit ``d`` has id ``6 + d``
16    ``<unk>``   any other token (LRA's out-of-vocabulary id)
17    ``<eos>``   end of sequence, S4 variant only
====  ==========  =====================================================

``variant="lra"``: vocabulary size 17, truncate/pad to 2000, no end token.
``variant="s4"``: vocabulary size 18 (S4's "actual size 18"), truncate to 2047 and
append ``<eos>``, pad to 2048.

**Trees** are plain Python values: a leaf is an ``int`` 0..9, an operator node is a tuple
``(op, child_1, ..., child_k)`` with ``op`` one of ``"MIN" "MAX" "MED" "SM"`` (``"FIRST"``
and ``"LAST"`` are understood by the evaluator for the original spinn files). Trees are
hashable, so a ``set`` deduplicates them.
"""

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssmjax.data._dataset import Dataset, Split, cache_dir
from ssmjax.data.listops_generator import _max_tokens as _max_tokens
from ssmjax.data.listops_generator import _sample as _sample
from ssmjax.data.listops_generator import _sample_example as _sample_example
from ssmjax.data.listops_generator import _sha256
from ssmjax.data.listops_generator import generate_examples as generate_examples
from ssmjax.data.listops_generator import generate_listops as generate_listops
from ssmjax.data.listops_generator import sample_tree as sample_tree
from ssmjax.data.listops_syntax import (
    _CACHE_VERSION,
    _ID_TO_TOKEN,
    _SPLITS,
    _TASK,
    Variant,
    _check_variant,
    _default_max_len,
    _encode_rows,
)
from ssmjax.data.listops_syntax import EOS_ID as EOS_ID
from ssmjax.data.listops_syntax import OPERATORS as OPERATORS
from ssmjax.data.listops_syntax import PAD_ID as PAD_ID
from ssmjax.data.listops_syntax import TOKENS as TOKENS
from ssmjax.data.listops_syntax import UNK_ID as UNK_ID
from ssmjax.data.listops_syntax import VOCAB as VOCAB
from ssmjax.data.listops_syntax import decode as decode
from ssmjax.data.listops_syntax import encode as encode
from ssmjax.data.listops_syntax import encode_batch as encode_batch
from ssmjax.data.listops_syntax import evaluate as evaluate
from ssmjax.data.listops_syntax import num_tokens as num_tokens
from ssmjax.data.listops_syntax import parse as parse
from ssmjax.data.listops_syntax import render as render
from ssmjax.data.listops_syntax import tokenize as tokenize
from ssmjax.data.listops_syntax import vocab_size as vocab_size

__all__ = [
    "EOS_ID",
    "OPERATORS",
    "PAD_ID",
    "TOKENS",
    "UNK_ID",
    "VOCAB",
    "decode",
    "encode",
    "encode_batch",
    "evaluate",
    "generate_examples",
    "generate_listops",
    "load_listops",
    "num_tokens",
    "parse",
    "read_tsv",
    "render",
    "sample_tree",
    "tokenize",
    "vocab_size",
]


# ----------------------------------------------------------------------------- loader


def read_tsv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Reads a ListOps TSV: LRA (header ``Source<TAB>Target``) or spinn (``label<TAB>expr``).

    Args:
      path: the file.

    Returns:
      ``sources`` (list of ``n`` strings) and ``labels`` ``(n,)`` int32.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "x.tsv"
    ...     _ = p.write_text("Source\\tTarget\\n( ( [SM 9 ) 9 ) ] )\\t8\\n")
    ...     read_tsv(p)
    (['( ( [SM 9 ) 9 ) ] )'], array([8], dtype=int32))
    """
    sources: list[str] = []
    labels: list[int] = []
    with open(path, newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        first = next(rows, None)
        if first is None:
            return sources, np.zeros(0, np.int32)
        if [c.strip() for c in first] == ["Source", "Target"]:
            src_col, label_col = 0, 1
        elif len(first) == 2 and first[0].strip().isdigit():  # spinn: label first, no header
            src_col, label_col = 1, 0
            sources.append(first[1])
            labels.append(int(first[0]))
        else:
            raise ValueError(f"{path}: not a ListOps TSV (first row {first[:2]!r})")
        for row in rows:
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}, line {rows.line_num}: expected 2 columns")
            sources.append(row[src_col])
            labels.append(int(float(row[label_col])))
    return sources, np.asarray(labels, np.int32)


_LAYOUTS = ("", "lra_release/lra_release/listops-1000", "lra_release/listops-1000",
            "listops-1000")  # fmt: skip


def _how_to_get(searched: Sequence[Path]) -> str:
    where = "\n".join(f"  {p}" for p in searched)
    return (
        f"ListOps files {_TASK}_{{train,val,test}}.tsv not found; searched\n{where}\n"
        "Get them in one of two ways:\n"
        "  1. The official LRA data: download "
        "https://storage.googleapis.com/long-range-arena/lra_release.gz (~7.7 GB; reported "
        "to return HTTP 403 since 2026), extract only the ListOps folder with\n"
        "     ssmjax.data.download.extract_members('lra_release.gz', 'listops-1000', DIR)\n"
        "     and pass data_dir=DIR/lra_release/lra_release/listops-1000 (or DIR).\n"
        "  2. Regenerate it offline (same distribution, different examples):\n"
        "     python -m ssmjax.data.generate listops --out DIR\n"
        "     and pass data_dir=DIR.\n"
        "With data_dir=None the loader looks in $SSMJAX_DATA/listops (default "
        "~/.cache/ssmjax/listops)."
    )


def _find_data_dir(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        root = Path(os.environ.get("SSMJAX_DATA", Path.home() / ".cache" / "ssmjax"))
        bases = [root / "listops", root / "lra_release", root]
    else:
        bases = [Path(data_dir).expanduser()]
    searched = []
    for base in bases:
        for layout in _LAYOUTS:
            folder = base / layout if layout else base
            searched.append(folder)
            if all((folder / f"{_TASK}_{s}.tsv").is_file() for s in _SPLITS):
                return folder
    raise FileNotFoundError(_how_to_get(searched[: len(_LAYOUTS)] if data_dir else searched))


def _cache_key(files: dict[str, Path], variant: str, max_len: int) -> str:
    stats = {
        s: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for s, p in files.items()
    }
    blob = json.dumps([_CACHE_VERSION, variant, max_len, stats], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path)


def _read_cache(folder: Path) -> tuple[dict, dict[str, Split]] | None:
    """The cached arrays (inputs memory-mapped), or ``None`` when absent or unreadable."""
    if not (folder / "manifest.json").is_file():
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("version") != _CACHE_VERSION:
            raise ValueError("old cache version")
        splits = {
            s: Split(
                _load_npy(folder / f"{s}_inputs.npy"),
                np.load(folder / f"{s}_labels.npy"),
                np.load(folder / f"{s}_lengths.npy"),
            )
            for s in _SPLITS
        }
    except (OSError, ValueError):  # a damaged cache entry (ours) is rebuilt
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return manifest, splits


def _write_cache(folder: Path, manifest: dict, splits: dict[str, Split]) -> None:
    """Writes the cache entry into a temporary folder and renames it into place."""
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for s, split in splits.items():
            np.save(tmp / f"{s}_inputs.npy", split.inputs)
            np.save(tmp / f"{s}_labels.npy", split.labels)
            np.save(tmp / f"{s}_lengths.npy", split.lengths)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.exists():  # else another process finished first: its copy is as good
            raise


def load_listops(
    data_dir: str | os.PathLike | None = None,
    *,
    variant: Variant = "lra",
    max_len: int | None = None,
    cache: bool = True,
) -> Dataset:
    """ListOps from ``basic_{train,val,test}.tsv``, official or regenerated.

    The folder may be the one holding the TSVs, or a folder with the LRA layout under it
    (``lra_release/lra_release/listops-1000``, ``lra_release/listops-1000`` or
    ``listops-1000``). Files written by :func:`generate_listops` (``python -m
    ssmjax.data.generate listops``) go through the same code path; ``info["provenance"]``
    says which one was read. The token arrays are cached as ``.npy`` files (memory-mapped
    on the next load) with a ``manifest.json`` (source paths, their SHA-256, vocabulary)
    under ``cache_dir("listops", "cache", key)``, where the key covers the files' paths,
    sizes and modification times, the variant and ``max_len``.

    Args:
      data_dir: the data folder; ``None`` searches ``$SSMJAX_DATA/listops`` (default
        ``~/.cache/ssmjax/listops``) and ``$SSMJAX_DATA/lra_release``.
      variant: ``"lra"`` (2000 tokens, no end token, vocabulary 17) or ``"s4"``
        (``<eos>`` appended, 2048, vocabulary 18); see the module docstring.
      max_len: padded length; ``None`` means 2000 (lra) or 2048 (s4). Longer examples
        are truncated (the official data have none).
      cache: read and write the token cache.

    Returns:
      A :class:`Dataset` with ``inputs`` ``(n, max_len)`` uint8 (0 = padding),
      ``labels`` ``(n,)`` int32 in 0..9, ``lengths`` ``(n,)`` int32, 10 classes.

    Raises:
      FileNotFoundError: the TSVs are missing; the message says how to get them.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = generate_listops(d, num_train=6, num_val=2, num_test=2, min_length=3,
    ...                          max_length=30, workers=1, progress=False)
    ...     ds = load_listops(d, max_len=32, cache=False)
    ...     ds.train.inputs.shape, ds.vocab_size, ds.info["provenance"][:11]
    ((6, 32), 17, 'regenerated')
    """
    variant = _check_variant(variant)
    max_len = _default_max_len(variant) if max_len is None else int(max_len)
    folder = _find_data_dir(data_dir)
    files = {s: folder / f"{_TASK}_{s}.tsv" for s in _SPLITS}
    generation = folder / "generation.json"
    if generation.is_file():
        gen = json.loads(generation.read_text())
        provenance = (
            f"{gen.get('provenance', 'regenerated ListOps')}, settings {gen.get('settings')}"
        )
    else:
        provenance = f"ListOps TSV files in {folder} (official LRA listops-1000 format)"

    loaded = None
    key_dir = None
    if cache:
        key_dir = cache_dir("listops", "cache") / _cache_key(files, variant, max_len)
        loaded = _read_cache(key_dir)
    if loaded is not None:
        manifest, splits = loaded
    else:
        splits = {}
        truncated = {}
        for s, path in files.items():
            sources, labels = read_tsv(path)
            tokens, lengths, truncated[s] = _encode_rows(sources, variant, max_len)
            splits[s] = Split(tokens, labels, lengths)
        manifest = {
            "version": _CACHE_VERSION,
            "variant": variant,
            "max_len": max_len,
            "sources": {s: str(p.resolve()) for s, p in files.items()},
            "sha256": {s: _sha256(p) for s, p in files.items()},
            "vocab": [_ID_TO_TOKEN[i] for i in range(vocab_size(variant))],
            "examples": {s: len(splits[s]) for s in _SPLITS},
            "truncated": truncated,
        }
        if cache:
            try:
                _write_cache(key_dir, manifest, splits)
            except OSError:  # a read-only cache must not stop training
                key_dir = None
    return Dataset(
        name="listops",
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=10,
        seq_len=max_len,
        vocab_size=vocab_size(variant),
        info={
            "variant": variant,
            "provenance": provenance,
            "data_dir": str(folder),
            "sources": manifest["sources"],
            "sha256": manifest["sha256"],
            "vocab": manifest["vocab"],
            "pad_id": PAD_ID,
            "eos_id": EOS_ID if variant == "s4" else None,
            "truncated": manifest["truncated"],
            "cache": str(key_dir) if key_dir is not None else None,
            "val": f"{_TASK}_val.tsv",
        },
    )
