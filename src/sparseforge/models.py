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
* :class:`TinyGPT` -- a small decoder-only transformer language model in the style of GPT-2
  (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners") and nanoGPT,
  for the text corpora of :mod:`sparseforge.text`.

:func:`build_model` sizes a model from a :class:`~sparseforge.data.Dataset` (or, for
``tiny-gpt``, a :class:`~sparseforge.text.TextCorpus`) and :func:`example_input` gives a
matching zero input for FLOP counting.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, check_fraction, check_int

if TYPE_CHECKING:
    from .data import Dataset
    from .text import TextCorpus

__all__ = ["CNN1D", "MLP1D", "MODELS", "LeNet300100", "SmallCNN", "TinyGPT", "build_model", "example_input"]


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


class _CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused ``qkv`` projection and an output ``proj``."""

    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, d_model] -> [B, T, d_model]``; position t attends to positions <= t only."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class _MLP(nn.Module):
    """``fc (d -> 4d) - GELU - proj (4d -> d)``, the transformer feed-forward block."""

    def __init__(self, d_model: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model, bias=bias)
        self.proj = nn.Linear(4 * d_model, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_model] -> [..., d_model]``."""
        return self.drop(self.proj(F.gelu(self.fc(x))))


class _Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, d_model: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = _CausalSelfAttention(d_model, n_head, dropout, bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = _MLP(d_model, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, d_model] -> [B, T, d_model]``."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A small decoder-only transformer language model (GPT-2 style, Radford et al. 2019; nanoGPT-like).

    ``tok_emb`` (token embedding) + ``pos_emb`` (learned position embedding) -> dropout ->
    ``n_layer`` pre-LN blocks -> ``ln_f`` -> ``head``. Block ``i`` is ``blocks.i.ln1`` ->
    causal multi-head self-attention (``blocks.i.attn.qkv``, one fused ``Linear(d, 3d)``;
    :func:`torch.nn.functional.scaled_dot_product_attention` with ``is_causal=True``;
    ``blocks.i.attn.proj``) added to the residual, then ``blocks.i.ln2`` -> MLP
    (``blocks.i.mlp.fc``, ``Linear(d, 4d)`` - GELU - ``blocks.i.mlp.proj``) added to the
    residual. Every projection is an ``nn.Linear`` with these stable names, so masks, recipes
    and N:M patterns (along the input dimension) apply to them directly.

    The ``head`` (``Linear(d, vocab_size)``, no bias) is *untied* from ``tok_emb`` by default:
    a tied head shares its weight tensor with the embedding, so pruning the head would also
    zero embedding rows, and a second module pointing at the same parameter confuses per-layer
    reports. ``tie_weights=True`` ties them as GPT-2 does.

    Initialisation follows GPT-2: weights ~ N(0, 0.02), biases 0, and the two projections that
    write into the residual stream (``attn.proj``, ``mlp.proj``) scaled to N(0, 0.02 / sqrt(2 n_layer)).

    Parameter count with ``V = vocab_size``, ``T = block_size``, ``d = d_model``, ``L = n_layer``::

        bias=True:   (2 if untied else 1) * V*d + T*d + L * (12 d^2 + 13 d) + 2 d
        bias=False:  (2 if untied else 1) * V*d + T*d + L * (12 d^2 + 2 d) + d

    (the defaults with ``V = 256`` give 3,323,392). Input ``[B, T']`` int64 token ids with
    ``T' <= block_size``; output ``[B, T', vocab_size]`` next-token logits.

    Args:
        vocab_size: number of token ids (from the corpus: ``TextCorpus.vocab_size``; 256 fits
            the byte tokenizer).
        block_size: longest sequence (context length); sizes ``pos_emb``.
        d_model: embedding width; must be divisible by ``n_head``.
        n_layer: number of transformer blocks.
        n_head: attention heads per block.
        dropout: dropout probability on embeddings, attention weights and residual branches.
        bias: biases in the ``Linear`` and ``LayerNorm`` layers (the head never has one).
        tie_weights: share ``head.weight`` with ``tok_emb.weight``.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        block_size: int = 128,
        d_model: int = 256,
        n_layer: int = 4,
        n_head: int = 4,
        dropout: float = 0.0,
        bias: bool = True,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        check_int(vocab_size, "vocab_size", minimum=1)
        check_int(block_size, "block_size", minimum=1)
        check_int(d_model, "d_model", minimum=1)
        check_int(n_layer, "n_layer", minimum=1)
        check_int(n_head, "n_head", minimum=1)
        if d_model % n_head:
            raise ConfigError(f"d_model must be divisible by n_head ({n_head}); got d_model={d_model}")
        dropout = check_fraction(dropout, "dropout", allow_one=False)
        for flag, flag_name in ((bias, "bias"), (tie_weights, "tie_weights")):
            if not isinstance(flag, bool):
                raise ConfigError(f"{flag_name} must be True or False; got {flag!r}")
        self.vocab_size, self.block_size, self.n_layer = vocab_size, block_size, n_layer
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(block_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d_model, n_head, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)
        if tie_weights:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, T, vocab_size]`` for token ids ``idx`` of shape ``[B, T]``."""
        if idx.dim() != 2 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ConfigError(f"TinyGPT input must be a [batch, time] tensor of integer token ids; "
                              f"got a {idx.dim()}-D {idx.dtype} tensor")
        t = idx.shape[1]
        if t > self.block_size:
            raise ConfigError(f"TinyGPT input has {t} tokens per sequence; block_size allows at most {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


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
    "tiny-gpt": TinyGPT,
}

# what each model needs to know from a dataset, and its input shape without one
_DEFAULT_INPUT: dict[str, tuple[int, ...]] = {
    "lenet300100": (1, 28, 28),
    "small-cnn": (1, 28, 28),
    "mlp1d": (40,),
    "cnn1d": (1, 40),
    "tiny-gpt": (128,),  # TinyGPT's default block_size; token ids, not features
}


def _model_key(name: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, one of {sorted(MODELS)}; got {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return key


def _is_text(dataset: Any) -> bool:
    # duck-typed so that models.py need not import the text module
    return hasattr(dataset, "vocab_size") and not hasattr(dataset, "input_shape")


def _input_shape_for(key: str, dataset: Dataset | TextCorpus) -> tuple[int, ...]:
    """The per-sample input shape ``key`` sees on ``dataset``, or a ConfigError if it cannot."""
    if key == "tiny-gpt":
        if not _is_text(dataset):
            raise ConfigError(
                f"model 'tiny-gpt' needs a text corpus (sparseforge.text.load_text_corpus) to size its "
                f"vocabulary; dataset {getattr(dataset, 'name', dataset)!r} is not one; use 'lenet300100', "
                f"'small-cnn', 'mlp1d' or 'cnn1d'"
            )
        return _DEFAULT_INPUT[key]
    if _is_text(dataset):
        raise ConfigError(
            f"model {key!r} needs a dataset of inputs and classes; {getattr(dataset, 'name', dataset)!r} is a text "
            f"corpus; use 'tiny-gpt'"
        )
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


def _dataset_kwargs(key: str, dataset: Dataset | TextCorpus) -> dict[str, Any]:
    shape = _input_shape_for(key, dataset)
    if key == "tiny-gpt":
        return {"vocab_size": int(dataset.vocab_size)}
    kw: dict[str, Any] = {"num_classes": int(dataset.num_classes)}
    if key in ("lenet300100", "mlp1d"):
        kw["in_features"] = math.prod(shape)
    elif key == "small-cnn":
        kw["in_channels"], kw["image_size"] = shape[0], tuple(shape[1:])
    elif key == "cnn1d":
        kw["in_channels"], kw["length"] = shape
    return kw


def build_model(name: str, dataset: Dataset | TextCorpus | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model, sized for ``dataset`` when one is given.

    From the dataset come the number of classes and the input size: ``in_features`` for
    ``lenet300100`` and ``mlp1d`` (so LeNet-300-100 on MNIST-1D has ``in_features=40``),
    ``in_channels`` and ``image_size`` for ``small-cnn``, ``in_channels`` and ``length`` for
    ``cnn1d``. ``tiny-gpt`` takes a :class:`~sparseforge.text.TextCorpus` instead and gets its
    ``vocab_size`` from it. Explicit ``kwargs`` win over the dataset's values.

    Args:
        name: one of :data:`MODELS` (case-insensitive; ``_`` and ``-`` are interchangeable).
        dataset: a :class:`~sparseforge.data.Dataset` (or a text corpus for ``tiny-gpt``) to
            size the model for, or None for the model's defaults.
        **kwargs: constructor arguments of the model class (e.g. ``hidden=[128, 128]``).

    Raises:
        ConfigError: unknown name, an argument the model does not take, or a dataset whose
            inputs the model cannot read (e.g. ``small-cnn`` on 1-D signals, ``tiny-gpt`` on
            images, any classifier on a text corpus).

    Example recipe section (``sparseforge train`` trains classifiers; ``tiny-gpt`` is trained by
    :func:`~sparseforge.lm.train_lm`, whose ``model_params`` take the same constructor arguments,
    e.g. ``{"d_model": 128, "n_layer": 2, "block_size": 64}``)::

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


def example_input(name: str, dataset: Dataset | TextCorpus | None = None, batch: int = 1) -> torch.Tensor:
    """A zero input of shape ``[batch, *sample_shape]`` for model ``name``.

    Meant for FLOP counting and tracing (:func:`sparseforge.report.sparsity_report`). The
    sample shape is the dataset's (with a channel axis added for ``cnn1d``) or, without a
    dataset, the model's default: ``[1, 28, 28]`` for ``lenet300100`` and ``small-cnn``,
    ``[40]`` for ``mlp1d``, ``[1, 40]`` for ``cnn1d``. The input is float32, except for
    ``tiny-gpt``: int64 token ids ``[batch, 128]`` (its default ``block_size``), so FLOPs
    are per sequence of 128 tokens.
    """
    key = _model_key(name)
    check_int(batch, "batch", minimum=1)
    shape = _input_shape_for(key, dataset) if dataset is not None else _DEFAULT_INPUT[key]
    dtype = torch.int64 if key == "tiny-gpt" else torch.float32
    return torch.zeros(batch, *shape, dtype=dtype)
