"""Image tasks: CIFAR-10 pickles, grayscale, MNIST IDX files, permutations, digits."""

import gzip
import hashlib
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssmjax.data import cifar, iterate_batches, mnist
from ssmjax.data import images as im
from ssmjax.data.download import ChecksumError, DownloadError
from ssmjax.data.registry import load

REAL_DATA = (Path(__file__).parents[2] / "../shared/data").resolve()
N_PER_BATCH = 4
DEAD = "http://127.0.0.1:9"  # loopback discard port: refused at once, no DNS lookup


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- CIFAR-10


def make_cifar(folder: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """``cifar-10-batches-py`` as torchvision/Krizhevsky ship it: pickled dicts, 4 images each.

    Returns:
      batch name -> (images ``(n, 32, 32, 3)`` uint8 HWC, labels).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        hwc = rng.integers(0, 256, (N_PER_BATCH, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, N_PER_BATCH)]
        data = hwc.transpose(0, 3, 1, 2).reshape(N_PER_BATCH, 3072)  # R plane, G plane, B plane
        batch = {"batch_label": f"batch {i}", "labels": labels, "data": data,
                 "filenames": [f"img_{i}_{j}.png" for j in range(N_PER_BATCH)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = (hwc, labels)
    meta = {"num_cases_per_batch": N_PER_BATCH, "num_vis": 3072,
            "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]}  # fmt: skip
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


@pytest.fixture
def cifar_mirror(tmp_path, monkeypatch):
    """A fixture ``cifar-10-python.tar.gz`` behind a file:// mirror, checksums patched."""
    src = tmp_path / "src"
    batches = make_cifar(src / "cifar-10-batches-py")
    archive = tmp_path / "mirror" / im.CIFAR10_ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(cifar, "CIFAR10_MIRRORS", (archive.as_uri(),))
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(archive))
    monkeypatch.setattr(cifar, "CIFAR10_FILE_MD5", {
        p.name: md5(p) for p in sorted((src / "cifar-10-batches-py").iterdir())
    })  # fmt: skip
    return batches


def train_hwc(batches):
    x = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    y = np.concatenate([batches[f"data_batch_{k}"][1] for k in range(1, 6)])
    return x, y


def test_read_cifar_batch_plane_order(tmp_path):
    batches = make_cifar(tmp_path)
    pixels, labels = im.read_cifar_batch(tmp_path / "test_batch")
    hwc, expected_labels = batches["test_batch"]
    assert pixels.shape == (4, 1024, 3) and pixels.dtype == np.uint8
    assert labels.tolist() == expected_labels and labels.dtype == np.int32
    # step 32 * row + col holds (R, G, B) of that pixel
    for row, col in [(0, 0), (0, 31), (5, 7), (31, 0), (31, 31)]:
        assert pixels[2, 32 * row + col].tolist() == hwc[2, row, col].tolist()
    np.testing.assert_array_equal(pixels, hwc.reshape(4, 1024, 3))
    # the raw layout: the first 1024 values of a row are the red plane
    raw = pickle.loads((tmp_path / "test_batch").read_bytes())["data"]
    np.testing.assert_array_equal(raw[1, :1024], hwc[1, :, :, 0].ravel())


def test_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        im.read_cifar_batch(path)


def test_image_lra_download_tokens_and_splits(tmp_path, cifar_mirror):
    ds = im.load_image(tmp_path / "c", progress=False)
    assert (tmp_path / "c" / im.CIFAR10_ARCHIVE).is_file()
    assert ds.name == "image" and ds.vocab_size == 256 and ds.d_input is None
    assert ds.seq_len == 1024 and ds.train.lengths is None
    # 5 x 4 training images: int(20 * 0.9) = 18 train, 2 val (S4's random_split sizes)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 4)
    x, y = train_hwc(cifar_mirror)
    gray = im.rgb_to_gray(x, "tf").reshape(20, 1024)
    train_idx, val_idx = im._split_indices(20, 0.1, 42)
    assert sorted([*train_idx, *val_idx]) == list(range(20))
    np.testing.assert_array_equal(ds.train.inputs, gray[train_idx])
    np.testing.assert_array_equal(ds.val.inputs, gray[val_idx])
    assert ds.train.labels.tolist() == y[train_idx].tolist()
    test_gray = im.rgb_to_gray(cifar_mirror["test_batch"][0], "tf").reshape(4, 1024)
    np.testing.assert_array_equal(ds.test.inputs, test_gray)
    assert ds.train.inputs.dtype == np.uint8 and isinstance(ds.train.inputs, np.memmap)
    assert ds.info["grayscale"] == "tf" and ds.info["label_names"][0] == "airplane"
    assert "verified" in ds.info["checksum"]
    other = im.load_image(tmp_path / "c", seed=1, progress=False)
    assert other.info["cache"] != ds.info["cache"]


def test_grayscale_formulas():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5000, 3), dtype=np.uint8)
    # LRA: tf.image.rgb_to_grayscale = floor(255.5 * (0.2989 r + 0.587 g + 0.114 b) / 255)
    ref = np.floor(255.5 * (rgb.astype(np.float64) / 255) @ np.array([0.2989, 0.587, 0.114]))
    tf = im.rgb_to_gray(rgb, "tf").astype(int)
    assert np.abs(tf - ref).max() <= 1 and (tf == ref).mean() > 0.999  # float32 vs float64
    levels = np.arange(256, dtype=np.uint8)
    assert im.rgb_to_gray(np.stack([levels] * 3, -1), "tf").tolist() == levels.tolist()
    assert im.rgb_to_gray(np.array([255, 0, 0], np.uint8), "tf") == 76  # floor(76.37)
    # S4: PIL's convert("L")
    pil = pytest.importorskip("PIL.Image")
    img = rgb.reshape(50, 100, 3)
    expected = np.asarray(pil.fromarray(img).convert("L"))
    np.testing.assert_array_equal(im.rgb_to_gray(img, "pil"), expected)


def test_image_s4_and_scifar_normalisation(tmp_path, cifar_mirror):
    ds = im.load_image(tmp_path, variant="s4", progress=False)
    assert ds.d_input == 1 and ds.vocab_size is None and ds.train.inputs.shape == (18, 1024, 1)
    x_test = cifar_mirror["test_batch"][0]
    gray = im.rgb_to_gray(x_test, "pil").reshape(4, 1024).astype(np.float64)
    want = (gray / 255 - 122.6 / 255) / (61 / 255)
    got = np.asarray(ds.test.inputs)
    assert got.dtype == np.float32 and got.shape == (4, 1024, 1)
    np.testing.assert_allclose(got[..., 0], want, rtol=1e-5, atol=1e-5)
    assert isinstance(ds.test.inputs.pixels, np.memmap)  # uint8 on disk, normalised per batch

    sc = im.load_scifar(tmp_path, progress=False)
    assert sc.d_input == 3 and sc.train.inputs.shape == (18, 1024, 3)
    want = (x_test.reshape(4, 1024, 3) / 255 - np.array(im.CIFAR_MEAN)) / np.array(im.CIFAR_STD)
    np.testing.assert_allclose(sc.test.inputs[:], want, rtol=1e-5, atol=1e-5)
    batch = next(iterate_batches(sc.train, 8, prefetch=0))
    assert batch["inputs"].dtype == np.float32 and batch["inputs"].shape == (8, 1024, 3)

    sg = load("scifar_gray", data_dir=tmp_path, progress=False)
    assert sg.name == "scifar_gray" and sg.info["grayscale"] == "pil"
    np.testing.assert_array_equal(np.asarray(sg.test.inputs), got)


def test_cifar_errors(tmp_path, cifar_mirror, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        im.load_image(tmp_path / "none", download=False)
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "data_batch_1" in message
    assert "test_batch" in message and im.CIFAR10_ARCHIVE in message
    assert str(tmp_path / "none") in message
    monkeypatch.setattr(cifar, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(ChecksumError):
        im.load_image(tmp_path / "bad", progress=False)
    monkeypatch.setattr(cifar, "CIFAR10_MIRRORS", (f"{DEAD}/{im.CIFAR10_ARCHIVE}",))
    with pytest.raises(DownloadError, match=im.CIFAR10_ARCHIVE):
        im.load_image(tmp_path / "offline", progress=False)


def test_cifar_batch_checksum_is_checked(tmp_path, cifar_mirror, monkeypatch):
    folder = tmp_path / "user" / "cifar-10-batches-py"
    make_cifar(folder, seed=5)  # other images than the patched checksums describe
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        im.load_image(tmp_path / "user", download=False, progress=False)
    ds = im.load_image(folder, download=False, verify=False, cache=False, progress=False)
    assert len(ds.test) == 4 and ds.info["checksum"] == "not checked"


# ----------------------------------------------------------------------------- MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    if array.ndim == 3:
        header = struct.pack(">IIII", 2051, *array.shape)
    else:
        header = struct.pack(">II", 2049, len(array))
    return header + array.astype(np.uint8).tobytes()


def make_mnist(folder: Path, n_train: int = 10, n_test: int = 8, gz: bool = True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        name = im.MNIST_FILES[role][0]
        if gz:
            (folder / name).write_bytes(gzip.compress(idx_bytes(array), mtime=0))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(idx_bytes(array))
    return arrays


@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    served = tmp_path / "mirror"
    arrays = make_mnist(served)
    files = {}
    for role, (name, _, _) in im.MNIST_FILES.items():
        files[role] = (name, (served / name).stat().st_size, sha256(served / name))
    monkeypatch.setattr(mnist, "MNIST_FILES", files)
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", (f"{DEAD}/", served.as_uri() + "/"))
    return arrays


def test_read_idx(tmp_path):
    arrays = make_mnist(tmp_path, n_train=3, n_test=2)
    images = im.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(images, arrays["train_images"])
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    labels = im.read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz")
    assert labels.tolist() == arrays["test_labels"].tolist()
    bad = tmp_path / "bad"
    bad.write_bytes(struct.pack(">II", 2052, 1) + b"\0")
    with pytest.raises(ValueError, match="magic 2052"):
        im.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">II", 2049, 5) + b"\0\0")
    with pytest.raises(ValueError, match="header says 5"):
        im.read_idx(short)


def test_smnist_download_values_and_splits(tmp_path, mnist_mirror):
    ds = im.load_smnist(tmp_path / "m", progress=False)  # first mirror fails, second serves
    assert ds.name == "smnist" and ds.d_input == 1 and ds.seq_len == 784
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 1, 8)  # int(10 * 0.9) = 9
    x = mnist_mirror["train_images"].reshape(10, 784)
    train_idx, val_idx = im._split_indices(10, 0.1, 42)
    np.testing.assert_allclose(ds.train.inputs[:][..., 0], x[train_idx] / 255, rtol=1e-6)
    assert ds.val.labels.tolist() == mnist_mirror["train_labels"][val_idx].tolist()
    test = np.asarray(ds.test.inputs)
    assert test.dtype == np.float32 and test.min() >= 0 and test.max() <= 1
    # row-major flattening: step 28 * row + col
    assert test[3, 28 * 5 + 7, 0] == np.float32(mnist_mirror["test_images"][3, 5, 7]) / 255
    assert ds.info["checksum"] == "sha256 verified" and ds.info["permutation"] is None
    assert isinstance(ds.train.inputs.pixels, np.memmap)
    for name, *_ in im.MNIST_FILES.values():
        assert (tmp_path / "m" / name).is_file()


def test_psmnist_bitreversal_and_random(tmp_path, mnist_mirror):
    plain = im.load_smnist(tmp_path, progress=False)
    ds = im.load_psmnist(tmp_path, progress=False)
    perm = im.bitreversal_permutation(784)
    np.testing.assert_array_equal(
        np.asarray(ds.test.inputs), np.asarray(plain.test.inputs)[:, perm]
    )
    assert ds.info["permutation"] == "bitreversal" and ds.name == "psmnist"
    rnd = load("psmnist", data_dir=tmp_path, permutation="random", progress=False)
    perm = np.random.RandomState(92916).permutation(784)
    np.testing.assert_array_equal(np.asarray(rnd.val.inputs), np.asarray(plain.val.inputs)[:, perm])
    assert rnd.info["permutation_seed"] == 92916
    with pytest.raises(ValueError, match="permutation"):
        im.load_psmnist(tmp_path, permutation="snake", progress=False)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 100, 784, 1024])
def test_bitreversal_matches_definition(n):
    perm = im.bitreversal_permutation(n)
    assert sorted(perm.tolist()) == list(range(n))  # a permutation
    m = (n - 1).bit_length()
    by_strings = [int(format(k, f"0{m}b")[::-1], 2) if m else 0 for k in range(2**m)]
    assert perm.tolist() == [v for v in by_strings if v < n]


def test_bitreversal_784_head():
    perm = im.bitreversal_permutation(784)
    # 10 bits: k = 0..8 reverse to 0, 512, 256, 768, 128, 640, 384, 896, 64; 896 >= 784 drops
    assert perm[:8].tolist() == [0, 512, 256, 768, 128, 640, 384, 64]


def test_mnist_uncompressed_torchvision_layout(tmp_path):
    arrays = make_mnist(tmp_path / "MNIST" / "raw", gz=False)
    ds = im.load_smnist(tmp_path, download=False, cache=False, progress=False)
    assert len(ds.test) == 8 and "not checked" in ds.info["checksum"]
    assert ds.test.labels.tolist() == arrays["test_labels"].tolist()


def test_mnist_errors(tmp_path, mnist_mirror, monkeypatch):
    make_mnist(tmp_path / "partial", seed=3)  # other bytes than the (patched) published ones
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        im.load_smnist(tmp_path / "partial", download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k" not in message
    assert str(tmp_path / "partial") in message and "$SSMJAX_DATA/mnist" in message
    with pytest.raises(ChecksumError):  # a local file that differs from the published one
        im.load_smnist(tmp_path / "partial", progress=False)
    ds = im.load_smnist(tmp_path / "partial", verify=False, cache=False, progress=False)
    assert len(ds.test) == 8 and "not checked" in ds.info["checksum"]
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", (f"{DEAD}/",))
    with pytest.raises(DownloadError, match=r"train-images-idx3-ubyte\.gz"):
        im.load_smnist(tmp_path / "offline", progress=False)


@pytest.fixture(scope="module")
def real_t10k():
    found = sorted(REAL_DATA.rglob("t10k-images-idx3-ubyte.gz")) if REAL_DATA.is_dir() else []
    for images in found:
        labels = images.with_name("t10k-labels-idx1-ubyte.gz")
        if labels.is_file():
            return images, labels
    pytest.skip(f"real MNIST test files (t10k-*-idx*-ubyte.gz) not found under {REAL_DATA}")


def test_real_mnist_t10k(real_t10k):
    images, labels = real_t10k
    assert sha256(images) == im.MNIST_FILES["test_images"][2]
    assert sha256(labels) == im.MNIST_FILES["test_labels"][2]
    x, y = im.read_idx(images), im.read_idx(labels)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert set(np.unique(y).tolist()) == set(range(10)) and x.max() == 255


# ----------------------------------------------------------------------------- digits


def test_digits():
    pytest.importorskip("sklearn")
    ds = load("digits")
    assert ds.d_input == 1 and ds.seq_len == 64 and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1258, 180, 359)
    assert ds.train.inputs.shape == (1258, 64, 1) and ds.train.inputs.dtype == np.float32
    assert ds.train.inputs.min() == 0 and ds.train.inputs.max() == 1
    labels = np.concatenate([ds.train.labels, ds.val.labels, ds.test.labels])
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    again = im.load_digits()
    np.testing.assert_array_equal(again.test.inputs, ds.test.inputs)
    assert not np.array_equal(im.load_digits(seed=1).test.labels, ds.test.labels)


def test_digits_without_sklearn(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("no sklearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        im.load_digits()


def test_normalized_pixels_view():
    raw = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    view = im.NormalizedPixels(raw, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    assert view.shape == (2, 4, 3) and view.ndim == 3 and len(view) == 2
    want = (raw / 255 - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.5, 0.25])
    np.testing.assert_allclose(np.asarray(view), want, rtol=1e-6)
    np.testing.assert_allclose(view[np.array([1, 0])], want[[1, 0]], rtol=1e-6)
    with pytest.raises(ValueError):
        im.NormalizedPixels(raw.astype(np.float32), 0.0, 1.0)


def test_registry_names():
    from ssmjax.data.registry import available

    for name in ["text", "retrieval", "image", "scifar", "scifar_gray", "smnist", "psmnist",
                 "digits"]:  # fmt: skip
        assert name in available()


def test_cifar_default_location(tmp_path, cifar_mirror, monkeypatch):
    monkeypatch.setenv("SSMJAX_DATA", str(tmp_path / "home"))
    ds = load("image", progress=False, cache=False)
    assert ds.info["data_dir"] == str(tmp_path / "home" / "cifar10" / "cifar-10-batches-py")


def test_numpy1_pickle_with_bytes_keys(tmp_path):
    """Pickles naming ``numpy.core.multiarray`` (NumPy 1, as the real files) with bytes keys."""
    data = np.zeros((2, 3072), np.uint8)
    data[1, 1024] = 9  # first green value of image 1
    blob = pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in blob
    (tmp_path / "b").write_bytes(blob)
    pixels, labels = im.read_cifar_batch(tmp_path / "b")
    assert pixels[1, 0].tolist() == [0, 9, 0] and labels.tolist() == [3, 4]
