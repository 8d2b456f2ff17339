"""Pathfinder / Path-X: generator properties, connectivity checker, files, loader, cache."""

import dataclasses
import io
import itertools
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from ssmjax.data import pathfinder as pf
from ssmjax.data.generate import main as generate_main
from ssmjax.data.registry import available, load

SPEC32 = pf.PathfinderSpec.preset(32, 14)
N_SAMPLES = 200


@pytest.fixture(scope="module")
def samples():
    """200 Pathfinder-32 images: one batch as the file writer makes it (seed 1234)."""
    return list(pf._batch_samples(SPEC32, batch=0, count=N_SAMPLES, seed=1234))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """40 generated images in the released layout: 2 batches of 20 (read-only: copy it)."""
    root = tmp_path_factory.mktemp("pf_generated")
    pf.generate_pathfinder(root, num_images=40, images_per_batch=20, workers=1, progress=False)
    return root


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def leaf(root: Path, resolution: int = 32) -> Path:
    return root / f"pathfinder{resolution}" / "curv_contour_length_14"


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resolution, margins, seed_distance, radius, length, thickness, continuity, n_distract",
    [
        (32, (1,), 7, 1.5, 2, 0.5, 1.0, 5),
        (64, (1,), 12, 2.5, 5, 1, 1.8, 5),
        (128, (2, 3), 20, 3, 5, 1.5, 1.8, 8),
        (256, (3,), 27, 5, 5, 2, 1.8, 7),
    ],
)
def test_presets_follow_the_lra_table(
    resolution, margins, seed_distance, radius, length, thickness, continuity, n_distract
):
    s = pf.PathfinderSpec.preset(resolution, 14)
    assert s.paddle_margin_list == margins
    assert (s.seed_distance, s.marker_radius, s.paddle_length) == (seed_distance, radius, length)
    assert (s.paddle_thickness, s.continuity, s.antialias_scale) == (thickness, continuity, 2)
    assert s.distractor_length == 4 and s.num_distractor_snakes == n_distract
    assert s.difficulty_dir == "curv_contour_length_14"
    assert s.padding == (22 if resolution == 256 else 1)


def test_difficulties_and_bad_arguments():
    assert pf.PathfinderSpec.preset(32, 9).num_distractor_snakes == 6  # 20 // 3
    assert pf.PathfinderSpec.preset(32, 6).num_distractor_snakes == 10  # 20 // 2
    assert pf.PathfinderSpec.preset(32, 6).difficulty_dir == "curv_baseline"
    with pytest.raises(ValueError, match="resolution"):
        pf.PathfinderSpec.preset(48)
    with pytest.raises(ValueError, match="difficulty"):
        pf.PathfinderSpec.preset(32, 7)
    with pytest.raises(ValueError, match="thickness"):
        pf.PathfinderSpec.preset(32, paddle_thickness=0.3)


# --------------------------------------------------------------------------------------
# generator properties
# --------------------------------------------------------------------------------------


def test_image_size_dtype_and_range(samples):
    for s in samples:
        assert s.image.shape == (32, 32) and s.image.dtype == np.uint8
        assert s.owner.shape == (32, 32)
        assert s.image.max() == 255 and s.image.min() == 0  # min-max rescaled, as imsave
        assert ((s.image > 0) == (s.owner >= 0)).all()  # every ink pixel has an owner


def test_exactly_two_markers_at_the_tips(samples):
    for s in samples:
        blobs = pf.find_markers(s.image, SPEC32)
        assert len(blobs) == 2
        for p in s.markers:
            assert any(b[p] for b in blobs)


def test_paths_and_distractors_per_spec(samples):
    placed = np.array([s.num_distractors for s in samples])
    for s in samples:
        assert [len(t) for t in s.target_paddles] == [14, 14]
        ids = set(np.unique(s.owner).tolist()) - {-1}
        assert {0, 1} <= ids and len(ids) == 2 + s.num_distractors
    assert placed.max() <= SPEC32.num_distractor_snakes
    assert placed.mean() > 0.8 * SPEC32.num_distractor_snakes  # almost always all five
    ink = np.mean([(s.image > 0).mean() for s in samples])
    assert 0.12 < ink < 0.26  # about 19% of the pixels carry ink


def test_markers_sit_on_their_snakes(samples):
    for s in samples:
        origin, terminal = s.markers
        a, b = s.target_paddles
        assert origin in (a[0], b[0])  # a start tip
        assert terminal in (a[-1], b[-1])  # an end tip
        same = (origin == a[0] and terminal == a[-1]) or (origin == b[0] and terminal == b[-1])
        assert same == bool(s.label)


def test_checker_agrees_with_the_label_on_every_image(samples):
    for s in samples:
        assert pf.check_connectivity(s.image, SPEC32, owner=s.owner) == bool(s.label)
    assert sum(s.rejected for s in samples) < 0.1 * N_SAMPLES  # redraws are rare


def test_labels_balanced(samples):
    labels = [s.label for s in samples]
    assert sum(labels) == N_SAMPLES // 2  # exactly balanced within a batch ...
    assert 60 < sum(a != b for a, b in itertools.pairwise(labels)) < 140  # ... in random order
    odd = list(pf._batch_samples(SPEC32, batch=0, count=3, seed=0))
    assert sum(s.label for s in odd) in (1, 2)
    rng = np.random.default_rng(5)
    drawn = [pf.generate_sample(SPEC32, rng).label for _ in range(30)]
    assert 6 <= sum(drawn) <= 24  # without a label, a fair coin


def test_deterministic_by_seed():
    a = pf.generate_sample(SPEC32, np.random.default_rng(7), label=0)
    b = pf.generate_sample(SPEC32, np.random.default_rng(7), label=0)
    c = pf.generate_sample(SPEC32, np.random.default_rng(8), label=0)
    assert np.array_equal(a.image, b.image) and a.markers == b.markers
    assert not np.array_equal(a.image, c.image)


def test_upstream_mode_without_the_guarantee():
    spec = dataclasses.replace(SPEC32, exact=False)
    rng = np.random.default_rng(3)
    out = [pf.generate_sample(spec, rng, label=i % 2) for i in range(20)]
    assert all(s.image.shape == (32, 32) and s.rejected == 0 for s in out)
    assert all(len(s.target_paddles[0]) == 14 for s in out)


@pytest.mark.parametrize("resolution", [64, 128])
def test_larger_resolutions(resolution):
    spec = pf.PathfinderSpec.preset(resolution, 6)  # short snakes keep this test fast
    rng = np.random.default_rng(0)
    for label in (0, 1):
        s = pf.generate_sample(spec, rng, label)
        assert s.image.shape == (resolution, resolution)
        assert len(pf.find_markers(s.image, spec)) == 2
        assert pf.check_connectivity(s.image, spec, owner=s.owner) == bool(label)
        assert [len(t) for t in s.target_paddles] == [6, 6]


# --------------------------------------------------------------------------------------
# checker on hand-made images
# --------------------------------------------------------------------------------------


def two_markers() -> np.ndarray:
    img = np.zeros((32, 32), np.uint8)
    img[4:7, 4:7] = img[4:7, 24:27] = 255
    return img


def test_checker_links_dashes_but_not_wide_gaps():
    img = two_markers()
    img[5, 7:24:3] = img[5, 8:24:3] = 200  # dashes two pixels long, one-pixel gaps
    assert pf.check_connectivity(img, SPEC32)
    img[5, 12:18] = 0  # a gap wider than link_radius
    assert not pf.check_connectivity(img, SPEC32)


def test_checker_with_owner_does_not_cross_other_snakes():
    img = two_markers()
    owner = np.where(img > 0, 0, -1).astype(np.int8)
    owner[4:7, 24:27] = 1  # the second marker sits on snake 1
    img[5, 8:12] = 200  # snake 0 leaves the first marker ...
    owner[5, 8:12] = 0
    img[5, 14:23] = 200  # ... and distractor 2 bridges to the second marker
    owner[5, 14:23] = 2
    assert pf.check_connectivity(img, SPEC32)  # the plain fill crosses the distractor
    assert not pf.check_connectivity(img, SPEC32, owner=owner)
    owner[5, 14:23] = 0  # when the bridge is snake 0 itself, it stops at marker 2's snake
    owner[4:7, 24:27] = 0
    assert pf.check_connectivity(img, SPEC32, owner=owner)


def test_checker_needs_two_markers():
    img = np.zeros((32, 32), np.uint8)
    img[4:7, 4:7] = 255
    assert len(pf.find_markers(img, SPEC32)) == 1
    with pytest.raises(ValueError, match="2 markers"):
        pf.check_connectivity(img, SPEC32)


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------


def encode_filtered(img: np.ndarray, kinds) -> bytes:
    """A gray PNG with the given filter type per row (the encoder side of the 5 filters)."""
    h, w = img.shape
    x = img.astype(np.int64)
    rows = []
    for y in range(h):
        prev = x[y - 1] if y else np.zeros(w, np.int64)
        left = np.concatenate([[0], x[y, :-1]])
        upleft = np.concatenate([[0], prev[:-1]])
        kind = kinds[y % len(kinds)]
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        rows.append(bytes([kind]) + ((x[y] - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"".join(rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_writer_and_fallback_reader(samples, tmp_path):
    from PIL import Image

    img = samples[0].image
    data = pf._png_bytes(img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), img)
    assert np.array_equal(pf._decode_png(data), img)
    filtered = encode_filtered(img, kinds=[0, 1, 2, 3, 4])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(filtered))), img)
    assert np.array_equal(pf._decode_png(filtered), img)
    rgb = np.stack([img, img // 2, 255 - img], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    want = np.asarray(Image.open(tmp_path / "rgb.png").convert("L"))
    assert np.array_equal(pf._decode_png((tmp_path / "rgb.png").read_bytes()), want)


def test_read_metadata_formats(tmp_path):
    row = "imgs/3 sample_7.png 7 1 1.0 14 4 2 0.5 1 1"
    text = tmp_path / "3.npy"
    text.write_text(row + "\n" + row.replace("sample_7", "sample_8") + "\n")
    assert pf.read_metadata(text)[1][:4] == ["imgs/3", "sample_8.png", "7", "1"]
    binary = tmp_path / "4.npy"
    np.save(binary, np.array([row.split()], dtype="S"))  # bytes, as a Python 2 np.save
    assert pf.read_metadata(binary) == [row.split()]
    pickled = tmp_path / "5.npy"
    np.save(pickled, np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="string array"):
        pf.read_metadata(pickled)


def test_layout_and_metadata_as_released(generated):
    root = leaf(generated)
    assert sorted(p.name for p in (root / "metadata").iterdir()) == ["0.npy", "1.npy"]
    assert len(list((root / "imgs" / "1").glob("sample_*.png"))) == 20
    rows = pf.read_metadata(root / "metadata" / "1.npy")
    assert rows[5] == [
        "imgs/1",
        "sample_5.png",
        "5",
        rows[5][3],
        "1.0",
        "14",
        "4",
        "2",
        "0.5",
        "1",
        "1",
    ]
    text = (root / "metadata" / "1.npy").read_text()
    assert text.endswith("\n") and not text.startswith("\x93NUMPY")
    labels = [int(r[3]) for r in rows]
    assert sum(labels) == 10  # balanced within every batch
    prov = json.loads((root / "ssmjax_generator.json").read_text())
    assert "regenerated" in prov["provenance"] and prov["seed"] == 0


def test_generated_files_equal_the_generator_output(generated):
    """The PNGs and labels on disk are the samples, and the checker agrees on them."""
    root = leaf(generated)
    rows = pf.read_metadata(root / "metadata" / "0.npy")
    again = list(pf._batch_samples(SPEC32, batch=0, count=20, seed=0))
    for r, s in zip(rows, again, strict=True):
        img = pf._read_png(root / r[0] / r[1])
        assert np.array_equal(img, s.image) and int(r[3]) == s.label
        assert int(r[9]) == s.margin
        assert pf.check_connectivity(img, SPEC32, owner=s.owner) == bool(s.label)


def test_same_files_for_any_worker_count_and_resume(generated, tmp_path):
    out = tmp_path / "two_workers"
    pf.generate_pathfinder(out, num_images=40, images_per_batch=20, workers=2, progress=False)
    for p in sorted(leaf(generated).rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (leaf(out) / p.relative_to(leaf(generated))).read_bytes()
    # an interrupted run (metadata not yet written) resumes with the same images
    meta = leaf(out) / "metadata" / "1.npy"
    meta.unlink()
    png = leaf(out) / "imgs" / "1" / "sample_3.png"
    png.unlink()
    pf.generate_pathfinder(out, num_images=40, images_per_batch=20, workers=1, progress=False)
    assert meta.read_bytes() == (leaf(generated) / "metadata" / "1.npy").read_bytes()
    assert png.read_bytes() == (leaf(generated) / "imgs" / "1" / "sample_3.png").read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        pf.generate_pathfinder(out, num_images=40, images_per_batch=20, seed=1, progress=False)


def test_cli_through_generate(tmp_path, capsys):
    argv = ["pathfinder", "--out", str(tmp_path), "--num-images", "3", "--images-per-batch"]
    assert generate_main([*argv, "2", "--workers", "1", "--no-progress", "--difficulty", "6"]) == 0
    assert "wrote 3 images (pathfinder32/curv_baseline)" in capsys.readouterr().out
    rows = pf.read_metadata(tmp_path / "pathfinder32" / "curv_baseline" / "metadata" / "1.npy")
    assert [r[:2] for r in rows] == [["imgs/1", "sample_0.png"]]
    assert rows[0][5:7] == ["6", "2"]  # contour length 6, distractor length 2


# --------------------------------------------------------------------------------------
# loader
# --------------------------------------------------------------------------------------


def test_loader_on_generated_files(generated):
    ds = pf.load_pathfinder(generated, cache=False, progress=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 4, 4)
    assert ds.train.inputs.shape == (32, 1024) and ds.train.inputs.dtype == np.uint8
    assert (ds.seq_len, ds.vocab_size, ds.num_classes, ds.d_input) == (1024, 256, 2, None)
    assert ds.train.labels.dtype == np.int32 and ds.train.lengths is None
    assert "regenerated" in ds.info["provenance"]
    # contiguous split in metadata order: row k is image k of batch 0
    ds = pf.load_pathfinder(generated, split_seed=None, cache=False, progress=False)
    root = leaf(generated)
    rows = pf.read_metadata(root / "metadata" / "0.npy")
    for k in (0, 7, 19):
        img = pf._read_png(root / rows[k][0] / rows[k][1])
        assert np.array_equal(ds.train.inputs[k], img.reshape(-1))
        assert ds.train.labels[k] == int(rows[k][3])
    test_rows = pf.read_metadata(root / "metadata" / "1.npy")[16:]
    assert ds.test.labels.tolist() == [int(r[3]) for r in test_rows]


def test_loader_variants(generated):
    tokens = pf.load_pathfinder(generated, cache=False, progress=False)
    s4 = pf.load_pathfinder(generated, variant="s4", cache=False, progress=False)
    s5 = pf.load_pathfinder(generated, variant="s5", cache=False, progress=False)
    assert s4.d_input == 1 and s4.vocab_size is None and s4.train.inputs.shape == (32, 1024, 1)
    x = tokens.train.inputs[:4].astype(np.float32)[..., None] / 255
    assert np.allclose(s4.train.inputs[:4], x)
    assert np.allclose(s5.train.inputs[:4], 2 * x - 1)
    assert s5.train.inputs[:4].dtype == np.float32
    with pytest.raises(ValueError, match="variant"):
        pf.load_pathfinder(generated, variant="tfds", cache=False)


def test_loader_split_sizes_and_seed(generated):
    a = pf.load_pathfinder(generated, split_seed=1, cache=False, progress=False)
    b = pf.load_pathfinder(generated, split_seed=2, cache=False, progress=False)
    assert (len(a.train), len(a.val), len(a.test)) == (32, 4, 4)
    everything = np.concatenate([a.train.inputs, a.val.inputs, a.test.inputs])
    assert len({r.tobytes() for r in everything}) == 40  # a partition of the 40 images
    assert not np.array_equal(a.test.inputs, b.test.inputs)


def test_loader_finds_nested_release_layout(generated, tmp_path):
    nested = tmp_path / "lra_release" / "lra_release"
    copy_of(generated / "pathfinder32", nested / "pathfinder32")
    outer = tmp_path / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    copy_of(leaf(generated), outer)
    (outer / "metadata" / "1.npy").unlink()  # the outer duplicate differs: 20 images
    for where in (tmp_path, tmp_path / "lra_release"):
        ds = pf.load_pathfinder(where, cache=False, progress=False)
        assert ds.info["source"] == str(leaf(nested).resolve())
        assert len(ds.train) + len(ds.val) + len(ds.test) == 40
    ds = pf.load_pathfinder(outer, cache=False, progress=False)  # the folder itself
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20


def test_loader_skips_empty_and_missing_pngs_and_reads_binary_metadata(generated, tmp_path):
    root = leaf(copy_of(generated, tmp_path / "data"), 32)
    (root / "imgs" / "0" / "sample_3.png").write_bytes(b"")  # zero bytes, as in the release
    (root / "imgs" / "1" / "sample_4.png").unlink()  # listed, not on disk
    meta1 = root / "metadata" / "1.npy"
    rows = pf.read_metadata(meta1)
    meta1.unlink()
    np.save(root / "metadata" / "1.npy", np.array(rows))  # binary, as the upstream generator
    assert (root / "metadata" / "1.npy").read_bytes().startswith(b"\x93NUMPY")
    with pytest.warns(UserWarning, match="skipped 1 zero-byte PNGs, 1 metadata rows"):
        ds = pf.load_pathfinder(tmp_path / "data", split_seed=None, cache=False, progress=False)
    assert ds.info["skipped"] == {"empty": 1, "missing": 1, "malformed": 0}
    assert ds.info["examples_read"] == 38
    assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 3, 3)
    want = pf._read_png(root / "imgs" / "0" / "sample_4.png")  # row 3 is the 5th image
    assert np.array_equal(ds.train.inputs[3], want.reshape(-1))


def test_cache_reload_equality(generated):
    first = pf.load_pathfinder(generated, progress=False)
    entry = Path(first.info["cache"])
    assert (entry / "manifest.json").is_file() and entry.parent.parent.name == "pathfinder"
    again = pf.load_pathfinder(generated, progress=False)
    assert isinstance(again.train.inputs, np.memmap)
    for name in ("train", "val", "test"):
        a, b = getattr(first, name), getattr(again, name)
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
    plain = pf.load_pathfinder(generated, cache=False, progress=False)
    assert np.array_equal(plain.val.inputs, again.val.inputs)
    other = pf.load_pathfinder(generated, split_seed=3, progress=False)
    assert other.info["cache"] != first.info["cache"]


def test_registry_and_pathx(tmp_path):
    leaf128 = leaf(tmp_path, 128)
    (leaf128 / "imgs" / "0").mkdir(parents=True)
    (leaf128 / "metadata").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):  # format-only fixture: random pixels
        img = rng.integers(0, 256, (128, 128), dtype=np.uint8)
        (leaf128 / "imgs" / "0" / f"sample_{i}.png").write_bytes(pf._png_bytes(img))
        rows.append(f"imgs/0 sample_{i}.png {i} {i % 2} 1.8 14 4 5 1.5 2 1\n")
    (leaf128 / "metadata" / "0.npy").write_text("".join(rows))
    ds = load("pathx", data_dir=tmp_path, cache=False, progress=False)
    assert ds.name == "pathx" and ds.seq_len == 16384 and ds.train.inputs.shape == (8, 16384)
    assert {"pathfinder", "pathx"} <= set(available())


def test_missing_files_explain_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m ssmjax\.data\.generate pathfinder"):
        pf.load_pathfinder(tmp_path, cache=False)
    with pytest.raises(FileNotFoundError, match="lra_release/lra_release/pathfinder128"):
        pf.load_pathx(tmp_path, cache=False)


def test_default_folder_is_ssmjax_data(generated, monkeypatch, tmp_path):
    root = copy_of(generated, tmp_path / "data")
    monkeypatch.setenv("SSMJAX_DATA", str(root))
    ds = load("pathfinder", cache=False, progress=False)
    assert (len(ds.train), ds.name) == (32, "pathfinder")
