"""Reference models for demos, tests and benchmarks.

Small, fast on a 2-core CPU, and with stable module names (``fc1``, ``conv1``, ``bn1`` ...)
so that recipes can target layers by name and results stay comparable across versions.

* :class:`LeNet300100` -- the fully connected LeNet-300-100 (LeCun et al. 1998, "Gradient-based
  learning applied to document recognition"), the standard small benchmark of the pruning
  literature since Han et al. 2015 and Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis").
* :class:`SmallCNN` -- two conv blocks and two linear layers for 28x28 images (Fashion-MNIST,
  Xiao et al. 2017); has BatchNorm so structured pruning sees conv -> BN -> conv groups.
* :class:`MLP1D` and :class:`CNN1D` -- the two model families of MNIST-1D (Greydanus 2020,
  "Scaling down Deep Learning").

:func:`build_model` sizes a model from a :class:`~sparseforge.data.Dataset` and
:func:`example_input` gives a matching zero input for FLOP counting.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, check_int

if TYPE_CHECKING:
    from .data import Dataset

__all__ = ["CNN1D", "MLP1D", "MODELS", "LeNet300100", "SmallCNN", "build_model", "example_input"]


class LeNet300100(nn.Module):
    """LeNet-300-100: ``Linear(in, 300) - ReLU - Linear(300, 100) - ReLU - Linear(100, classes)``.

    The fully connected network of LeCun et al. 1998, as used by Frankle & Carbin 2019 for
    the lottery ticket experiments. Any input shape is flattened, so ``[N, 1, 28, 28]`` and
    ``[N, 784]`` both work. With the default sizes it has 266,610 parameters.

    Args:
        in_features: number of input features after flattening (784 for 28x28 images).
        num_classes: number of output logits.
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        check_int(in_features, "in_features", minimum=1)
        check_int(num_classes, "num_classes", minimum=1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[N, num_classes]``."""
        x = self.flatten(x)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class SmallCNN(nn.Module):
    """A small CNN for 28x28 grey images (Fashion-MNIST, Xiao et al. 2017).

    ``conv1 (3x3, 32) - bn1 - ReLU - MaxPool 2 - conv2 (3x3, 64) - bn2 - ReLU - MaxPool 2 -
    flatten - fc1 (128) - ReLU - fc2 (num_classes)``; about 0.42 M parameters and 4.2 M
    multiply-adds per 28x28 sample, so an epoch of Fashion-MNIST fits in well under a minute
    on two CPU cores.

    Args:
        in_channels: input channels (1 for grey images).
        num_classes: number of output logits.
        image_size: input height and width (an int for square images); each must be
            divisible by 4 because of the two 2x2 poolings.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int | Sequence[int] = 28) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", minimum=1)
        check_int(num_classes, "num_classes", minimum=1)
        h, w = _pair(image_size, "image_size")
        if h % 4 or w % 4:
            raise ConfigError(f"image_size must have height and width divisible by 4 (two 2x2 poolings); got {(h, w)}")
        # no conv bias: the BatchNorm shift right after it would make the bias redundant
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[N, num_classes]`` for input ``[N, C, H, W]``."""
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


class MLP1D(nn.Module):
    """Fully connected network for MNIST-1D (Greydanus 2020): ``fc1 ... fcK`` with ReLUs.

    The hidden layers are ``fc1 .. fc{len(hidden)}`` and the output layer is
    ``fc{len(hidden) + 1}``, following the LeNet naming. The default ``hidden=(256, 256)``
    is close to the MLP baseline of the MNIST-1D paper (100 hidden units per layer there)
    but wide enough to leave room for high sparsity. Inputs are flattened.

    Args:
        in_features: features per sample after flattening (40 for MNIST-1D).
        hidden: widths of the hidden layers (may be empty: a linear classifier).
        num_classes: number of output logits.
    """

    def __init__(self, in_features: int = 40, hidden: Sequence[int] = (256, 256), num_classes: int = 10) -> None:
        super().__init__()
        check_int(in_features, "in_features", minimum=1)
        check_int(num_classes, "num_classes", minimum=1)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ConfigError(f"hidden must be a sequence of layer widths, e.g. [256, 256]; got {hidden!r}")
        widths = [check_int(h, f"hidden[{i}]", minimum=1) for i, h in enumerate(hidden)]
        self.hidden = tuple(widths)
        self.flatten = nn.Flatten()
        dims = [in_features, *widths, num_classes]
        self.num_layers = len(dims) - 1
        for i in range(self.num_layers):
            # named attributes, not a ModuleList, so parameter names read fc1.weight like LeNet's
            self.add_module(f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[N, num_classes]``."""
        x = self.flatten(x)
        for i in range(1, self.num_layers):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.num_layers}")(x)


class CNN1D(nn.Module):
    """1-D CNN for MNIST-1D (Greydanus 2020), after the paper's ``ConvBase``.

    Three ``Conv1d`` layers with stride 2 (kernels 5, 3, 3), each followed by BatchNorm and
    ReLU, then ``fc``: ``conv1 - bn1 - conv2 - bn2 - conv3 - bn3 - flatten - fc``. Accepts
    ``[N, C, L]`` and, for convenience with :func:`~sparseforge.data.load_mnist1d`'s
    ``[N, L]`` tensors, ``[N, L]`` when ``in_channels == 1``.

    Args:
        in_channels: input channels (1 for MNIST-1D).
        num_classes: number of output logits.
        length: input length (40 for MNIST-1D); sizes ``fc``.
        channels: channels of every conv layer.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, length: int = 40, channels: int = 32) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", minimum=1)
        check_int(num_classes, "num_classes", minimum=1)
        check_int(length, "length", minimum=1)
        check_int(channels, "channels", minimum=1)
        self.in_channels = in_channels
        # bias off: BatchNorm's shift follows every conv
        self.conv1 = nn.Conv1d(in_channels, channels, 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm1d(channels)
        self.flatten = nn.Flatten()
        out_len = length
        for conv in (self.conv1, self.conv2, self.conv3):
            out_len = (out_len + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        self.fc = nn.Linear(channels * out_len, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``[N, num_classes]`` for input ``[N, C, L]`` (or ``[N, L]``)."""
        if x.dim() == 2 and self.in_channels == 1:
            x = x.unsqueeze(1)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(self.flatten(x))


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"{name} must be an int or a pair (height, width); got {value!r}")
    return check_int(value[0], f"{name}[0]", minimum=1), check_int(value[1], f"{name}[1]", minimum=1)


#: Model registry used by :func:`build_model` and recipes (``model: {name: small-cnn}``).
MODELS: dict[str, type[nn.Module]] = {
    "lenet300100": LeNet300100,
    "small-cnn": SmallCNN,
    "mlp1d": MLP1D,
    "cnn1d": CNN1D,
}

# what each model needs to know from a dataset, and its input shape without one
_DEFAULT_INPUT: dict[str, tuple[int, ...]] = {
    "lenet300100": (1, 28, 28),
    "small-cnn": (1, 28, 28),
    "mlp1d": (40,),
    "cnn1d": (1, 40),
}


def _model_key(name: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, one of {sorted(MODELS)}; got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return key


def _input_shape_for(key: str, dataset: Dataset) -> tuple[int, ...]:
    """The per-sample input shape ``key`` sees on ``dataset``, or a ConfigError if it cannot."""
    shape = tuple(dataset.input_shape)
    if key == "small-cnn" and len(shape) != 3:
        raise ConfigError(
            f"model 'small-cnn' needs image inputs [C, H, W]; dataset {dataset.name!r} has input_shape "
            f"{shape}; use 'cnn1d', 'mlp1d' or 'lenet300100'"
        )
    if key == "cnn1d":
        if len(shape) == 1:
            return (1, *shape)
        if len(shape) != 2:
            raise ConfigError(
                f"model 'cnn1d' needs sequence inputs [L] or [C, L]; dataset {dataset.name!r} has input_shape "
                f"{shape}; use 'small-cnn', 'lenet300100' or 'mlp1d'"
            )
    return shape


def _dataset_kwargs(key: str, dataset: Dataset) -> dict[str, Any]:
    shape = _input_shape_for(key, dataset)
    kw: dict[str, Any] = {"num_classes": int(dataset.num_classes)}
    if key in ("lenet300100", "mlp1d"):
        kw["in_features"] = math.prod(shape)
    elif key == "small-cnn":
        kw["in_channels"], kw["image_size"] = shape[0], tuple(shape[1:])
    elif key == "cnn1d":
        kw["in_channels"], kw["length"] = shape
    return kw


def build_model(name: str, dataset: Dataset | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model, sized for ``dataset`` when one is given.

    From the dataset come the number of classes and the input size: ``in_features`` for
    ``lenet300100`` and ``mlp1d`` (so LeNet-300-100 on MNIST-1D has ``in_features=40``),
    ``in_channels`` and ``image_size`` for ``small-cnn``, ``in_channels`` and ``length`` for
    ``cnn1d``. Explicit ``kwargs`` win over the dataset's values.

    Args:
        name: one of :data:`MODELS` (case-insensitive; ``_`` and ``-`` are interchangeable).
        dataset: a :class:`~sparseforge.data.Dataset` to size the model for, or None for the
            model's defaults.
        **kwargs: constructor arguments of the model class (e.g. ``hidden=[128, 128]``).

    Raises:
        ConfigError: unknown name, an argument the model does not take, or a dataset whose
            inputs the model cannot read (e.g. ``small-cnn`` on 1-D signals).

    Example recipe section::

        model: {name: mlp1d, hidden: [512, 512]}
    """
    key = _model_key(name)
    cls = MODELS[key]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"model {key!r} got unknown argument(s) {unknown}; allowed: {allowed}")
    kw = _dataset_kwargs(key, dataset) if dataset is not None else {}
    kw.update(kwargs)
    return cls(**kw)


def example_input(name: str, dataset: Dataset | None = None, batch: int = 1) -> torch.Tensor:
    """A zero float32 input of shape ``[batch, *sample_shape]`` for model ``name``.

    Meant for FLOP counting and tracing (:func:`sparseforge.report.sparsity_report`). The
    sample shape is the dataset's (with a channel axis added for ``cnn1d``) or, without a
    dataset, the model's default: ``[1, 28, 28]`` for ``lenet300100`` and ``small-cnn``,
    ``[40]`` for ``mlp1d``, ``[1, 40]`` for ``cnn1d``.
    """
    key = _model_key(name)
    check_int(batch, "batch", minimum=1)
    shape = _input_shape_for(key, dataset) if dataset is not None else _DEFAULT_INPUT[key]
    return torch.zeros(batch, *shape, dtype=torch.float32)
