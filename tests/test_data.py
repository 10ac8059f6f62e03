"""sparseforge.data: IDX parsing and validation, MNIST-1D generation, Dataset helpers."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseforge import data as sfdata
from sparseforge.data import (
    FMNIST_MEAN,
    FMNIST_STD,
    Dataset,
    fashion_mnist_available,
    load_dataset,
    load_fashion_mnist,
    load_mnist1d,
)
from sparseforge.errors import ConfigError

N_TRAIN, N_TEST, SIDE = 6, 4, 28


# ----------------------------------------------------------------------------- IDX fixtures
def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX file content: big-endian magic 0x0000 08 NN, NN int32 dims, then uint8 data."""
    if magic is None:
        magic = (0x08 << 8) | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, content: bytes, compress: bool = True) -> None:
    path.write_bytes(gzip.compress(content) if compress else content)


def _make_fmnist(root: Path, compress: bool = True) -> dict[str, np.ndarray]:
    """Write a tiny but well-formed Fashion-MNIST folder; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, SIDE, SIDE), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, SIDE, SIDE), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST, dtype=np.uint8) * 3) % 10,
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        _write(root / (stem + (".gz" if compress else "")), _idx_bytes(arr), compress)
    return arrays


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    root = tmp_path / "fmnist"
    _make_fmnist(root)
    return root


def test_tiny_idx_roundtrip(fmnist_dir: Path) -> None:
    arrays = _make_fmnist(fmnist_dir)
    d = load_fashion_mnist(fmnist_dir)
    assert d.name == "fashion-mnist"
    assert d.x_train.shape == (N_TRAIN, 1, SIDE, SIDE) and d.x_test.shape == (N_TEST, 1, SIDE, SIDE)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.input_shape == (1, SIDE, SIDE) and d.num_classes == 10
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32))
    expected = (raw / 255.0 - FMNIST_MEAN) / FMNIST_STD
    torch.testing.assert_close(d.x_train[:, 0], expected)
    assert d.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert d.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_uncompressed_files_are_accepted(tmp_path: Path) -> None:
    arrays = _make_fmnist(tmp_path, compress=False)
    assert fashion_mnist_available(tmp_path)
    d = load_fashion_mnist(tmp_path)
    assert d.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_env_var_sets_default_root(fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEFORGE_FMNIST", str(fmnist_dir))
    assert fashion_mnist_available()
    assert load_fashion_mnist().num_train == N_TRAIN
    assert load_dataset("auto").name == "fashion-mnist"


def test_cache_returns_fresh_tensors_and_sees_replaced_files(fmnist_dir: Path) -> None:
    a = load_fashion_mnist(fmnist_dir)
    a.x_train.zero_()  # mutating one result must not leak into the next load
    b = load_fashion_mnist(fmnist_dir)
    assert b.x_train.abs().sum() > 0
    # a file replaced on disk (different size) is parsed again
    labels = np.full(N_TRAIN + 2, 7, dtype=np.uint8)
    images = np.zeros((N_TRAIN + 2, SIDE, SIDE), dtype=np.uint8)
    _write(fmnist_dir / "train-labels-idx1-ubyte.gz", _idx_bytes(labels))
    _write(fmnist_dir / "train-images-idx3-ubyte.gz", _idx_bytes(images))
    c = load_fashion_mnist(fmnist_dir)
    assert c.num_train == N_TRAIN + 2 and set(c.y_train.tolist()) == {7}


# ----------------------------------------------------------------------------- bad input
def test_missing_file(fmnist_dir: Path) -> None:
    (fmnist_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    assert not fashion_mnist_available(fmnist_dir)
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte\.gz.*not found"):
        load_fashion_mnist(fmnist_dir)


def test_missing_folder(tmp_path: Path) -> None:
    assert not fashion_mnist_available(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not found.*dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_wrong_magic(fmnist_dir: Path) -> None:
    labels = np.zeros(N_TRAIN, dtype=np.uint8)
    _write(fmnist_dir / "train-labels-idx1-ubyte.gz", _idx_bytes(labels, magic=2051))
    with pytest.raises(ConfigError, match=r"train-labels-idx1-ubyte\.gz.*magic number 2051.*expected 2049"):
        load_fashion_mnist(fmnist_dir)


def test_label_and_image_files_swapped(fmnist_dir: Path) -> None:
    imgs = (fmnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    (fmnist_dir / "t10k-images-idx3-ubyte.gz").write_bytes((fmnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (fmnist_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(imgs)
    with pytest.raises(ConfigError, match=r"t10k-images-idx3-ubyte\.gz.*magic number 2049"):
        load_fashion_mnist(fmnist_dir)


def test_truncated_data(fmnist_dir: Path) -> None:
    content = _idx_bytes(np.zeros((N_TRAIN, SIDE, SIDE), dtype=np.uint8))
    _write(fmnist_dir / "train-images-idx3-ubyte.gz", content[:-100])
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte\.gz.*truncated.*only 4604"):
        load_fashion_mnist(fmnist_dir)


def test_truncated_header(fmnist_dir: Path) -> None:
    _write(fmnist_dir / "train-images-idx3-ubyte.gz", b"\x00\x00\x08\x03\x00")
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte\.gz.*truncated.*16-byte IDX header"):
        load_fashion_mnist(fmnist_dir)


def test_truncated_gzip_stream(fmnist_dir: Path) -> None:
    p = fmnist_dir / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte\.gz.*gzip"):
        load_fashion_mnist(fmnist_dir)


def test_trailing_bytes(fmnist_dir: Path) -> None:
    content = _idx_bytes(np.zeros(N_TEST, dtype=np.uint8)) + b"\x00\x00"
    _write(fmnist_dir / "t10k-labels-idx1-ubyte.gz", content)
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte\.gz.*2 unexpected bytes"):
        load_fashion_mnist(fmnist_dir)


def test_count_mismatch(fmnist_dir: Path) -> None:
    _write(fmnist_dir / "train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(N_TRAIN - 1, dtype=np.uint8)))
    with pytest.raises(ConfigError, match=rf"{N_TRAIN} images.*{N_TRAIN - 1} labels"):
        load_fashion_mnist(fmnist_dir)


def test_label_out_of_range(fmnist_dir: Path) -> None:
    _write(fmnist_dir / "t10k-labels-idx1-ubyte.gz", _idx_bytes(np.full(N_TEST, 12, dtype=np.uint8)))
    with pytest.raises(ConfigError, match=r"label 12"):
        load_fashion_mnist(fmnist_dir)


def test_errors_are_value_errors(fmnist_dir: Path) -> None:
    (fmnist_dir / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ValueError):
        load_fashion_mnist(fmnist_dir)


# ----------------------------------------------------------------------------- real Fashion-MNIST
@pytest.mark.skipif(not fashion_mnist_available(sfdata.DEFAULT_FMNIST_ROOT),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    d = load_fashion_mnist(sfdata.DEFAULT_FMNIST_ROOT)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.y_train.shape == (60000,) and d.y_test.shape == (10000,)
    assert int(d.y_train.min()) == 0 and int(d.y_train.max()) == 9
    assert torch.bincount(d.y_test).tolist() == [1000] * 10
    # the normalization constants are the train statistics
    assert abs(float(d.x_train.mean())) < 1e-3 and abs(float(d.x_train.std()) - 1.0) < 1e-3


# ----------------------------------------------------------------------------- MNIST-1D
def test_mnist1d_shapes() -> None:
    d = load_mnist1d()
    assert d.name == "mnist1d"
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.input_shape == (40,) and d.num_classes == 10
    assert set(d.y_train.unique().tolist()) == set(range(10))
    c = d.as_channels()
    assert c.x_train.shape == (4000, 1, 40) and c.input_shape == (1, 40)
    assert c.as_channels() is c


def test_mnist1d_determinism_and_seed() -> None:
    a, b = load_mnist1d(seed=3, num_samples=500), load_mnist1d(seed=3, num_samples=500)
    assert a.x_train.shape == (400, 40) and a.x_test.shape == (100, 40)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train is not b.x_train  # the cache hands out copies
    c = load_mnist1d(seed=4, num_samples=500)
    assert not torch.equal(a.x_train, c.x_train)


def test_mnist1d_leaves_global_rngs_alone() -> None:
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    load_mnist1d(seed=11, num_samples=200)
    assert (random.random(), np.random.rand()) == expected


def test_mnist1d_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    import mnist1d.data

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("download path called")

    monkeypatch.setattr(mnist1d.data, "get_dataset", boom)
    monkeypatch.setattr(mnist1d.data.requests, "get", boom)
    load_mnist1d(seed=12, num_samples=100)


@pytest.mark.parametrize("kw, match", [
    ({"num_samples": 105}, "multiple of 10"),
    ({"num_samples": 10}, "num_samples must be >= 20"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"train_split": 1.0}, "train_split"),
])
def test_mnist1d_bad_args(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_mnist1d(**kw)


# ----------------------------------------------------------------------------- Dataset helpers
@pytest.fixture(scope="module")
def small() -> Dataset:
    return load_mnist1d(seed=1, num_samples=300)


def _order(loader: torch.utils.data.DataLoader) -> list[list[int]]:
    return [yb.tolist() for _, yb in loader]


def test_loaders_reproducible(small: Dataset) -> None:
    # index labels so the batch contents identify the sample order exactly
    ds = Dataset("idx", small.x_train, torch.arange(small.num_train), small.x_test, small.y_test, 10, (40,))
    tr1, te1 = ds.loaders(batch_size=32, seed=5)
    tr2, _ = ds.loaders(batch_size=32, seed=5)
    torch.manual_seed(999)  # the global RNG must not matter
    first = _order(tr1)
    assert first == _order(tr2)
    assert sorted(sum(first, [])) == list(range(ds.num_train)) and first[0] != list(range(32))
    assert first != _order(tr1)  # the next epoch is shuffled anew ...
    tr3, _ = ds.loaders(batch_size=32, seed=5)
    _order(tr3)
    assert _order(tr3) == _order(tr2)  # ... identically for the same seed
    assert _order(ds.loaders(batch_size=32, seed=6)[0]) != first
    assert len(_order(te1)) == 1 + (ds.num_test - 1) // 32
    assert torch.equal(torch.cat([xb for xb, _ in te1]), ds.x_test)  # test order kept
    tr_drop, te_big = ds.loaders(batch_size=64, seed=0, drop_last=True, test_batch_size=1000)
    assert len(tr_drop) == ds.num_train // 64 and len(te_big) == 1


def test_loaders_bad_args(small: Dataset) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        small.loaders(batch_size=0)


def test_subset(small: Dataset) -> None:
    s = small.subset(50, 20)
    assert (s.num_train, s.num_test, s.name, s.input_shape) == (50, 20, small.name, small.input_shape)
    assert torch.equal(s.x_train, small.x_train[:50])
    assert small.subset(n_test=5).num_train == small.num_train
    with pytest.raises(ConfigError, match="n_train=1000 exceeds the 240"):
        small.subset(1000)
    with pytest.raises(ConfigError, match="n_test"):
        small.subset(10, 0)


def test_dataset_validation_and_repr(small: Dataset) -> None:
    with pytest.raises(ConfigError, match="x_train has 240 samples but y_train has 3"):
        Dataset("bad", small.x_train, small.y_train[:3], small.x_test, small.y_test, 10, (40,))
    with pytest.raises(ConfigError, match="input_shape"):
        Dataset("bad", small.x_train, small.y_train, small.x_test, small.y_test, 10, (1, 40))
    r = repr(small)
    assert "train=240" in r and len(r) < 200
    with pytest.raises(AttributeError):
        small.name = "other"  # type: ignore[misc]


# ----------------------------------------------------------------------------- load_dataset
def test_load_dataset_names(fmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEFORGE_FMNIST", str(fmnist_dir / "absent"))
    d = load_dataset("auto", num_samples=200)
    assert d.name == "mnist1d" and d.num_train == 160
    assert load_dataset("MNIST1D", num_samples=200, n_train=10, n_test=7).x_test.shape == (7, 40)
    assert load_dataset("fashion_mnist", root=fmnist_dir).num_test == N_TEST
    # an explicit root means Fashion-MNIST is wanted: no silent fallback
    assert load_dataset("auto", root=fmnist_dir).name == "fashion-mnist"
    with pytest.raises(ConfigError, match="not found"):
        load_dataset("auto", root=fmnist_dir / "absent")
    with pytest.raises(ConfigError, match="root applies to fashion-mnist only"):
        load_dataset("mnist1d", root=fmnist_dir)


def test_load_dataset_unknown_name() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'cifar10'; allowed: fashion-mnist, mnist1d, auto"):
        load_dataset("cifar10")


def test_split_validation(small: Dataset) -> None:
    v = small.split_validation(40)
    assert (v.num_train, int(v.x_val.shape[0]), v.num_test) == (200, 40, small.num_test)
    # the last training samples, disjoint from what stays and from any prefix subset of it
    assert torch.equal(v.x_val, small.x_train[200:]) and torch.equal(v.y_val, small.y_train[200:])
    assert torch.equal(v.x_train, small.x_train[:200])
    s = v.subset(50, 10)
    assert s.num_train == 50 and torch.equal(s.x_val, v.x_val)  # the validation split stays whole
    assert "val=40" in repr(v) and "val=" not in repr(small)
    assert v.as_channels().x_val.shape == (40, 1, 40)
    assert small.x_val is None and small.as_channels().x_val is None


@pytest.mark.parametrize("n_val, match", [
    (240, "n_val=240 must be below the 240 training samples"),
    (0, "n_val"),
    (2.5, "n_val"),
])
def test_split_validation_bad_sizes(small: Dataset, n_val, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        small.split_validation(n_val)


def test_split_validation_twice_and_half_given(small: Dataset) -> None:
    with pytest.raises(ConfigError, match="already has a validation split of 40 samples"):
        small.split_validation(40).split_validation(10)
    with pytest.raises(ConfigError, match="give both x_val and y_val"):
        Dataset("bad", small.x_train, small.y_train, small.x_test, small.y_test, 10, (40,), x_val=small.x_test)
    with pytest.raises(ConfigError, match="x_val has 60 samples but y_val has 3"):
        Dataset("bad", small.x_train, small.y_train, small.x_test, small.y_test, 10, (40,),
                x_val=small.x_test, y_val=small.y_test[:3])


def test_load_dataset_n_val_before_n_train() -> None:
    full = load_dataset("mnist1d", num_samples=200)
    d = load_dataset("mnist1d", num_samples=200, n_val=30, n_train=100)
    # the validation split is cut from the full training split first, then n_train counts what stays
    assert torch.equal(d.x_val, full.x_train[130:]) and torch.equal(d.x_train, full.x_train[:100])
