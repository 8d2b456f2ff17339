"""LRA Text: byte- or character-level IMDb sentiment classification (Maas et al. 2011).

The data are the 50,000 labelled reviews of the ``aclImdb_v1.tar.gz`` archive (84,125,825
bytes, SHA-256 ``c40f74a1...1658fe``, the file TFDS ``imdb_reviews`` and HF ``imdb`` are
built from). :func:`load_text` downloads it (mirrors, resume, checksum:
:mod:`ssmjax.data.download`), extracts only ``aclImdb/{train,test}/{pos,neg}/`` (the
50,000 unlabelled ``train/unsup`` reviews are skipped) and reads one review per
``<id>_<rating>.txt`` file. Labels: ``neg`` = 0, ``pos`` = 1. Within a split the order is
all ``neg`` reviews, then all ``pos`` reviews, each by numeric id (training shuffles).

**Variants** (``variant=``):

``"lra"`` (Tay et al. 2021; TFDS ``ByteTextEncoder``)
  the review (``strip()``-ed, as the TFDS builder does, ``<br />`` tags kept) as UTF-8
  bytes, id = byte + 1, padding 0, vocabulary 257; truncated and padded to ``max_len``,
  no end token. The LRA paper uses 4K tokens, its repository config ``max_length = 1000``;
  the default here is 4096 (as S4); pass ``max_len=1000`` for the repository setting.
  Ids are stored as uint8: valid UTF-8 never contains the bytes 0xFE/0xFF, and a raw 0xFF
  (id 256) in a malformed file is stored as 255 and counted in ``info["bytes_0xff"]``.
``"s4"`` (S4/S5; HF ``imdb``, ``list(text)``)
  Unicode characters (code points, not bytes) of the unstripped review, cut to
  ``max_len - 1`` and followed by ``<eos>``, padded to ``max_len`` (4096). The vocabulary
  is built from the (cut) training reviews: specials ``<pad>`` = 0, ``<unk>`` = 1,
  ``<eos>`` = 2, then every character seen at least ``min_freq`` (15) times, most frequent
  first, ties by code point (torchtext's order); rarer characters map to ``<unk>``. S4
  reports about 135 tokens.

**Splits**: train = ``train`` (25,000), test = ``test`` (25,000). IMDb has no validation
set: as in LRA (and S4/S5, which validate on nothing), ``val`` is the test split again,
and ``info["val"]`` says so.

Reviews from another source (HF ``datasets``, TFDS) go through :func:`build_text_dataset`
with the same tokenisation.

This module also holds the tokenisers and the processed-array cache shared by
:mod:`ssmjax.data.retrieval` and :mod:`ssmjax.data.images`.
"""

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from ssmjax.data._cache import cached
from ssmjax.data._dataset import Dataset, Split, cache_dir
from ssmjax.data.download import download, extract_members, verify

__all__ = [
    "BYTE_VOCAB_SIZE",
    "IMDB_ARCHIVE",
    "IMDB_MIRRORS",
    "IMDB_SHA256",
    "IMDB_SIZE",
    "SPECIALS",
    "build_char_vocab",
    "build_text_dataset",
    "encode_bytes",
    "encode_chars",
    "load_text",
    "read_imdb",
]

Variant = Literal["lra", "s4"]

IMDB_ARCHIVE = "aclImdb_v1.tar.gz"
IMDB_MIRRORS = (
    "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
)
"""Where :func:`load_text` downloads the archive from, tried in order."""
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
"""SHA-256 of ``aclImdb_v1.tar.gz`` (TFDS ``imdb_reviews/checksums.tsv``)."""
IMDB_SIZE = 84_125_825
"""Size of ``aclImdb_v1.tar.gz`` in bytes."""

BYTE_VOCAB_SIZE = 257
"""Byte-level vocabulary: padding 0 and the 256 byte values as ids 1..256."""
SPECIALS = ("<pad>", "<unk>", "<eos>")
"""Character-level special tokens, ids 0, 1, 2 (S4's order)."""
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
TOKENS_NOTE = {
    "lra": "UTF-8 bytes + 1 (LRA, TFDS ByteTextEncoder)",
    "s4": "Unicode characters (S4), <eos> appended",
}

_SPLITS = ("train", "test")
_LABELS = ("neg", "pos")  # label 0, label 1 (TFDS/HF label names)
_MAX_CODE_POINT = 0x110000
_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() removes (the TFDS builder)
_CACHE_VERSION = 1


def _check_variant(variant: str) -> str:
    if variant not in ("lra", "s4"):
        raise ValueError(f"variant must be 'lra' or 's4', got {variant!r}")
    return variant


# ----------------------------------------------------------------------------- tokenisers


def _utf8(text: str) -> bytes:
    # surrogateescape round-trips the raw bytes of a file decoded with the same handler
    return text.encode("utf-8", "surrogateescape")


def _byte_ids(text: str, max_len: int) -> tuple[np.ndarray, bool, int]:
    """Byte ids (byte + 1, uint8) of the first ``max_len`` bytes.

    Returns:
      The ids, whether the text was cut, and how many 0xFF bytes were stored as 255.
    """
    data = _utf8(text[: max_len + 1])  # a character is at least one byte
    raw = np.frombuffer(data[:max_len], np.uint8)
    n_ff = int(np.count_nonzero(raw == 0xFF))
    if n_ff:
        raw = np.minimum(raw, 0xFE)
    return raw + np.uint8(1), len(data) > max_len, n_ff


def _code_points(text: str) -> np.ndarray:
    """``(len(text),)`` uint32 code points (lone surrogates included)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4")


def encode_bytes(texts: Iterable[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """LRA byte-level encoding: UTF-8 bytes + 1, truncated and padded with 0.

    This is TFDS ``ByteTextEncoder`` (vocabulary 257) as LRA's text and retrieval
    pipelines use it.

    Args:
      texts: ``n`` strings.
      max_len: padded length ``l``; longer texts keep their first ``l`` bytes.

    Returns:
      ``tokens`` ``(n, l)`` uint8 (0 = padding, ids 1..255; a raw 0xFF byte, which UTF-8
      text never contains, is stored as 255) and ``lengths`` ``(n,)`` int32.

    >>> tokens, lengths = encode_bytes(["hi", "é"], max_len=3)
    >>> tokens.tolist(), lengths.tolist()
    ([[105, 106, 0], [196, 170, 0]], [2, 2])
    """
    rows = [_byte_ids(t, max_len)[0] for t in texts]
    return _pad(rows, max_len, np.uint8)


def _pad(rows: Sequence[np.ndarray], max_len: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((len(rows), max_len), dtype)
    lengths = np.zeros(len(rows), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        lengths[i] = len(row)
    return tokens, lengths


class _CharCounter:
    """Counts code points over many strings with ``np.bincount`` in batches."""

    def __init__(self, flush_chars: int = 1 << 24):
        self.counts = np.zeros(_MAX_CODE_POINT, np.int64)
        self._parts: list[str] = []
        self._size = 0
        self._flush_chars = flush_chars

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size >= self._flush_chars:
            self.flush()

    def flush(self) -> np.ndarray:
        if self._parts:
            cps = _code_points("".join(self._parts))
            self.counts += np.bincount(cps, minlength=_MAX_CODE_POINT)
            self._parts, self._size = [], 0
        return self.counts


def _vocab_from_counts(counts: np.ndarray, min_freq: int) -> list[str]:
    keep = np.flatnonzero(counts >= max(min_freq, 1))
    order = np.lexsort((keep, -counts[keep]))  # most frequent first, ties by code point
    return [*SPECIALS, *(chr(int(c)) for c in keep[order])]


def build_char_vocab(
    texts: Iterable[str], *, max_len: int | None = None, min_freq: int = 1
) -> list[str]:
    """A character vocabulary as S4 builds it (torchtext ``build_vocab_from_iterator``).

    Args:
      texts: training strings.
      max_len: count only the first ``max_len`` characters of each string (S4 cuts the
        texts before it builds the vocabulary), or ``None`` for all.
      min_freq: characters seen fewer times are left out (they encode as ``<unk>``).

    Returns:
      The tokens by id: ``["<pad>", "<unk>", "<eos>", c_1, c_2, ...]`` with the
      characters most frequent first, ties by code point.

    >>> build_char_vocab(["abba", "cab"], min_freq=2)
    ['<pad>', '<unk>', '<eos>', 'a', 'b']
    """
    counter = _CharCounter()
    for text in texts:
        counter.add(text if max_len is None else text[:max_len])
    return _vocab_from_counts(counter.flush(), min_freq)


def _char_table(vocab: Sequence[str]) -> np.ndarray:
    """Code point -> id lookup table ``(0x110000,)``; unknown characters give ``<unk>``."""
    if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
        raise ValueError(f"a character vocabulary starts with {SPECIALS}, got {vocab[:3]}")
    dtype = _token_dtype(len(vocab))
    table = np.full(_MAX_CODE_POINT, UNK_ID, dtype)
    for i, token in enumerate(vocab[len(SPECIALS) :], start=len(SPECIALS)):
        if len(token) != 1:
            raise ValueError(f"character vocabulary entry {i} is not one character: {token!r}")
        table[ord(token)] = i
    return table


def _token_dtype(vocab_size: int):
    return np.uint8 if vocab_size <= 256 else np.uint16


def _char_ids(text: str, table: np.ndarray, max_len: int, eos: bool) -> np.ndarray:
    ids = table[_code_points(text[: max_len - eos])]
    if eos:
        ids = np.append(ids, table.dtype.type(EOS_ID))
    return ids


def encode_chars(
    texts: Iterable[str], vocab: Sequence[str], max_len: int, *, eos: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """S4 character-level encoding: ids of the first ``max_len - 1`` characters + ``<eos>``.

    Args:
      texts: ``n`` strings.
      vocab: tokens by id, from :func:`build_char_vocab`.
      max_len: padded length ``l`` (the ``<eos>`` included).
      eos: append ``<eos>`` (S4 does); without it the first ``l`` characters are kept.

    Returns:
      ``tokens`` ``(n, l)`` uint8 (uint16 for a vocabulary over 256; 0 = padding) and
      ``lengths`` ``(n,)`` int32.

    >>> vocab = build_char_vocab(["abba"])
    >>> tokens, lengths = encode_chars(["abc", "b"], vocab, max_len=4)
    >>> tokens.tolist(), lengths.tolist()
    ([[3, 4, 1, 2], [4, 2, 0, 0]], [4, 2])
    """
    table = _char_table(vocab)
    rows = [_char_ids(t, table, max_len, eos) for t in texts]
    return _pad(rows, max_len, table.dtype)


# ----------------------------------------------------------------------------- IMDb files


def _review_order(path: Path) -> tuple:
    stem = path.stem.split("_")[0]
    return (0, int(stem), path.name) if stem.isdigit() else (1, 0, path.name)


def _review_files(folder: Path, split: str, label: str) -> list[Path]:
    sub = folder / split / label
    return sorted((p for p in sub.iterdir() if p.suffix == ".txt"), key=_review_order)


def _read_review(path: Path) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.read()


def read_imdb(
    folder: str | os.PathLike, *, strip: bool = True, progress: bool = False
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Reads the labelled reviews of an extracted ``aclImdb`` folder.

    Args:
      folder: the folder holding ``{train,test}/{pos,neg}/*.txt`` (``train/unsup`` is
        ignored).
      strip: strip surrounding ASCII white space (TFDS ``bytes.strip()``; HF ``imdb``
        does not strip).
      progress: show a progress bar.

    Returns:
      ``{"train": (texts, labels), "test": (texts, labels)}`` with ``labels`` ``(n,)``
      int32, ``neg`` = 0 then ``pos`` = 1, each by numeric file id.
    """
    folder = Path(folder)
    out = {}
    for split in _SPLITS:
        files = [
            (p, y) for y, label in enumerate(_LABELS) for p in _review_files(folder, split, label)
        ]
        texts = []
        for path, _ in tqdm(files, desc=f"IMDb {split}", disable=not progress, leave=False):
            text = _read_review(path)
            texts.append(text.strip(_ASCII_SPACE) if strip else text)
        out[split] = (texts, np.asarray([y for _, y in files], np.int32))
    return out


def _is_imdb_folder(folder: Path) -> bool:
    return all((folder / s / label).is_dir() for s in _SPLITS for label in _LABELS)


_LABELLED = re.compile(r"^(\./)?aclImdb/(train|test)/(pos|neg)(/|$)")


def _extract_imdb(archive: Path, sha256: str, root: Path, progress: bool) -> Path:
    """Extracts ``aclImdb/{train,test}/{pos,neg}`` into ``root/aclImdb`` (atomically)."""
    tmp = root / f".aclImdb.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        extract_members(archive, lambda name: bool(_LABELLED.match(name)), tmp, progress=progress)
        if not _is_imdb_folder(tmp / "aclImdb"):
            raise ValueError(
                f"{archive} does not hold aclImdb/{{train,test}}/{{pos,neg}}/; "
                "is it the IMDb archive aclImdb_v1.tar.gz?"
            )
        (tmp / "aclImdb" / ".ssmjax_source.json").write_text(
            json.dumps({"archive": str(archive), "sha256": sha256}) + "\n"
        )
        os.replace(tmp / "aclImdb", root / "aclImdb")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "aclImdb"


def _how_to_get(root: Path) -> str:
    return (
        f"IMDb reviews not found in {root}: expected an extracted folder "
        f"aclImdb/{{train,test}}/{{pos,neg}}/*.txt or the archive {IMDB_ARCHIVE} there.\n"
        f"Download {IMDB_MIRRORS[0]} ({IMDB_SIZE:,} bytes, sha256 {IMDB_SHA256}) and put it "
        f"in\n  {root}\n(or pass download=True, the default, on a machine with network "
        "access). With data_dir=None the loader uses $SSMJAX_DATA/text "
        "(default ~/.cache/ssmjax/text)."
    )


def _locate_imdb(root: Path, download_: bool, progress: bool) -> tuple[Path, str | None]:
    """The extracted ``aclImdb`` folder (extracting or downloading when needed).

    Returns:
      The folder and the archive's verified SHA-256 (``None`` for a folder the user
      extracted themselves).
    """
    for folder in (root, root / "aclImdb"):
        if _is_imdb_folder(folder):
            marker = folder / ".ssmjax_source.json"
            sha = json.loads(marker.read_text()).get("sha256") if marker.is_file() else None
            return folder, sha
    archive = root / IMDB_ARCHIVE
    if download_:
        download(IMDB_MIRRORS, archive, sha256=IMDB_SHA256, size=IMDB_SIZE, progress=progress)
    elif archive.is_file():
        verify(archive, sha256=IMDB_SHA256, size=IMDB_SIZE)
    else:
        raise FileNotFoundError(_how_to_get(root))
    return _extract_imdb(archive, IMDB_SHA256, root, progress), IMDB_SHA256


def _folder_key(folder: Path) -> str:
    """A digest of every review file's name, size and modification time."""
    h = hashlib.sha256(str(folder.resolve()).encode())
    for split in _SPLITS:
        for label in _LABELS:
            with os.scandir(folder / split / label) as it:
                for e in sorted(it, key=lambda e: e.name):
                    st = e.stat()
                    h.update(f"{split}/{label}/{e.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- datasets


def _default_max_len(variant: str) -> int:
    return {"lra": 4096, "s4": 4096}[_check_variant(variant)]


def _encode_splits(
    data: Mapping[str, tuple[Sequence[str], np.ndarray]],
    variant: str,
    max_len: int,
    min_freq: int,
) -> tuple[dict, dict[str, Split]]:
    """Tokenises ``{split: (texts, labels)}``; returns (manifest fields, splits)."""
    splits, meta = {}, {"truncated": {}}
    if variant == "lra":
        n_ff = 0
        for s, (texts, labels) in data.items():
            rows, cut = [], 0
            for t in texts:
                ids, was_cut, ff = _byte_ids(t, max_len)
                rows.append(ids)
                cut += was_cut
                n_ff += ff
            meta["truncated"][s] = cut
            tokens, lengths = _pad(rows, max_len, np.uint8)
            splits[s] = Split(tokens, np.asarray(labels, np.int32), lengths)
        meta.update(vocab=None, vocab_size=BYTE_VOCAB_SIZE, bytes_0xff=n_ff)
    else:
        vocab = build_char_vocab(data["train"][0], max_len=max_len - 1, min_freq=min_freq)
        for s, (texts, labels) in data.items():
            tokens, lengths = encode_chars(texts, vocab, max_len)
            meta["truncated"][s] = sum(len(t) > max_len - 1 for t in texts)
            splits[s] = Split(tokens, np.asarray(labels, np.int32), lengths)
        meta.update(vocab=vocab, vocab_size=len(vocab))
    return meta, splits


def _dataset(name: str, splits: Mapping[str, Split], manifest: dict, info: dict) -> Dataset:
    return Dataset(
        name=name,
        train=splits["train"],
        val=splits["test"],
        test=splits["test"],
        num_classes=2,
        seq_len=manifest["max_len"],
        vocab_size=manifest["vocab_size"],
        info={
            "variant": manifest["variant"],
            "tokens": TOKENS_NOTE[manifest["variant"]],
            "vocab": manifest["vocab"],
            "pad_id": PAD_ID,
            "eos_id": EOS_ID if manifest["variant"] == "s4" else None,
            "min_freq": manifest.get("min_freq"),
            "truncated": manifest["truncated"],
            "bytes_0xff": manifest.get("bytes_0xff"),
            "val": "the test split, reused (IMDb has no validation set; as LRA does)",
            **info,
        },
    )


def build_text_dataset(
    train: tuple[Sequence[str], Sequence[int]],
    test: tuple[Sequence[str], Sequence[int]],
    *,
    variant: Variant = "lra",
    max_len: int | None = None,
    min_freq: int = 15,
    source: str = "user-supplied texts",
) -> Dataset:
    """The Text task from reviews of any source (HF ``datasets``, TFDS, a CSV file).

    For example, with HF ``datasets`` installed::

        imdb = datasets.load_dataset("stanfordnlp/imdb")  # formerly "imdb"
        ds = build_text_dataset((imdb["train"]["text"], imdb["train"]["label"]),
                                (imdb["test"]["text"], imdb["test"]["label"]), variant="s4")

    The texts are used as given (:func:`load_text` strips them for ``"lra"`` as TFDS
    does); nothing is cached.

    Args:
      train: training texts and 0/1 labels.
      test: test texts and labels (also used as the validation split).
      variant: ``"lra"`` (bytes) or ``"s4"`` (characters), see the module docstring.
      max_len: padded length; ``None`` means 4096.
      min_freq: character-vocabulary threshold (``"s4"`` only).
      source: recorded in ``info["source"]``.

    Returns:
      A :class:`Dataset` with ``inputs`` ``(n, max_len)`` uint8, ``lengths`` ``(n,)``
      int32, 2 classes.

    >>> ds = build_text_dataset((["good", "bad"], [1, 0]), (["ok"], [1]), max_len=8)
    >>> ds.train.inputs[0, :5].tolist(), ds.vocab_size, ds.train.lengths.tolist()
    ([104, 112, 112, 101, 0], 257, [4, 3])
    """
    variant = _check_variant(variant)
    max_len = _default_max_len(variant) if max_len is None else int(max_len)
    data = {"train": train, "test": test}
    meta, splits = _encode_splits(data, variant, max_len, min_freq)
    manifest = {"variant": variant, "max_len": max_len, "min_freq": min_freq, **meta}
    return _dataset("text", splits, manifest, {"source": source, "cache": None})


def load_text(
    data_dir: str | os.PathLike | None = None,
    *,
    variant: Variant = "lra",
    max_len: int | None = None,
    min_freq: int = 15,
    download: bool = True,
    cache: bool = True,
    progress: bool = True,
) -> Dataset:
    """LRA Text (IMDb reviews, byte- or character-level) from ``aclImdb_v1.tar.gz``.

    ``data_dir`` may hold the extracted ``aclImdb/`` folder (or be it), or the archive,
    which is then extracted in place (only the labelled reviews). With ``download=True``
    a missing archive is downloaded into ``data_dir`` from :data:`IMDB_MIRRORS` and
    checked against :data:`IMDB_SHA256`. The token arrays are cached (memory-mapped on
    the next load) under ``cache_dir("text", "cache", key)``, keyed by the review files'
    names, sizes and times and the settings.

    Args:
      data_dir: the data folder; ``None`` is ``$SSMJAX_DATA/text`` (default
        ``~/.cache/ssmjax/text``).
      variant: ``"lra"`` (UTF-8 bytes + 1, vocabulary 257) or ``"s4"`` (characters,
        ``<eos>``, vocabulary from the training reviews); see the module docstring.
      max_len: padded length; ``None`` means 4096. LRA's repository config uses 1000.
      min_freq: character-vocabulary threshold for ``"s4"`` (15, as S4).
      download: download the archive when it is missing.
      cache: read and write the token cache.
      progress: show progress bars.

    Returns:
      A :class:`Dataset` with ``inputs`` ``(n, max_len)`` uint8 (0 = padding),
      ``labels`` ``(n,)`` int32 (0 = negative, 1 = positive), ``lengths`` ``(n,)`` int32;
      25,000 train and 25,000 test reviews, ``val`` = ``test``; ``info`` records the
      variant, vocabulary, archive checksum and cache folder.

    Raises:
      FileNotFoundError: no reviews and ``download=False``; the message says where to put
        the archive.
      ssmjax.data.download.DownloadError: the download failed (e.g. offline); the message
        lists the mirrors and where to put the file by hand.
    """
    variant = _check_variant(variant)
    max_len = _default_max_len(variant) if max_len is None else int(max_len)
    root = Path(data_dir).expanduser() if data_dir is not None else cache_dir("text")
    folder, archive_sha = _locate_imdb(root, download, progress)
    key = {
        "files": _folder_key(folder),
        "variant": variant,
        "max_len": max_len,
        "min_freq": min_freq if variant == "s4" else None,
    }

    def build():
        data = read_imdb(folder, strip=variant == "lra", progress=progress)
        meta, splits = _encode_splits(data, variant, max_len, min_freq)
        return {"variant": variant, "max_len": max_len, "min_freq": min_freq, **meta}, splits

    manifest, splits, entry = cached("text", key, _CACHE_VERSION, build, cache)
    info = {
        "source": f"aclImdb reviews in {folder}",
        "archive": IMDB_ARCHIVE,
        "sha256": archive_sha,
        "checksum": "verified" if archive_sha else "not checked (folder extracted by the user)",
        "data_dir": str(folder),
        "cache": str(entry) if entry is not None else None,
    }
    return _dataset("text", splits, manifest, info)
