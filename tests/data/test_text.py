"""LRA Text (IMDb): the archive format, download + checksum, byte and char tokenisers, cache."""

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssmjax.data import iterate_batches
from ssmjax.data import text as tx
from ssmjax.data.download import ChecksumError, DownloadError
from ssmjax.data.registry import load

# (split, label folder, file name) -> review; the real archive's layout and naming
REVIEWS = {
    ("train", "pos", "0_9.txt"): "Great film! Ünïcödé 😀 <br />Loved it.",
    ("train", "pos", "10_7.txt"): "aaa",
    ("train", "pos", "2_8.txt"): "  good\n",
    ("train", "neg", "0_1.txt"): 'Bad. 日本 "quoted"',
    ("train", "neg", "1_3.txt"): "b" * 50,
    ("test", "pos", "0_10.txt"): "é",
    ("test", "neg", "0_1.txt"): "nope",
    ("test", "neg", "3_2.txt"): "xyz 😀",
}
UNSUP = {("train", "unsup", "0_0.txt"): "unlabelled review"}


def write_archive(path: Path, reviews=REVIEWS) -> Path:
    """A tiny ``aclImdb_v1.tar.gz`` with the official layout (plus unsup and extras)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in ["aclImdb/imdb.vocab", "aclImdb/README"]:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        for (split, label, fname), review in {**reviews, **UNSUP}.items():
            data = review.encode("utf-8")
            info = tarfile.TarInfo(f"aclImdb/{split}/{label}/{fname}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """Serves a fixture archive through a file:// mirror with its own checksum."""
    archive = write_archive(tmp_path / "mirror" / tx.IMDB_ARCHIVE)
    monkeypatch.setattr(tx, "IMDB_MIRRORS", (archive.as_uri(),))
    monkeypatch.setattr(tx, "IMDB_SHA256", sha256(archive))
    monkeypatch.setattr(tx, "IMDB_SIZE", archive.stat().st_size)
    return archive


def expected(split):
    """Texts and labels in the loader's order: neg then pos, by numeric id."""
    rows = [(k, v) for k, v in REVIEWS.items() if k[0] == split]
    rows.sort(key=lambda kv: (kv[0][1] == "pos", int(kv[0][2].split("_")[0])))
    return [v for _, v in rows], [int(k[1] == "pos") for k, _ in rows]


def test_download_extract_and_byte_tokens(tmp_path, mirror):
    ds = tx.load_text(tmp_path / "data", max_len=16, progress=False)
    assert (tmp_path / "data" / tx.IMDB_ARCHIVE).is_file()
    assert not (tmp_path / "data" / "aclImdb" / "train" / "unsup").exists()
    assert ds.name == "text" and ds.num_classes == 2 and ds.vocab_size == 257
    assert ds.seq_len == 16 and ds.info["variant"] == "lra"
    assert ds.info["sha256"] == tx.IMDB_SHA256 and ds.info["checksum"] == "verified"
    assert "test split" in ds.info["val"] and ds.val is ds.test
    for split in ("train", "test"):
        texts, labels = expected(split)
        data = getattr(ds, split)
        assert data.inputs.shape == (len(texts), 16) and data.inputs.dtype == np.uint8
        assert data.labels.tolist() == labels
        for row, n, text in zip(data.inputs, data.lengths, texts):
            ids = [b + 1 for b in text.strip().encode("utf-8")][:16]  # TFDS strips
            assert n == len(ids) and row[:n].tolist() == ids and not row[n:].any()
    # non-ASCII: "é" is two UTF-8 bytes, each + 1
    assert ds.test.inputs[2, :3].tolist() == [0xC3 + 1, 0xA9 + 1, 0]
    n_cut = sum(len(t.strip().encode()) > 16 for t in expected("train")[0])
    assert ds.info["truncated"] == {"train": n_cut, "test": 0} and n_cut == 3


def test_char_variant_vocab_eos_and_unk(tmp_path, mirror):
    ds = tx.load_text(tmp_path, variant="s4", max_len=12, min_freq=2, progress=False)
    texts, labels = expected("train")
    cut = [t[:11] for t in texts]  # S4 cuts before building the vocabulary; no strip
    vocab = tx.build_char_vocab(texts, max_len=11, min_freq=2)
    assert ds.info["vocab"] == vocab and ds.vocab_size == len(vocab)
    assert vocab[:3] == ["<pad>", "<unk>", "<eos>"]
    counts = {c: "".join(cut).count(c) for c in set("".join(cut))}
    assert vocab[3] == "b" and counts["b"] == 11  # most frequent first
    assert set(vocab[3:]) == {c for c, n in counts.items() if n >= 2}
    assert [counts[c] for c in vocab[3:]] == sorted((counts[c] for c in vocab[3:]), reverse=True)
    index = {t: i for i, t in enumerate(vocab)}
    for row, n, text in zip(ds.train.inputs, ds.train.lengths, texts):
        ids = [index.get(c, 1) for c in text[:11]] + [2]
        assert n == len(ids) and row[:n].tolist() == ids and not row[n:].any()
    assert ds.train.labels.tolist() == labels and ds.info["eos_id"] == 2
    # test characters unseen in training (é, 😀) are <unk>
    test_texts, _ = expected("test")
    row = ds.test.inputs[test_texts.index("é")]
    assert row[:3].tolist() == [1, 2, 0]


def test_char_is_code_points_not_bytes():
    emoji = "😀é"
    vocab = tx.build_char_vocab([emoji])
    tokens, lengths = tx.encode_chars([emoji], vocab, max_len=8)
    assert lengths.tolist() == [3]  # two characters + <eos>, not 6 bytes
    assert tokens[0, :3].tolist() == [4, 3, 2]  # a tie: é (U+E9) before 😀 (U+1F600)
    tokens_b, lengths_b = tx.encode_bytes([emoji], max_len=8)
    assert lengths_b.tolist() == [6]
    assert tokens_b[0, :6].tolist() == [b + 1 for b in emoji.encode()]


def test_byte_truncation_and_0xff_rule():
    tokens, lengths = tx.encode_bytes(["abcdef", ""], max_len=4)
    assert tokens.tolist() == [[98, 99, 100, 101], [0, 0, 0, 0]] and lengths.tolist() == [4, 0]
    # a raw 0xFF byte (never in UTF-8) read with surrogateescape is stored as 255
    raw = b"\xff\xfea".decode("utf-8", "surrogateescape")
    tokens, _ = tx.encode_bytes([raw], max_len=4)
    assert tokens[0, :3].tolist() == [255, 255, 98]


def test_cache_is_reused(tmp_path, mirror):
    first = tx.load_text(tmp_path, max_len=32, progress=False)
    second = tx.load_text(tmp_path, max_len=32, progress=False)
    assert isinstance(second.train.inputs, np.memmap)
    assert first.info["cache"] == second.info["cache"]
    np.testing.assert_array_equal(first.train.inputs, second.train.inputs)
    manifest = json.loads((Path(second.info["cache"]) / "manifest.json").read_text())
    assert manifest["variant"] == "lra" and manifest["examples"] == {"train": 5, "test": 3}
    other = tx.load_text(tmp_path, max_len=32, variant="s4", progress=False)
    assert other.info["cache"] != first.info["cache"]
    # an edited review is read again
    review = tmp_path / "aclImdb" / "test" / "pos" / "0_10.txt"
    review.write_text("changed!")
    changed = tx.load_text(tmp_path, max_len=32, progress=False)
    assert changed.info["cache"] != first.info["cache"]
    assert changed.test.lengths.tolist()[-1] == len("changed!")


def test_extracted_folder_without_archive(tmp_path, mirror):
    with tarfile.open(mirror) as tar:
        tar.extractall(tmp_path / "user", filter="data")
    ds = tx.load_text(tmp_path / "user" / "aclImdb", download=False, cache=False, progress=False)
    assert len(ds.train) == 5 and ds.info["sha256"] is None
    assert "not checked" in ds.info["checksum"]


def test_checksum_mismatch(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(tx, "IMDB_SHA256", "0" * 64)
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        tx.load_text(tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "aclImdb").exists()


def test_offline_download_error_names_the_file(tmp_path, monkeypatch):
    # an unreachable mirror (loopback, closed port: no DNS lookup leaves the machine)
    monkeypatch.setattr(tx, "IMDB_MIRRORS", ("http://127.0.0.1:9/aclImdb_v1.tar.gz",))
    with pytest.raises(DownloadError) as info:
        tx.load_text(tmp_path, progress=False)
    message = str(info.value)
    assert tx.IMDB_ARCHIVE in message and str(tmp_path / tx.IMDB_ARCHIVE) in message
    assert tx.IMDB_SHA256 in message


def test_missing_data_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        tx.load_text(tmp_path / "nothing", download=False)
    message = str(info.value)
    assert "aclImdb_v1.tar.gz" in message and "aclImdb/{train,test}/{pos,neg}" in message
    assert str(tmp_path / "nothing") in message and "$SSMJAX_DATA/text" in message


def test_local_archive_without_download(tmp_path, mirror):
    write_archive(tmp_path / "d" / tx.IMDB_ARCHIVE)
    ds = tx.load_text(tmp_path / "d", download=False, cache=False, progress=False)
    assert len(ds.test) == 3


def test_default_location_and_registry(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv("SSMJAX_DATA", str(tmp_path / "home"))
    ds = load("text", max_len=8, progress=False)
    assert ds.info["data_dir"] == str(tmp_path / "home" / "text" / "aclImdb")
    batch = next(iterate_batches(ds.train, 4))
    assert batch["inputs"].shape == (4, 8) and batch["mask"].sum() == sum(ds.train.lengths[:4])


def test_build_text_dataset_front_end():
    train = (["good movie", "bad movie", "good"], [1, 0, 1])
    test = (["good?", "bad"], [1, 0])
    ds = tx.build_text_dataset(train, test, variant="s4", max_len=6, min_freq=2)
    assert ds.info["vocab"][:3] == ["<pad>", "<unk>", "<eos>"]
    assert ds.train.inputs.shape == (3, 6) and ds.test.labels.tolist() == [1, 0]
    assert ds.test.lengths.tolist() == [6, 4]
    assert tx.build_text_dataset(train, test).vocab_size == 257
