"""ListOps: tokenizer, evaluator, generator, loader and cache, CLI."""

import json
import random
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmjax.data import listops as lo
from ssmjax.data.generate import main as generate_main
from ssmjax.data.registry import load

SPINN = (Path(__file__).parents[2] / "../shared/data/listops_spinn/test_d20s.tsv").resolve()
REPO = Path(__file__).parents[2]

# a tiny file in the official LRA format, written as LRA's generator does (csv module
# defaults: "\r\n" line ends), with hand-checked labels
OFFICIAL_ROWS = [
    ("( ( ( ( [MAX 2 ) 9 ) 4 ) ] )", 9),
    ("( ( ( ( ( [MED 1 ) 2 ) 3 ) 4 ) ] )", 2),
    ("( ( ( [SM 9 ) 9 ) ] )", 8),
    ("( ( ( [MIN ( ( ( [SM 5 ) 7 ) ] ) ) 3 ) ] )", 2),
]


def write_official(folder: Path, rows=OFFICIAL_ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        text = "Source\tTarget\r\n" + "".join(f"{s}\t{y}\r\n" for s, y in rows)
        (folder / f"basic_{split}.tsv").write_bytes(text.encode())
    return folder


# ----------------------------------------------------------------------------- tokenizer


def test_vocab_table():
    assert len(lo.TOKENS) == 15 and len(set(lo.TOKENS)) == 15
    assert lo.VOCAB["<pad>"] == 0 and lo.PAD_ID == 0
    assert [lo.VOCAB[t] for t in ("[MIN", "[MAX", "[MED", "[SM", "X")] == [1, 2, 3, 4, 5]
    assert [lo.VOCAB[str(d)] for d in range(10)] == list(range(6, 16))
    assert lo.VOCAB["<unk>"] == lo.UNK_ID == 16 and lo.VOCAB["<eos>"] == lo.EOS_ID == 17
    assert sorted(lo.VOCAB.values()) == list(range(18))
    assert lo.vocab_size("lra") == 17 and lo.vocab_size("s4") == 18
    with pytest.raises(ValueError, match="variant"):
        lo.vocab_size("tfds")


def test_tokenize_strips_parentheses_and_maps_bracket():
    nested = "( ( ( ( [MAX 2 ) 9 ) 4 ) ] )"
    assert lo.tokenize(nested) == ["[MAX", "2", "9", "4", "X"]
    assert lo.tokenize("[MAX 2 9 4 ]") == lo.tokenize(nested)
    assert lo.tokenize("(2)3") == ["23"]  # deleted, not replaced by a space (as LRA/S4)
    assert lo.tokenize("  \t[SM\t1  ]\r") == ["[SM", "1", "X"]


def test_encode_variants_and_unknown_tokens():
    assert lo.encode("( ( [SM 9 ) 9 ) ] )").tolist() == [4, 15, 15, 5]
    assert lo.encode("[SM 9 9 ]", variant="s4").tolist() == [4, 15, 15, 5, 17]
    assert lo.encode("[FIRST 12 3 ]").tolist() == [16, 16, 9, 5]
    assert lo.encode("[SM 9 9 ]", max_len=2).tolist() == [4, 15]
    assert lo.encode("[SM 9 9 ]", variant="s4", max_len=2).tolist() == [4, 17]
    tokens, lengths = lo.encode_batch(["[SM 9 9 ]", "7", ""], variant="s4")
    assert tokens.shape == (3, 2048) and tokens.dtype == np.uint8
    assert lengths.tolist() == [5, 2, 1]
    assert tokens[1, :3].tolist() == [13, 17, 0] and tokens[2, :2].tolist() == [17, 0]
    tokens, lengths = lo.encode_batch(["[SM 9 9 ]"])
    assert tokens.shape == (1, 2000) and lengths.tolist() == [4]


def test_decode_round_trip():
    source = "[MAX 2 [MED 1 2 3 ] 9 ]"
    assert lo.decode(lo.encode(source, variant="s4")) == source


# ----------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("[MED 1 2 3 4 ]", 2),  # int(numpy.median) = int(2.5)
        ("[MED 4 1 3 ]", 3),
        ("[MED 9 8 ]", 8),
        ("[SM 9 9 ]", 8),
        ("[SM 0 0 ]", 0),
        ("[MIN 5 3 7 ]", 3),
        ("[MAX 5 3 7 ]", 7),
        ("[FIRST 4 1 ]", 4),
        ("[LAST 4 1 ]", 1),
        ("7", 7),
        ("[MAX 2 [MIN 7 5 ] [SM 4 4 ] ]", 8),
        ("[SM [MED 1 2 3 4 ] [MAX 9 [MIN 1 2 ] ] ]", 1),
        ("( ( ( [MIN ( ( ( [SM 5 ) 7 ) ] ) ) 3 ) ] )", 2),
    ],
)
def test_evaluate_golden(expr, value):
    assert lo.evaluate(expr) == value
    assert lo.evaluate(lo.parse(expr)) == value


@pytest.mark.parametrize("bad", ["[MAX 2 9", "[MAX 2 ] ]", "2 3", "[MAX ]", "[FOO 1 ]", "[MAX a ]"])
def test_malformed_expressions(bad):
    with pytest.raises(ValueError):
        lo.evaluate(bad)
    with pytest.raises(ValueError):
        lo.parse(bad)


def test_median_matches_numpy_rule(rng):
    for _ in range(500):
        args = rng.integers(0, 10, rng.integers(1, 12)).tolist()
        expr = "[MED " + " ".join(map(str, args)) + " ]"
        assert lo.evaluate(expr) == int(np.median(args))


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def spinn():
    if not SPINN.is_file():
        pytest.skip(f"golden ListOps file not found: {SPINN}")
    return lo.read_tsv(SPINN)


def test_spinn_golden_set(spinn):
    """All 10,000 real examples: labels, parsing, rendering and token counts agree."""
    sources, labels = spinn
    assert len(sources) == 10_000 and labels.min() == 0 and labels.max() == 9
    for source, label in zip(sources, labels):
        assert lo.evaluate(source) == label
        tree = lo.parse(source)
        assert lo.evaluate(tree) == label
        assert lo.render(tree) == source  # our writer reproduces the on-disk form exactly
        assert lo.num_tokens(tree) == len(lo.tokenize(source))


def test_spinn_tokenizer(spinn):
    sources, _ = spinn
    tokens, lengths = lo.encode_batch(sources, max_len=1000)
    assert lengths.max() == 939 and (tokens[:, 939:] == 0).all()
    counts = Counter(t for s in sources for t in lo.tokenize(s))
    assert set(counts) == set(lo.TOKENS)  # exactly the 15-token vocabulary
    ids, n = np.unique(tokens[tokens > 0], return_counts=True)
    assert dict(zip(ids.tolist(), n.tolist())) == {lo.VOCAB[t]: c for t, c in counts.items()}
    for i in range(0, len(sources), 97):
        assert tokens[i, : lengths[i]].tolist() == lo.encode(sources[i]).tolist()
    tokens4, lengths4 = lo.encode_batch(sources, variant="s4", max_len=1000)
    assert (lengths4 == lengths + 1).all()
    assert (tokens4[np.arange(len(sources)), lengths] == lo.EOS_ID).all()


# ----------------------------------------------------------------------------- generator


def test_tree_sampler_and_fused_sampler_agree():
    """Both samplers read one random stream identically (the fused one is the fast path)."""
    for seed in range(40):
        a, b = random.Random(seed), random.Random(seed)
        for _ in range(30):
            tree = lo._sample(a, 6, 5, 200)
            fused = lo._sample_example(b, 6, 5, 200)
            assert (tree is None) == (fused is None)
            if tree is not None:
                assert fused == (lo.render(tree[0]), lo.evaluate(tree[0]), tree[1])
                assert lo.num_tokens(tree[0]) == tree[1]


def test_sampler_rules():
    rng = random.Random(0)
    depths, arities, ops = Counter(), Counter(), Counter()

    def walk(tree, depth):
        depths[depth] += 1
        if isinstance(tree, tuple):
            arities[len(tree) - 1] += 1
            ops[tree[0]] += 1
            for child in tree[1:]:
                walk(child, depth + 1)
        else:
            assert 0 <= tree <= 9

    roots = [lo.sample_tree(rng, max_depth=4, max_args=5) for _ in range(4000)]
    for tree in roots:
        walk(tree, 1)
    assert max(depths) == 4  # depth 4 holds leaves only
    assert set(arities) == {2, 3, 4, 5} and set(ops) == set(lo.OPERATORS)
    share = sum(isinstance(t, tuple) for t in roots) / len(roots)
    assert 0.22 < share < 0.28  # an operator root with probability 0.25
    assert lo.sample_tree(random.Random(1), max_tokens=0) is None


@pytest.fixture(scope="module")
def small_examples():
    return lo.generate_examples(600, min_length=5, max_length=40, max_depth=6, seed=3)


def test_generated_examples(small_examples):
    sources = [s for s, _ in small_examples]
    labels = [y for _, y in small_examples]
    assert len(sources) == 600 and len(set(sources)) == 600
    assert set(labels) == set(range(10))
    for source, label in small_examples:
        assert 5 < len(lo.tokenize(source)) < 40
        assert lo.evaluate(source) == label
        assert lo.render(lo.parse(source)) == source


def test_generator_deterministic_by_seed(small_examples):
    kwargs = dict(min_length=5, max_length=40, max_depth=6)
    assert lo.generate_examples(600, seed=3, **kwargs) == small_examples
    assert lo.generate_examples(600, seed=4, **kwargs) != small_examples
    # (independence of the number of processes: test_cli_module_entry_point)


def test_generator_lra_settings():
    examples = lo.generate_examples(60, seed=0)  # min 500, max 2000, depth 10, args 10
    for source, label in examples:
        assert 500 < len(lo.tokenize(source)) < 2000
        assert lo.evaluate(source) == label


def test_generator_impossible_settings():
    with pytest.raises(RuntimeError, match="distinct"):  # only 10 one-leaf trees exist
        lo.generate_examples(11, min_length=0, max_length=2, chunk_size=8)
    with pytest.raises(ValueError):
        lo.generate_examples(5, min_length=10, max_length=11)
    with pytest.raises(ValueError, match="at most 10 tokens"):
        lo.generate_examples(5, min_length=10, max_length=50, max_depth=3, max_args=2)


# ----------------------------------------------------------------------------- loader


def test_official_format_fixture_loads(tmp_path):
    folder = write_official(tmp_path / "listops-1000")
    ds = lo.load_listops(folder, cache=False)
    assert ds.name == "listops" and ds.num_classes == 10 and ds.vocab_size == 17
    assert ds.seq_len == 2000 and ds.train.inputs.shape == (4, 2000)
    assert ds.train.labels.tolist() == [y for _, y in OFFICIAL_ROWS]
    assert ds.train.lengths.tolist() == [5, 6, 4, 7]
    assert ds.train.inputs[0, :6].tolist() == [2, 8, 15, 10, 5, 0]
    assert "official" in ds.info["provenance"]
    for source, label in OFFICIAL_ROWS:  # the fixture's labels are right
        assert lo.evaluate(source) == label


def test_generated_files_load_like_official(tmp_path):
    paths = lo.generate_listops(tmp_path / "gen", num_train=30, num_val=5, num_test=7,
                                min_length=4, max_length=60, seed=1, workers=1,
                                progress=False)  # fmt: skip
    header = paths["train"].read_bytes().split(b"\r\n")[0]
    assert header == b"Source\tTarget"  # the LRA writer's csv defaults
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["splits"]["test"]["examples"] == 7
    ds = lo.load_listops(tmp_path / "gen", max_len=64, cache=False)
    for split, n in [("train", 30), ("val", 5), ("test", 7)]:
        sources, labels = lo.read_tsv(paths[split])
        data = getattr(ds, split)
        assert len(data) == n and data.labels.tolist() == labels.tolist()
        assert labels.tolist() == [lo.evaluate(s) for s in sources]
        tokens, lengths = lo.encode_batch(sources, max_len=64)
        np.testing.assert_array_equal(data.inputs, tokens)
        np.testing.assert_array_equal(data.lengths, lengths)
    assert ds.info["provenance"].startswith("regenerated")
    # the same rows written by hand in the official format give the same arrays
    rows = list(zip(*lo.read_tsv(paths["train"])))
    official = lo.load_listops(write_official(tmp_path / "off", rows), max_len=64, cache=False)
    np.testing.assert_array_equal(official.train.inputs, ds.train.inputs)


def test_lra_layouts_are_found(tmp_path):
    write_official(tmp_path / "lra_release" / "lra_release" / "listops-1000")
    write_official(tmp_path / "lra_release" / "listops-1000", OFFICIAL_ROWS[:1])  # duplicate
    ds = lo.load_listops(tmp_path, cache=False)  # the nested copy, as S4/S5 read
    assert len(ds.train) == 4
    ds = lo.load_listops(tmp_path / "lra_release", cache=False)
    assert len(ds.train) == 4


def test_default_location_is_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMJAX_DATA", str(tmp_path))
    write_official(tmp_path / "listops")
    assert len(lo.load_listops(cache=False).test) == 4


def test_missing_files_explain_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        lo.load_listops(tmp_path / "empty")
    message = str(info.value)
    assert "python -m ssmjax.data.generate listops --out" in message
    assert "lra_release" in message and "listops-1000" in message
    with pytest.raises(FileNotFoundError):
        load("listops")


def test_s4_variant(tmp_path):
    folder = write_official(tmp_path / "d")
    ds = lo.load_listops(folder, variant="s4", cache=False)
    assert ds.vocab_size == 18 and ds.seq_len == 2048 and ds.info["eos_id"] == 17
    assert ds.train.lengths.tolist() == [6, 7, 5, 8]
    assert ds.train.inputs[2, :6].tolist() == [4, 15, 15, 5, 17, 0]
    short = lo.load_listops(folder, variant="s4", max_len=4, cache=False)
    assert short.train.inputs[0].tolist() == [2, 8, 15, 17]
    assert short.info["truncated"] == {"train": 4, "val": 4, "test": 4}


def test_cache_is_reused_and_invalidated(tmp_path):
    paths = lo.generate_listops(tmp_path / "gen", num_train=1500, num_val=20, num_test=20,
                                min_length=20, max_length=400, seed=2, workers=1,
                                progress=False)  # fmt: skip
    start = time.perf_counter()
    first = lo.load_listops(tmp_path / "gen")
    t_first = time.perf_counter() - start
    start = time.perf_counter()
    second = lo.load_listops(tmp_path / "gen")
    t_second = time.perf_counter() - start
    assert isinstance(second.train.inputs, np.memmap)
    assert second.train.inputs.dtype == np.uint8
    assert first.info["cache"] == second.info["cache"]
    for split in ("train", "val", "test"):
        a, b = getattr(first, split), getattr(second, split)
        np.testing.assert_array_equal(a.inputs, b.inputs)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.lengths, b.lengths)
    assert t_second < t_first
    manifest = json.loads((Path(second.info["cache"]) / "manifest.json").read_text())
    assert manifest["sha256"]["train"] == lo._sha256(paths["train"])
    assert manifest["sources"]["val"] == str(paths["val"].resolve())
    assert manifest["vocab"][:6] == ["<pad>", "[MIN", "[MAX", "[MED", "[SM", "X"]
    # other variants get their own entries; a changed file is read again
    assert lo.load_listops(tmp_path / "gen", variant="s4").info["cache"] != first.info["cache"]
    write_official(tmp_path / "gen")
    changed = lo.load_listops(tmp_path / "gen")
    assert len(changed.train) == 4 and changed.info["cache"] != first.info["cache"]


def test_registry(tmp_path):
    folder = write_official(tmp_path / "d")
    ds = load("listops", data_dir=folder, max_len=16, cache=False)
    assert ds.train.inputs.shape == (4, 16)


def test_read_tsv_rejects_other_files(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("a\tb\tc\n")
    with pytest.raises(ValueError, match="not a ListOps TSV"):
        lo.read_tsv(path)


# ----------------------------------------------------------------------------- CLI


def test_cli_listops(tmp_path, capsys):
    argv = ["listops", "--out", str(tmp_path), "--num-train", "6", "--num-val", "2",
            "--num-test", "3", "--min-length", "3", "--max-length", "30", "--seed", "5",
            "--workers", "1", "--no-progress"]  # fmt: skip
    assert generate_main(argv) == 0
    assert "wrote 11 ListOps examples" in capsys.readouterr().out
    ds = lo.load_listops(tmp_path, max_len=32, cache=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 3)
    settings_ = json.loads((tmp_path / "generation.json").read_text())["settings"]
    assert settings_["seed"] == 5 and settings_["max_length"] == 30


def test_cli_forwards_pathfinder(monkeypatch):
    seen = []
    fake = types.ModuleType("ssmjax.data.pathfinder")
    fake.cli_main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "ssmjax.data.pathfinder", fake)
    assert generate_main(["pathfinder", "--resolution", "32", "--help"]) == 0
    assert seen == [["--resolution", "32", "--help"]]


def test_cli_module_entry_point(tmp_path):
    """``python -m ssmjax.data.generate`` with a process pool (two workers)."""
    cmd = [sys.executable, "-m", "ssmjax.data.generate", "listops", "--out", str(tmp_path),
           "--num-train", "40", "--num-val", "4", "--num-test", "4", "--min-length", "3",
           "--max-length", "50", "--workers", "2", "--no-progress"]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "PATH": "", "JAX_PLATFORMS": "cpu"}
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True, timeout=300)
    ds = lo.load_listops(tmp_path, max_len=64, cache=False)
    assert len(ds.train) == 40
    in_process = lo.generate_examples(48, min_length=3, max_length=50, seed=0, workers=1)
    assert lo.read_tsv(tmp_path / "basic_train.tsv")[0] == [s for s, _ in in_process[:40]]


# ----------------------------------------------------------------------------- properties


def trees(max_leaves=30):
    leaf = st.integers(0, 9)
    return st.recursive(
        leaf,
        lambda kids: st.tuples(st.sampled_from(lo.OPERATORS), kids, kids).flatmap(
            lambda t: st.lists(kids, max_size=3).map(lambda more: (t[0], t[1], t[2], *more))
        ),
        max_leaves=max_leaves,
    )


@settings(max_examples=80, deadline=None)
@given(trees())
def test_render_parse_round_trip(tree):
    assert lo.parse(lo.render(tree)) == tree
    assert lo.parse(lo.render(tree, nested=False)) == tree
    assert (
        lo.evaluate(lo.render(tree)) == lo.evaluate(tree) == lo.evaluate(lo.parse(lo.render(tree)))
    )
    assert lo.num_tokens(tree) == len(lo.tokenize(lo.render(tree)))
    assert lo.decode(lo.encode(lo.render(tree))) == lo.render(tree, nested=False)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from([*lo.TOKENS, "]", "(", ")", "[FIRST", "12", "\t"]), max_size=12
        ).map(" ".join),
        max_size=6,
    ),
    st.integers(1, 14),
    st.sampled_from(["lra", "s4"]),
)
def test_encode_batch_matches_encode(sources, max_len, variant):
    tokens, lengths = lo.encode_batch(sources, variant=variant, max_len=max_len)
    assert tokens.shape == (len(sources), max_len)
    for row, n, source in zip(tokens, lengths, sources):
        ids = lo.encode(source, variant=variant, max_len=max_len)
        assert n == len(ids) and row[:n].tolist() == ids.tolist() and not row[n:].any()


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 6), st.integers(2, 5), st.integers(0, 20))
def test_generator_bounds_property(seed, max_depth, max_args, min_length):
    max_length = min_length + 30
    try:
        examples = lo.generate_examples(
            20, min_length=min_length, max_length=max_length, max_depth=max_depth,
            max_args=max_args, seed=seed, chunk_size=8,
        )  # fmt: skip
    except ValueError:  # no tree of these settings is long enough
        assert lo._max_tokens(max_depth, max_args) <= min_length + 1
        return
    except RuntimeError:  # some small settings have too few distinct trees
        return
    assert len({s for s, _ in examples}) == 20
    for source, label in examples:
        tree = lo.parse(source)
        assert min_length < lo.num_tokens(tree) < max_length
        assert lo.evaluate(tree) == label
        assert _depth(tree) <= max_depth


def _depth(tree) -> int:
    return 1 if not isinstance(tree, tuple) else 1 + max(_depth(c) for c in tree[1:])


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    folder = write_official(tmp_path / "d")
    first = lo.load_listops(folder, max_len=16)
    entry = Path(first.info["cache"])
    (entry / "train_inputs.npy").write_bytes(b"garbage")
    again = lo.load_listops(folder, max_len=16)
    np.testing.assert_array_equal(again.train.inputs, first.train.inputs)
    assert isinstance(lo.load_listops(folder, max_len=16).train.inputs, np.memmap)
