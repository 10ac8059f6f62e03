"""sparseforge.models: shapes, parameter counts, registry and sizing from a dataset."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from sparseforge.data import Dataset, load_mnist1d
from sparseforge.errors import ConfigError
from sparseforge.models import CNN1D, MLP1D, MODELS, LeNet300100, SmallCNN, build_model, example_input


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    return load_mnist1d(seed=0, num_samples=200)


@pytest.fixture(scope="module")
def images() -> Dataset:
    """A tiny image dataset shaped like Fashion-MNIST (no files needed)."""
    g = torch.Generator().manual_seed(0)
    return Dataset("fake-images", torch.randn(8, 1, 28, 28, generator=g), torch.arange(8) % 10,
                   torch.randn(4, 1, 28, 28, generator=g), torch.arange(4), 10, (1, 28, 28))


def test_lenet_parameter_count_and_names() -> None:
    m = LeNet300100()
    assert _nparams(m) == 266_610
    assert [n for n, _ in m.named_parameters()] == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert m.fc1.weight.shape == (300, 784) and m.fc3.weight.shape == (10, 100)


def test_small_cnn_layout() -> None:
    m = SmallCNN()
    assert isinstance(m.bn1, nn.BatchNorm2d) and isinstance(m.bn2, nn.BatchNorm2d)
    assert m.conv1.weight.shape == (32, 1, 3, 3) and m.conv2.weight.shape == (64, 32, 3, 3)
    assert m.fc1.in_features == 64 * 7 * 7 and m.fc2.out_features == 10
    with pytest.raises(ConfigError, match="divisible by 4"):
        SmallCNN(image_size=30)


def test_mlp1d_names_and_hidden() -> None:
    m = MLP1D()
    assert [n for n, _ in m.named_parameters() if n.endswith("weight")] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert m.fc1.weight.shape == (256, 40) and m.fc3.weight.shape == (10, 256)
    assert MLP1D(hidden=[]).fc1.weight.shape == (10, 40)
    assert MLP1D(hidden=[8, 16, 32])(torch.zeros(2, 40)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"hidden\[1\]"):
        MLP1D(hidden=(8, 0))
    with pytest.raises(ConfigError, match="hidden"):
        MLP1D(hidden=256)  # type: ignore[arg-type]


def test_cnn1d_accepts_with_and_without_channel_axis() -> None:
    m = CNN1D().eval()
    x = torch.randn(3, 40)
    torch.testing.assert_close(m(x), m(x.unsqueeze(1)))
    assert CNN1D(length=41, channels=8)(torch.zeros(2, 1, 41)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"tiny-gpt"}))  # the LM is covered in test_text.py
def test_default_example_input_forward(name: str) -> None:
    m = build_model(name).eval()
    x = example_input(name, batch=3)
    assert x.dtype == torch.float32 and not x.any()
    assert m(x).shape == (3, 10)


@pytest.mark.parametrize("name, expected", [
    ("lenet300100", (2, 40)), ("mlp1d", (2, 40)), ("cnn1d", (2, 1, 40))])
def test_models_on_mnist1d(mnist1d: Dataset, name: str, expected: tuple[int, ...]) -> None:
    m = build_model(name, mnist1d).eval()
    x = example_input(name, mnist1d, batch=2)
    assert tuple(x.shape) == expected
    assert m(x).shape == (2, 10)
    assert m(mnist1d.x_test[:5]).shape == (5, 10)  # the trainer feeds the dataset's own tensors
    if name == "lenet300100":
        assert m.fc1.in_features == 40


@pytest.mark.parametrize("name", ["lenet300100", "small-cnn", "mlp1d"])
def test_models_on_images(images: Dataset, name: str) -> None:
    m = build_model(name, images).eval()
    x = example_input(name, images, batch=2)
    assert tuple(x.shape) == (2, 1, 28, 28)
    assert m(x).shape == (2, 10) and m(images.x_test).shape == (4, 10)


def test_build_model_sizes_classes_and_kwargs_win(mnist1d: Dataset) -> None:
    three = Dataset("three", mnist1d.x_train, mnist1d.y_train % 3, mnist1d.x_test, mnist1d.y_test % 3, 3, (40,))
    assert build_model("mlp1d", three).fc3.out_features == 3
    m = build_model("MLP1D", three, hidden=[16], num_classes=5)
    assert m.fc1.weight.shape == (16, 40) and m.fc2.out_features == 5
    assert build_model("small_cnn", in_channels=3)(torch.zeros(1, 3, 28, 28)).shape == (1, 10)


def test_build_model_errors(mnist1d: Dataset, images: Dataset) -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet50'; allowed: lenet300100, small-cnn, mlp1d, cnn1d"):
        build_model("resnet50")
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['width'\]"):
        build_model("lenet300100", width=3)
    with pytest.raises(ConfigError, match="small-cnn.*needs image inputs.*mnist1d"):
        build_model("small-cnn", mnist1d)
    with pytest.raises(ConfigError, match="cnn1d.*needs sequence inputs"):
        build_model("cnn1d", images)
    with pytest.raises(ConfigError, match="in_features"):
        build_model("lenet300100", in_features=0)
    with pytest.raises(ConfigError, match="unknown model"):
        example_input("vgg")
    with pytest.raises(ConfigError, match="batch"):
        example_input("mlp1d", batch=0)


def test_training_step_and_copies(mnist1d: Dataset) -> None:
    torch.manual_seed(0)
    for name in ("lenet300100", "mlp1d", "cnn1d"):
        m = build_model(name, mnist1d)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        loss = nn.functional.cross_entropy(m(mnist1d.x_train[:32]), mnist1d.y_train[:32])
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        m.eval()
        x = mnist1d.x_test[:4]
        for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
            torch.testing.assert_close(clone(x), m(x))
