"""LRA Retrieval: do two ACL Anthology Network (AAN) papers cite each other?

**Files** (from LRA's ``lra_release.gz``, folder ``lra_release/lra_release/tsv_data``):
``new_aan_pairs.train.tsv`` (147,086 pairs, about 8 GB), ``new_aan_pairs.eval.tsv``
(validation) and ``new_aan_pairs.test.tsv``. Each line is one pair, five tab-separated
columns and no header::

    label <TAB> paper1_id <TAB> paper2_id <TAB> text1 <TAB> text2

``label`` is ``1``/``0`` (or ``1.0``/``0.0``; LRA parses it as a float). Quoting is off
(LRA's ``use_quote_delim=False``): a ``"`` is an ordinary character. The files are
streamed line by line and split on tabs, never loaded whole (HF ``load_dataset`` runs
out of memory on the training file, LRA #53). Python's ``csv`` module is not used: even
with ``QUOTE_NONE`` it ends a record at a lone carriage return inside a text, whereas
splitting each ``\\n``-terminated line on tabs is exactly the unquoted TSV parse, with
no field-size limit. The AAN texts are not redistributable, so there is no download.

**Variants** (``variant=``), ``max_len`` = 4000 tokens per document in both:

``"lra"``
  UTF-8 bytes + 1 (TFDS ``ByteTextEncoder``, vocabulary 257, padding 0) of the first
  ``max_len`` bytes of each document (LRA cuts to 10,000 bytes, then to ``max_len``).
  Stored as uint8 (see :mod:`ssmjax.data.text` for the 0xFF rule).
``"s4"``
  Unicode characters: the first ``max_len - 1`` characters and ``<eos>``; the vocabulary
  (``<pad>`` 0, ``<unk>`` 1, ``<eos>`` 2, then characters by frequency) is built from the
  cut training documents, both columns, every character kept (S4: "full size 98"). This
  takes one extra pass over the training file.

**Output**: ``inputs`` ``(n, 2, max_len)`` (document 1, document 2), ``lengths`` ``(n, 2)``
int32, ``labels`` ``(n,)`` int32; :attr:`~ssmjax.data.Dataset.is_pair` is true, and
:func:`~ssmjax.data.iterate_batches` yields masks ``(b, 2, l)``. (S4 instead stacks the
two documents along the batch axis; the two-tower model does that inside.) The paper
ids are not kept.
"""

import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from ssmjax.data._cache import cache_entry, commit_entry, file_stats, new_entry, read_cache
from ssmjax.data._dataset import Dataset, Split
from ssmjax.data.text import (
    BYTE_VOCAB_SIZE,
    EOS_ID,
    PAD_ID,
    TOKENS_NOTE,
    _byte_ids,
    _char_ids,
    _char_table,
    _CharCounter,
    _vocab_from_counts,
)

__all__ = ["AAN_FILES", "load_retrieval", "read_aan"]

Variant = Literal["lra", "s4"]

AAN_FILES = {
    "train": "new_aan_pairs.train.tsv",
    "val": "new_aan_pairs.eval.tsv",
    "test": "new_aan_pairs.test.tsv",
}
"""Split -> file name in ``tsv_data/``."""

_LAYOUTS = ("", "tsv_data", "lra_release/tsv_data", "lra_release/lra_release/tsv_data")
_CACHE_VERSION = 1
_COLUMNS = 5


def _check_variant(variant: str) -> str:
    if variant not in ("lra", "s4"):
        raise ValueError(f"variant must be 'lra' or 's4', got {variant!r}")
    return variant


def _parse_label(field: str, where: str) -> int:
    try:
        value = float(field)
    except ValueError:
        raise ValueError(f"{where}: label {field!r} is not a number") from None
    if value not in (0.0, 1.0):
        raise ValueError(f"{where}: label {field!r} is not 0 or 1")
    return int(value)


def read_aan(path: str | os.PathLike) -> Iterator[tuple[int, str, str, str, str]]:
    """Streams the pairs of one AAN TSV file, one line at a time.

    Args:
      path: a ``new_aan_pairs.*.tsv`` file.

    Yields:
      ``(label, paper1_id, paper2_id, text1, text2)`` with ``label`` an int 0/1. Blank
      lines are skipped; bytes that are not UTF-8 are kept (``surrogateescape``), so the
      byte-level encoding sees the file's raw bytes.

    Raises:
      ValueError: a line without exactly five columns or with a label other than 0/1; the
        message gives the file and line.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "x.tsv"
    ...     _ = p.write_text('1.0\\tA\\tB\\tsays "hi"\\tok\\n')
    ...     list(read_aan(p))
    [(1, 'A', 'B', 'says "hi"', 'ok')]
    """
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            line = line.removesuffix("\n").removesuffix("\r")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != _COLUMNS:
                hint = ""
                if len(parts) == 3:
                    hint = (
                        " (an *.only_ids.tsv file holds ids only; the texts are in "
                        "lra_release.gz's tsv_data folder)"
                    )
                raise ValueError(
                    f"{path}, line {lineno}: expected {_COLUMNS} tab-separated columns "
                    f"(label, id1, id2, text1, text2), got {len(parts)}{hint}"
                )
            label = _parse_label(parts[0], f"{path}, line {lineno}")
            yield label, parts[1], parts[2], parts[3], parts[4]


def _scan(path: Path) -> tuple[int, str]:
    """The number of lines (an upper bound on the pairs) and the file's SHA-256."""
    h = hashlib.sha256()
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n"), h.hexdigest()


def _how_to_get(searched: Sequence[Path]) -> str:
    where = "\n".join(f"  {p}" for p in searched)
    names = ", ".join(AAN_FILES.values())
    return (
        f"AAN retrieval files ({names}) not found; searched\n{where}\n"
        "They cannot be downloaded by ssmjax (the AAN texts are not redistributable). They "
        "are in LRA's lra_release.gz "
        "(https://storage.googleapis.com/long-range-arena/lra_release.gz, ~7.7 GB, reported "
        "to return HTTP 403 since 2026; the bucket's aan/*.only_ids.tsv files hold no "
        "text). Extract only the tsv_data folder with\n"
        "  ssmjax.data.download.extract_members('lra_release.gz', 'tsv_data', DIR)\n"
        "and pass data_dir=DIR (the folder lra_release/lra_release/tsv_data is found under "
        "it), or put the three files in $SSMJAX_DATA/retrieval/tsv_data (default "
        "~/.cache/ssmjax/retrieval/tsv_data)."
    )


def _find_data_dir(data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        root = Path(os.environ.get("SSMJAX_DATA", Path.home() / ".cache" / "ssmjax"))
        bases = [root / "retrieval", root / "aan", root / "lra_release", root]
    else:
        bases = [Path(data_dir).expanduser()]
    searched = []
    for base in bases:
        for layout in _LAYOUTS:
            folder = base / layout if layout else base
            searched.append(folder)
            if all((folder / name).is_file() for name in AAN_FILES.values()):
                return folder
    raise FileNotFoundError(_how_to_get(searched))


def _char_vocab(path: Path, room: int, progress: bool, total: int) -> list[str]:
    counter = _CharCounter()
    rows = read_aan(path)
    for _, _, _, text1, text2 in tqdm(
        rows, total=total, desc="AAN vocabulary", disable=not progress, leave=False
    ):
        counter.add(text1[:room])
        counter.add(text2[:room])
    return _vocab_from_counts(counter.flush(), min_freq=1)


def load_retrieval(
    data_dir: str | os.PathLike | None = None,
    *,
    variant: Variant = "lra",
    max_len: int = 4000,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """LRA Retrieval (AAN citation pairs) from ``tsv_data/new_aan_pairs.*.tsv``.

    ``data_dir`` may be the folder with the three TSVs, or one with ``tsv_data``,
    ``lra_release/tsv_data`` or ``lra_release/lra_release/tsv_data`` under it. The files
    are streamed once (twice for the training file with ``variant="s4"``), after a fast
    binary pass that counts their lines and computes their SHA-256, straight into
    memory-mapped ``.npy`` arrays under ``cache_dir("retrieval", "cache", key)`` (key:
    the files' paths, sizes and times, the variant and ``max_len``); later loads map
    them. About 1.2 GB for the official training split at 4000 tokens.

    Args:
      data_dir: the data folder; ``None`` searches ``$SSMJAX_DATA/retrieval``,
        ``$SSMJAX_DATA/aan`` and ``$SSMJAX_DATA/lra_release``.
      variant: ``"lra"`` (UTF-8 bytes + 1, vocabulary 257) or ``"s4"`` (characters,
        ``<eos>``, vocabulary from the training file); see the module docstring.
      max_len: tokens per document (4000 in LRA and S4), the ``<eos>`` included.
      cache: read and write the token cache (without it the arrays are built in memory).
      progress: show progress bars.

    Returns:
      A :class:`Dataset` with ``inputs`` ``(n, 2, max_len)`` uint8 (0 = padding),
      ``lengths`` ``(n, 2)`` int32, ``labels`` ``(n,)`` int32 (1 = the papers are linked
      by a citation), 2 classes; ``val`` is ``new_aan_pairs.eval.tsv``.

    Raises:
      FileNotFoundError: the files are missing; the message says where to get them and
        where to put them.
      ValueError: a malformed line (file and line number in the message).
    """
    variant = _check_variant(variant)
    max_len = int(max_len)
    folder = _find_data_dir(data_dir)
    files = {s: folder / name for s, name in AAN_FILES.items()}
    key = {"files": file_stats(files.values()), "variant": variant, "max_len": max_len}
    entry = cache_entry("retrieval", {"cache_version": _CACHE_VERSION, **key}) if cache else None
    loaded = read_cache(entry, _CACHE_VERSION) if cache else None
    if loaded is None:
        manifest, splits = _build(files, variant, max_len, entry, progress)
        if entry is not None:
            loaded = read_cache(entry, _CACHE_VERSION)
            if loaded is None:  # the cache could not be written: keep the in-memory arrays
                entry = None
    if loaded is not None:
        manifest, splits = loaded
    return Dataset(
        name="retrieval",
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=2,
        seq_len=max_len,
        vocab_size=manifest["vocab_size"],
        info={
            "variant": variant,
            "tokens": TOKENS_NOTE[variant],
            "source": f"AAN pairs in {folder}",
            "data_dir": str(folder),
            "sources": manifest["sources"],
            "sha256": manifest["sha256"],
            "vocab": manifest["vocab"],
            "pad_id": PAD_ID,
            "eos_id": EOS_ID if variant == "s4" else None,
            "truncated": manifest["truncated"],
            "bytes_0xff": manifest["bytes_0xff"],
            "cache": str(entry) if entry is not None else None,
            "val": AAN_FILES["val"],
        },
    )


def _encoder(variant: str, max_len: int, table: np.ndarray | None):
    """``encode(text) -> (ids, cut, n_0xff)`` for one document."""
    if variant == "s4":
        room = max_len - 1
        return lambda text: (_char_ids(text, table, max_len, eos=True), len(text) > room, 0)
    return lambda text: _byte_ids(text, max_len)


def _build(
    files: dict[str, Path], variant: str, max_len: int, entry: Path | None, progress: bool
) -> tuple[dict, dict[str, Split]]:
    """Tokenises the three files, into a new cache entry when ``entry`` is given."""
    scans = {s: _scan(p) for s, p in files.items()}
    vocab, table = None, None
    dtype, vocab_size = np.dtype(np.uint8), BYTE_VOCAB_SIZE
    if variant == "s4":
        vocab = _char_vocab(files["train"], max_len - 1, progress, scans["train"][0])
        table = _char_table(vocab)
        dtype, vocab_size = table.dtype, len(vocab)
    encode = _encoder(variant, max_len, table)
    tmp = None
    if entry is not None:
        try:
            tmp = new_entry(entry)
        except OSError:  # a read-only cache: build in memory
            tmp = None

    def allocate(split: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shapes = {"inputs": (n, 2, max_len), "labels": (n,), "lengths": (n, 2)}
        dtypes = {"inputs": dtype, "labels": np.int32, "lengths": np.int32}
        if tmp is None:
            return tuple(np.zeros(shapes[k], dtypes[k]) for k in shapes)
        return tuple(
            np.lib.format.open_memmap(tmp / f"{split}_{k}.npy", "w+", dtypes[k], shapes[k])
            for k in shapes
        )

    splits, examples, truncated, n_ff = {}, {}, {}, 0
    try:
        for s, path in files.items():
            inputs, labels, lengths = allocate(s, scans[s][0])
            n, cut = 0, 0
            rows = tqdm(
                read_aan(path),
                total=scans[s][0],
                desc=f"AAN {s}",
                disable=not progress,
                leave=False,
            )
            for label, _, _, text1, text2 in rows:
                for j, text in enumerate((text1, text2)):
                    ids, was_cut, ff = encode(text)
                    inputs[n, j, : len(ids)] = ids
                    lengths[n, j] = len(ids)
                    cut += was_cut
                    n_ff += ff
                labels[n] = label
                n += 1
            splits[s] = Split(inputs[:n], labels[:n], lengths[:n])
            examples[s], truncated[s] = n, cut
        manifest = {
            "cache_version": _CACHE_VERSION,
            "variant": variant,
            "max_len": max_len,
            "vocab": vocab,
            "vocab_size": vocab_size,
            "sources": {s: str(p.resolve()) for s, p in files.items()},
            "sha256": {s: scans[s][1] for s in files},
            "examples": examples,
            "truncated": truncated,
            "bytes_0xff": n_ff,
        }
        if tmp is not None:
            for split in splits.values():
                for a in (split.inputs, split.labels, split.lengths):
                    a.flush()
            splits = {}  # the caller maps the committed files read-only
            commit_entry(tmp, entry, manifest)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, splits
