"""LRA Retrieval (AAN): the TSV format (no header, quoting off), byte/char pairs, cache."""

import json
from pathlib import Path

import numpy as np
import pytest

from ssmjax.data import iterate_batches
from ssmjax.data import retrieval as rt
from ssmjax.data import text as tx
from ssmjax.data.registry import load

LONG = "Long paper. " * 40  # 480 characters, longer than max_len below
# three rows per file: labels written as 1 / 0 / 1.0, a " inside a text, non-ASCII
ROWS = {
    "train": [
        ("1", "P01-1001", "P02-2002", 'He said "hi" twice', "Résumé of ⟨results⟩ — ok"),
        ("0", "P03-3003", "W04-4004", LONG, "short"),
        ("1.0", "J05-5005", "N06-6006", '"open quote only', "ASCII only"),
    ],
    "val": [
        ("0", "A", "B", "naïve", "x"),
        ("1.0", "C", "D", "y", 'q"q'),
        ("1", "E", "F", "日本語", "z"),
    ],
    "test": [
        ("1", "G", "H", "abc", "def"),
        ("0.0", "I", "J", "", "empty first"),
        ("0", "K", "L", "😀", "end"),
    ],
}


def write_tsv(folder: Path, rows=ROWS, line_end="\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in rt.AAN_FILES.items():
        lines = ["\t".join(r) + line_end for r in rows[split]]
        (folder / name).write_bytes("".join(lines).encode("utf-8"))
    return folder


def test_read_aan_rows(tmp_path):
    folder = write_tsv(tmp_path / "tsv_data", line_end="\r\n")
    rows = list(rt.read_aan(folder / rt.AAN_FILES["train"]))
    assert [r[0] for r in rows] == [1, 0, 1]
    assert rows[0][3] == 'He said "hi" twice' and rows[2][3] == '"open quote only'
    assert rows[0][4] == "Résumé of ⟨results⟩ — ok" and rows[1][3] == LONG
    assert rows[0][1:3] == ("P01-1001", "P02-2002")


def test_byte_pairs(tmp_path):
    folder = write_tsv(tmp_path / "tsv_data")
    ds = rt.load_retrieval(folder, max_len=64, cache=False, progress=False)
    assert ds.is_pair and ds.vocab_size == 257 and ds.num_classes == 2 and ds.seq_len == 64
    for split in ("train", "val", "test"):
        data = getattr(ds, split)
        assert data.inputs.shape == (3, 2, 64) and data.inputs.dtype == np.uint8
        assert data.lengths.shape == (3, 2) and data.lengths.dtype == np.int32
        assert data.labels.tolist() == [int(float(r[0])) for r in ROWS[split]]
        for i, row in enumerate(ROWS[split]):
            for j in (0, 1):
                ids = [b + 1 for b in row[3 + j].encode("utf-8")][:64]
                n = data.lengths[i, j]
                assert n == len(ids) and data.inputs[i, j, :n].tolist() == ids
                assert not data.inputs[i, j, n:].any()
    assert ds.train.lengths[1].tolist() == [64, 5]  # the long document is cut
    assert ds.info["truncated"] == {"train": 1, "val": 0, "test": 0}
    assert ds.test.lengths[1].tolist() == [0, len("empty first")]  # an empty document
    assert ds.info["val"] == "new_aan_pairs.eval.tsv"


def test_char_pairs_s4(tmp_path):
    folder = write_tsv(tmp_path / "tsv_data")
    ds = rt.load_retrieval(folder, variant="s4", max_len=32, cache=False, progress=False)
    texts = [t[:31] for r in ROWS["train"] for t in r[3:]]
    vocab = ds.info["vocab"]
    assert vocab == tx.build_char_vocab(texts) and ds.vocab_size == len(vocab)
    index = {t: i for i, t in enumerate(vocab)}
    for split in ("train", "val", "test"):
        data = getattr(ds, split)
        for i, row in enumerate(ROWS[split]):
            for j in (0, 1):
                ids = [index.get(c, tx.UNK_ID) for c in row[3 + j][:31]] + [tx.EOS_ID]
                n = data.lengths[i, j]
                assert n == len(ids) and data.inputs[i, j, :n].tolist() == ids
    assert ds.train.lengths[1, 0] == 32 and ds.train.inputs[1, 0, 31] == tx.EOS_ID
    assert ds.val.inputs[2, 0, :4].tolist() == [1, 1, 1, 2]  # 日本語: unseen in train
    assert ds.train.lengths[0, 1] == len("Résumé of ⟨results⟩ — ok") + 1  # chars, not bytes


def test_cache_streams_into_memory_maps(tmp_path):
    folder = write_tsv(tmp_path / "tsv_data")
    (folder / rt.AAN_FILES["test"]).write_text(
        "\t".join(ROWS["test"][0]) + "\n\n" + "\t".join(ROWS["test"][1])  # blank, no final \n
    )
    first = rt.load_retrieval(folder, max_len=16, progress=False)
    again = rt.load_retrieval(folder, max_len=16, progress=False)
    assert isinstance(again.train.inputs, np.memmap) and again.train.inputs.dtype == np.uint8
    assert first.info["cache"] == again.info["cache"] and len(again.test) == 2
    memory = rt.load_retrieval(folder, max_len=16, cache=False, progress=False)
    for split in ("train", "val", "test"):
        a, b = getattr(again, split), getattr(memory, split)
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.lengths, b.lengths)
        np.testing.assert_array_equal(a.labels, b.labels)
    manifest = json.loads((Path(again.info["cache"]) / "manifest.json").read_text())
    assert manifest["examples"] == {"train": 3, "val": 3, "test": 2}
    assert len(manifest["sha256"]["train"]) == 64
    s4 = rt.load_retrieval(folder, variant="s4", max_len=16, progress=False)
    assert s4.info["cache"] != first.info["cache"] and isinstance(s4.val.inputs, np.memmap)


def test_pair_batches(tmp_path):
    ds = rt.load_retrieval(write_tsv(tmp_path / "d"), max_len=64, cache=False, progress=False)
    batch = next(iterate_batches(ds.train, 2, prefetch=0))
    assert batch["inputs"].shape == (2, 2, 64) and batch["mask"].shape == (2, 2, 64)
    assert batch["mask"].sum(-1).tolist() == ds.train.lengths[:2].tolist()


def test_lra_layouts_and_default_location(tmp_path, monkeypatch):
    write_tsv(tmp_path / "x" / "lra_release" / "lra_release" / "tsv_data")
    assert len(rt.load_retrieval(tmp_path / "x", cache=False, progress=False).train) == 3
    monkeypatch.setenv("SSMJAX_DATA", str(tmp_path / "home"))
    write_tsv(tmp_path / "home" / "retrieval" / "tsv_data")
    ds = load("retrieval", max_len=8, cache=False, progress=False)
    assert ds.train.inputs.shape == (3, 2, 8)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        rt.load_retrieval(tmp_path / "empty")
    message = str(info.value)
    for name in rt.AAN_FILES.values():
        assert name in message
    assert "tsv_data" in message and "lra_release.gz" in message
    assert "$SSMJAX_DATA/retrieval/tsv_data" in message and str(tmp_path / "empty") in message


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("1\tA\tB\tonly four", "expected 5 tab-separated columns"),
        ("1\tA\tB", "only_ids"),
        ("yes\tA\tB\tx\ty", "not a number"),
        ("2\tA\tB\tx\ty", "not 0 or 1"),
    ],
)
def test_malformed_lines(tmp_path, line, match):
    path = tmp_path / "bad.tsv"
    path.write_text("0\tA\tB\tx\ty\n" + line + "\n")
    with pytest.raises(ValueError, match=match) as info:
        list(rt.read_aan(path))
    assert "line 2" in str(info.value)


def test_carriage_return_inside_a_text_stays(tmp_path):
    path = tmp_path / "cr.tsv"
    path.write_bytes(b"1\tA\tB\tone\rtwo\tthree\r\n")
    assert list(rt.read_aan(path)) == [(1, "A", "B", "one\rtwo", "three")]
