"""Offline datasets for demos, tests and benchmarks. Nothing here ever downloads.

Two datasets, both small enough to train on a 2-core CPU in minutes:

* **Fashion-MNIST** (Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms", arXiv:1708.07747): 60,000 train / 10,000 test
  grey 28x28 images, 10 classes. Read from the IDX files that the Debian package
  ``dataset-fashion-mnist`` installs in ``/usr/share/datasets/fashion-mnist``, or from any
  folder holding the same four files (gzip-compressed or not).
* **MNIST-1D** (Greydanus 2020, "Scaling down Deep Learning", arXiv:2011.14439): 1-D signals of
  length 40, 10 classes, generated in about a second by the ``mnist1d`` package.

Every loader returns a :class:`Dataset`: normalized float32 tensors plus the metadata models
need to size themselves (:func:`sparseforge.models.build_model`).

Example::

    from sparseforge.data import load_dataset
    data = load_dataset("auto")            # Fashion-MNIST if installed, else MNIST-1D
    train, test = data.loaders(batch_size=128, seed=0)
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import random
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .core.rng import stream_generator
from .errors import ConfigError, check_int, check_number

__all__ = [
    "DATASETS",
    "DEFAULT_FMNIST_ROOT",
    "FMNIST_ENV_VAR",
    "FMNIST_FILES",
    "FMNIST_MEAN",
    "FMNIST_STD",
    "Dataset",
    "fashion_mnist_available",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist1d",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
DEFAULT_FMNIST_ROOT = "/usr/share/datasets/fashion-mnist"
#: Environment variable that points :func:`load_fashion_mnist` at another folder.
FMNIST_ENV_VAR = "SPARSEFORGE_FMNIST"
#: The four IDX files, keyed by role; each may also be present without the ``.gz`` suffix.
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
#: Mean and std of the 60,000 Fashion-MNIST training pixels after scaling to [0, 1].
#: Fixed constants rather than statistics of whatever was loaded, so a subset or a test
#: fixture is normalized exactly like the full dataset.
FMNIST_MEAN = 0.2860405969887955
FMNIST_STD = 0.35302424451492254
#: Names accepted by :func:`load_dataset`.
DATASETS = ("fashion-mnist", "mnist1d", "auto")

_FMNIST_CLASSES = 10
_MNIST1D_CLASSES = 10
_IDX_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


# ----------------------------------------------------------------------------- Dataset
@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory classification dataset with train and test splits, and optionally a validation split.

    ``eq=False`` because comparing tensors element-wise has no single truth value; two
    datasets are the same only if they are the same object.

    Attributes:
        name: registry name (``"fashion-mnist"`` or ``"mnist1d"``), also after :meth:`subset`.
        x_train, x_test: float32 inputs, normalized; shape ``[N, *input_shape]``.
        y_train, y_test: int64 class labels in ``[0, num_classes)``; shape ``[N]``.
        num_classes: number of classes.
        input_shape: shape of one sample, e.g. ``(1, 28, 28)`` or ``(40,)``.
        x_val, y_val: a validation split held out of the training samples
            (:meth:`split_validation`), or None.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if (self.x_val is None) != (self.y_val is None):
            raise ConfigError(f"Dataset {self.name!r}: give both x_val and y_val, or neither")
        for split in ("train", "test") if self.x_val is None else ("train", "test", "val"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise ConfigError(f"Dataset {self.name!r}: x_{split} and y_{split} must be torch tensors")
            if x.shape[0] != y.shape[0]:
                raise ConfigError(
                    f"Dataset {self.name!r}: x_{split} has {x.shape[0]} samples but y_{split} has {y.shape[0]}"
                )
            if tuple(x.shape[1:]) != self.input_shape:
                raise ConfigError(
                    f"Dataset {self.name!r}: x_{split} samples have shape {tuple(x.shape[1:])}, "
                    f"expected input_shape {self.input_shape}"
                )

    def __repr__(self) -> str:
        # the default repr would print every tensor element
        return (
            f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            + ("" if self.x_val is None else f"val={int(self.x_val.shape[0])}, ")
            + f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])

    def as_channels(self) -> Dataset:
        """Return the dataset with an explicit channel axis: ``[N, L]`` becomes ``[N, 1, L]``.

        1-D convolutions (:class:`sparseforge.models.CNN1D`) expect ``[N, C, L]``. Datasets
        that already have a channel axis (images, or a dataset already converted) are
        returned unchanged. The tensors are views, so no memory is copied.
        """
        if len(self.input_shape) != 1:
            return self
        return replace(
            self,
            x_train=self.x_train.unsqueeze(1),
            x_test=self.x_test.unsqueeze(1),
            x_val=None if self.x_val is None else self.x_val.unsqueeze(1),
            input_shape=(1, *self.input_shape),
        )

    def split_validation(self, n_val: int, *, param: str = "n_val") -> Dataset:
        """Hold the last ``n_val`` training samples out as the validation split (``x_val``, ``y_val``).

        Training then runs on the first ``num_train - n_val`` samples only, so hyperparameters
        can be chosen on the validation accuracy and the test set is scored once, with the
        chosen setting. Both loaders store their samples in shuffled order, so the last
        samples are a fair sample, disjoint from any prefix :meth:`subset` takes of what stays.
        ``param`` names the argument in error messages.
        """
        check_int(n_val, param, minimum=1)
        if self.x_val is not None:
            raise ConfigError(f"Dataset {self.name!r} already has a validation split of {int(self.x_val.shape[0])} samples")
        if n_val >= self.num_train:
            raise ConfigError(f"{param}={n_val} must be below the {self.num_train} training samples of dataset "
                              f"{self.name!r} (some must stay for training)")
        keep = self.num_train - n_val
        return replace(self, x_train=self.x_train[:keep], y_train=self.y_train[:keep],
                       x_val=self.x_train[keep:], y_val=self.y_train[keep:])

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """Return the first ``n_train`` training and ``n_test`` test samples (None = all).

        Both loaders already store their samples in shuffled order, so a prefix is a fair
        sample and the same call always gives the same subset. Asking for more samples than
        exist is an error rather than a silent cap. A validation split is kept as it is.
        """
        n_train = self._check_count(n_train, "n_train", self.num_train)
        n_test = self._check_count(n_test, "n_test", self.num_test)
        return replace(
            self,
            x_train=self.x_train[:n_train],
            y_train=self.y_train[:n_train],
            x_test=self.x_test[:n_test],
            y_test=self.y_test[:n_test],
        )

    def _check_count(self, n: int | None, name: str, available: int) -> int:
        if n is None:
            return available
        check_int(n, name, minimum=1)
        if n > available:
            raise ConfigError(f"{name}={n} exceeds the {available} samples of dataset {self.name!r}")
        return n

    def loaders(
        self,
        batch_size: int,
        seed: int = 0,
        *,
        test_batch_size: int | None = None,
        drop_last: bool = False,
    ) -> tuple[DataLoader, DataLoader]:
        """Return ``(train_loader, test_loader)`` over in-memory ``TensorDataset``\\ s.

        The train loader shuffles with its own ``torch.Generator`` derived from ``seed`` (stream ``"batches"``), so
        the same seed gives the same batch order (epoch after epoch) independently of the
        global torch RNG; the test loader keeps the stored order. ``num_workers=0``
        because the data already sits in memory and worker processes would only add
        start-up time and break reproducibility across platforms.

        Args:
            batch_size: train batch size.
            seed: seed of the train shuffling.
            test_batch_size: test batch size (default: ``batch_size``).
            drop_last: drop the last incomplete train batch.
        """
        check_int(batch_size, "batch_size", minimum=1)
        check_int(seed, "seed")
        if test_batch_size is None:
            test_batch_size = batch_size
        check_int(test_batch_size, "test_batch_size", minimum=1)
        generator = stream_generator(seed, "batches")
        train = DataLoader(
            TensorDataset(self.x_train, self.y_train),
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            drop_last=drop_last,
            num_workers=0,
        )
        test = DataLoader(
            TensorDataset(self.x_test, self.y_test), batch_size=test_batch_size, shuffle=False, num_workers=0
        )
        return train, test


# ----------------------------------------------------------------------------- Fashion-MNIST
def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        root = os.environ.get(FMNIST_ENV_VAR) or DEFAULT_FMNIST_ROOT
    return Path(root).expanduser()


def _find_file(root: Path, gz_name: str) -> Path | None:
    """The ``.gz`` file if present, else the uncompressed one, else None."""
    for name in (gz_name, gz_name[: -len(".gz")]):
        p = root / name
        if p.is_file():
            return p
    return None


def fashion_mnist_available(root: str | os.PathLike[str] | None = None) -> bool:
    """True if all four Fashion-MNIST IDX files exist in ``root``.

    ``root`` defaults to ``$SPARSEFORGE_FMNIST`` if set, else ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``). Only checks that the files exist; their
    contents are validated by :func:`load_fashion_mnist`.
    """
    r = _resolve_root(root)
    return all(_find_file(r, f) is not None for f in FMNIST_FILES.values())


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse one unsigned-byte IDX file with ``ndim`` dimensions into a uint8 array.

    IDX layout (LeCun et al., MNIST database): a big-endian magic number ``0x0000TTNN``
    (TT = element type, 0x08 for unsigned byte; NN = number of dims), then NN big-endian
    int32 sizes, then the data. So labels start at byte 8 and images at byte 16.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read Fashion-MNIST file {str(path)!r}: {e}") from None
    # sniff the content, not the suffix: a renamed or already-unpacked file still loads
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:  # BadGzipFile is an OSError
            raise ConfigError(f"Fashion-MNIST file {str(path)!r} is not a valid gzip stream ({e}); "
                              "it is probably truncated, download or reinstall it") from None
    header_len = 4 + 4 * ndim
    if len(raw) < 4:
        raise ConfigError(f"Fashion-MNIST file {str(path)!r} is truncated: {len(raw)} bytes, no IDX magic number")
    # magic first: a swapped image/label file is then reported as such, not as "truncated"
    magic = struct.unpack(">I", raw[:4])[0]
    expected = (_IDX_UBYTE << 8) | ndim
    if magic != expected:
        raise ConfigError(
            f"Fashion-MNIST file {str(path)!r} has IDX magic number {magic} (0x{magic:08x}); expected "
            f"{expected} (0x{expected:08x}: unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}). "
            "Is it the right file, or an image file swapped with a label file?"
        )
    if len(raw) < header_len:
        raise ConfigError(
            f"Fashion-MNIST file {str(path)!r} is truncated: {len(raw)} bytes, "
            f"shorter than the {header_len}-byte IDX header"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected_bytes = math.prod(dims)
    got_bytes = len(raw) - header_len
    if got_bytes < expected_bytes:
        raise ConfigError(
            f"Fashion-MNIST file {str(path)!r} is truncated: its header announces dims {list(dims)} "
            f"= {expected_bytes} bytes of data but only {got_bytes} follow"
        )
    if got_bytes > expected_bytes:
        raise ConfigError(
            f"Fashion-MNIST file {str(path)!r} has {got_bytes - expected_bytes} unexpected bytes after the "
            f"{expected_bytes} bytes its header announces (dims {list(dims)}); the file is corrupt"
        )
    # copy: frombuffer over bytes is read-only and torch wants writable memory
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def _read_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    paths = {}
    for kind in ("images", "labels"):
        gz_name = FMNIST_FILES[f"{split}_{kind}"]
        p = _find_file(root, gz_name)
        if p is None:
            raise ConfigError(
                f"Fashion-MNIST file {str(root / gz_name)!r} not found (nor without '.gz'). "
                f"Install the Debian package dataset-fashion-mnist, set ${FMNIST_ENV_VAR} or pass root= "
                "a folder holding the four IDX files; or use dataset 'mnist1d', which needs no files"
            )
        paths[kind] = p
    images = _read_idx(paths["images"], 3)
    labels = _read_idx(paths["labels"], 1)
    if images.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"Fashion-MNIST {split} split: {str(paths['images'])!r} holds {images.shape[0]} images but "
            f"{str(paths['labels'])!r} holds {labels.shape[0]} labels; the counts must match"
        )
    if labels.size and int(labels.max()) >= _FMNIST_CLASSES:
        raise ConfigError(
            f"Fashion-MNIST file {str(paths['labels'])!r} holds label {int(labels.max())}; "
            f"labels must be in [0, {_FMNIST_CLASSES})"
        )
    return torch.from_numpy(images), torch.from_numpy(labels)


@functools.lru_cache(maxsize=4)
def _parse_fmnist(root: str, signature: tuple[Any, ...]) -> tuple[torch.Tensor, ...]:
    """Parsed uint8 images and labels of both splits, cached per folder.

    Decompressing and parsing takes ~0.5 s and benchmarks load the dataset once per run.
    ``signature`` (size and mtime of every file) is part of the key so a file replaced on
    disk is read again. Raw uint8 tensors are cached, not the normalized floats: callers get
    fresh float tensors they may modify in place without corrupting the cache, and the cache
    holds 55 MB instead of 220 MB.
    """
    del signature  # only part of the cache key
    r = Path(root)
    x_tr, y_tr = _read_split(r, "train")
    x_te, y_te = _read_split(r, "test")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ConfigError(
            f"Fashion-MNIST in {root!r}: train images are {tuple(x_tr.shape[1:])} but test images are "
            f"{tuple(x_te.shape[1:])}"
        )
    return x_tr, y_tr, x_te, y_te


def _file_signature(root: Path) -> tuple[Any, ...]:
    sig: list[Any] = []
    for gz_name in FMNIST_FILES.values():
        p = _find_file(root, gz_name)
        if p is None:
            sig.append(None)
        else:
            st = p.stat()
            sig.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def _normalize_images(images: torch.Tensor) -> torch.Tensor:
    x = images.to(torch.float32).div_(255.0).sub_(FMNIST_MEAN).div_(FMNIST_STD)
    return x.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]: one grey channel


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Dataset:
    """Load Fashion-MNIST (Xiao et al. 2017) from local IDX files; never downloads.

    Args:
        root: folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (each may also be
            uncompressed, without ``.gz``). Default: ``$SPARSEFORGE_FMNIST`` if set, else
            ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

    Returns:
        A :class:`Dataset` named ``"fashion-mnist"`` with ``x`` of shape ``[N, 1, 28, 28]``:
        pixels scaled to [0, 1], then standardized with the training-set constants
        :data:`FMNIST_MEAN` and :data:`FMNIST_STD`; labels int64 in [0, 10).

    Raises:
        ConfigError: a file is missing, has the wrong IDX magic number, is truncated or
            corrupt, or images and labels of a split differ in count. The message names the file.
    """
    r = _resolve_root(root).resolve()
    x_tr, y_tr, x_te, y_te = _parse_fmnist(str(r), _file_signature(r))
    return Dataset(
        name="fashion-mnist",
        x_train=_normalize_images(x_tr),
        y_train=y_tr.to(torch.int64),
        x_test=_normalize_images(x_te),
        y_test=y_te.to(torch.int64),
        num_classes=_FMNIST_CLASSES,
        input_shape=(1, *x_tr.shape[1:]),
    )


# ----------------------------------------------------------------------------- MNIST-1D
def load_mnist1d(seed: int = 0, num_samples: int = 5000, *, train_split: float = 0.8) -> Dataset:
    """Generate MNIST-1D (Greydanus 2020) with the ``mnist1d`` package; never downloads.

    Uses ``mnist1d.data.make_dataset`` with the package's default transformation arguments
    (``get_dataset_args()``) and ``seed``; the download path (``get_dataset``) is never
    called. The defaults give 4,000 train / 1,000 test signals of length 40, in shuffled
    order. Generation takes about a second.

    The package seeds the global ``random`` and ``numpy`` generators; their states are saved
    and restored here, so loading data does not change the caller's random streams.

    Args:
        seed: generator seed; the same seed gives identical tensors.
        num_samples: total samples (train + test); a multiple of 10 (equal samples per class).
        train_split: fraction of ``num_samples`` that goes to the train split.

    Returns:
        A :class:`Dataset` named ``"mnist1d"`` with float32 ``x`` of shape ``[N, 40]``
        (use :meth:`Dataset.as_channels` for ``[N, 1, 40]``) and int64 labels in [0, 10).
    """
    check_int(seed, "seed", minimum=0)
    if seed >= 2**32:  # numpy's legacy seeding, which mnist1d uses, takes 32-bit seeds
        raise ConfigError(f"seed must be < 2**32 for mnist1d; got {seed}")
    check_int(num_samples, "num_samples", minimum=2 * _MNIST1D_CLASSES)
    if num_samples % _MNIST1D_CLASSES:
        # make_dataset makes num_samples // 10 per class and would silently drop the rest
        raise ConfigError(f"num_samples must be a multiple of {_MNIST1D_CLASSES} (one share per class); got {num_samples}")
    train_split = check_number(train_split, "train_split", minimum=0.0, maximum=1.0, min_open=True, max_open=True)
    n_train = int(num_samples * train_split)
    if n_train < 1 or n_train >= num_samples:
        raise ConfigError(
            f"train_split={train_split} with num_samples={num_samples} leaves an empty train or test split"
        )
    x_tr, y_tr, x_te, y_te = _generate_mnist1d(seed, num_samples, float(train_split))
    return Dataset(
        name="mnist1d",
        x_train=x_tr.clone(),
        y_train=y_tr.clone(),
        x_test=x_te.clone(),
        y_test=y_te.clone(),
        num_classes=_MNIST1D_CLASSES,
        input_shape=(int(x_tr.shape[1]),),
    )


@functools.lru_cache(maxsize=8)
def _generate_mnist1d(seed: int, num_samples: int, train_split: float) -> tuple[torch.Tensor, ...]:
    # cached because tests and benchmarks regenerate the same seed many times; callers get clones
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    args.train_split = train_split
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (
        torch.as_tensor(d["x"], dtype=torch.float32),
        torch.as_tensor(d["y"], dtype=torch.int64),
        torch.as_tensor(d["x_test"], dtype=torch.float32),
        torch.as_tensor(d["y_test"], dtype=torch.int64),
    )


# ----------------------------------------------------------------------------- registry
def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    num_samples: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    n_val: int | None = None,
) -> Dataset:
    """Load a dataset by name: ``"fashion-mnist"``, ``"mnist1d"`` or ``"auto"``.

    ``"auto"`` picks Fashion-MNIST when its files are installed (:func:`fashion_mnist_available`)
    and MNIST-1D otherwise; the returned ``Dataset.name`` says which. An explicit ``root``
    means Fashion-MNIST is wanted, so ``"auto"`` with a ``root`` never falls back.

    Args:
        name: dataset name (case-insensitive; ``_`` and ``-`` are interchangeable).
        root: Fashion-MNIST folder (see :func:`load_fashion_mnist`).
        seed: MNIST-1D generator seed.
        num_samples: MNIST-1D total samples (default 5,000 = 4,000 train + 1,000 test).
        n_train, n_test: keep only the first samples of each split (see :meth:`Dataset.subset`).
        n_val: hold the last ``n_val`` training samples out as a validation split first
            (:meth:`Dataset.split_validation`); ``n_train`` then counts what stays.

    Example recipe section::

        data: {name: auto, batch_size: 128, n_train: 10000, n_val: 5000}
    """
    if not isinstance(name, str):
        raise ConfigError(f"dataset name must be a string, one of {list(DATASETS)}; got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key == "auto":
        key = "fashion-mnist" if root is not None or fashion_mnist_available() else "mnist1d"
    if key == "fashion-mnist":
        if num_samples is not None:
            raise ConfigError("num_samples applies to mnist1d only; use n_train / n_test to shrink fashion-mnist")
        data = load_fashion_mnist(root)
    elif key == "mnist1d":
        if root is not None:
            raise ConfigError(f"root applies to fashion-mnist only; mnist1d is generated, got root={str(root)!r}")
        data = load_mnist1d(seed, 5000 if num_samples is None else num_samples)
    else:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if n_val is not None:
        data = data.split_validation(n_val)
    if n_train is not None or n_test is not None:
        data = data.subset(n_train, n_test)
    return data
