"""Sparse Iso-FLOP Transformations (Sparse-IFT).

Thangarasa, Saxena, Gupta & Lie, "Sparse-IFT: Sparse Iso-FLOP Transformations for Maximizing
Training Efficiency" (ICML 2024; code: ``CerebrasResearch/Sparse-IFT``). Each transformation
replaces a dense ``nn.Linear`` or ``nn.Conv2d`` (weight ``D_out x D_in``, with ``D_in`` =
``in_channels * kh * kw`` for a convolution) by a larger, sparse computation with the same
FLOPs, parameterised by one sparsity ``s`` in ``[0, 1)``:

========== ============================================= ==================================================
kind       construction                                  size (official code)
========== ============================================= ==================================================
wide       the layer with widened hidden widths          width ``int(w * sqrt(round(1 / (1 - s))))``
parallel   ``B`` sparse copies (each + norm), summed     ``B = round(1 / (1 - s))``
factorized sparse ``V . act(U)``, ``U: D_in -> r``,      ``r = ceil(D_in D_out / ((1 - s)(D_in + D_out)))``
           ``V: r -> D_out`` (1x1 conv for Conv2d)
doped      dense low-rank ``V U`` + sparse full layer    ``r = floor(s D_in D_out / (D_in + D_out))``
========== ============================================= ==================================================

``round`` is Python's ``round`` as in the official ``base_scaling = round(1 / (1 - s))``
(it avoids ``99.0`` at ``s = 0.99``); ``int`` truncates as the official ``int(64 * sqrt(...))``
(so ``s = 0.5, 0.75, 0.9`` widen 64 channels to 90, 128, 202).

**Iso-FLOP by construction.** Sizes are integers, so ``s`` alone would miss the dense FLOPs by
the rounding. Every sparse part therefore keeps an exact number of weights: the kept weights of a
transformed layer (sparse parts plus dense low-rank parts) equal the dense layer's weight count,
split over its sparse parts in proportion to their sizes. All parts run at the dense layer's
output positions, so FLOPs (``2 x`` multiply-adds of weight products, as in
:mod:`sparseforge.report`) are equal exactly. The sparse parts' sparsity (see
:meth:`SparseIFTLayer.part_sparsity`) then equals ``s`` up to rounding, except for a Sparse Wide
layer widened on one side only (``1 - 1/k``, below) and Sparse Parallel when ``1 / (1 - s)`` is not
an integer (``1 - 1/B``). The official code reaches the same end for
Sparse Wide with a binary search on one global sparsity.

**Sparse Wide in a model** (rule used here, for chains of layers such as MLPs and plain CNNs): a
hidden width (the output of one transformed layer that feeds the next transformed layer) is
widened; a width that touches a layer left dense (stem, head, or an excluded layer) is not, so
dense layers keep their FLOPs. BatchNorm layers on a widened width are widened; a ``Linear``
after a ``Conv2d`` (through a flatten) gets ``C' * spatial`` inputs. A transformed layer with both
sides widened has sparsity ``~ s``; one with one side widened (next to a dense layer) keeps the
same exact weight budget and so has sparsity ``~ 1 - 1/k``. The official ResNet code instead widens
the stem's output and the classifier's input as well (both dense) and lowers the sparsity of all
sparse layers to compensate; in a small MLP whose dense first layer dominates the FLOPs that
compensation is impossible, hence the rule here. Residual networks (shared widths across skips)
are not rewired by :func:`sparse_ift` for ``"wide"``; the other three kinds work on any model.

**Choices.** Sparse Parallel branches each get a BatchNorm (the official ResNet block's
``bn1_list``; without it the sum of sparse branches is one linear map); ``branch_norm=False``
drops it. Sparse Factorized puts BatchNorm + ReLU between ``U`` and ``V`` (the official default
``uv_layer='nonlinear_relu'``; ``"relu"`` and ``"linear"`` are the alternatives). Sparse Doped
keeps ``U`` and ``V`` dense (as the paper says; the generic ``should_sparsify`` of the official code
would have sparsified them too). New sub-layers use PyTorch's default initialisation. Training: the
sparse parts are ordinary ``nn.Linear``/``nn.Conv2d`` children, listed by :func:`ift_targets`, and
:func:`ift_method` builds a DST method over exactly those (RigL by default, as in the paper) with
each part's exact budget (:class:`PerLayer` allocation).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..core.allocation import PerLayer
from ..utils import call_model, preserved_modes
from ..errors import ConfigError, LayerError, check_sparsity
from ..masking import Targets
from ..results import Result, renamed_keywords
from ..transaction import transaction

__all__ = [
    "KINDS", "base_scaling", "wide_width", "parallel_branches", "factorized_rank", "doped_rank",
    "SparseIFTLayer", "SparseWide", "SparseParallel", "SparseFactorized", "SparseDoped", "transform_layer",
    "sparse_ift", "SparseIFTResult", "IFTLayer", "ift_layers", "ift_targets", "ift_budgets", "PerLayer", "ift_method",
]

KINDS: tuple[str, ...] = ("wide", "parallel", "factorized", "doped")
_SUPPORTED = (nn.Linear, nn.Conv2d)


# --------------------------------------------------------------------------------- sizing
def base_scaling(sparsity: float) -> int:
    """``round(1 / (1 - s))`` as in the official code (the FLOP scale of a dense layer at density ``1 - s``)."""
    s = check_sparsity(sparsity)
    return round(1.0 / (1.0 - s))


def wide_width(width: int, sparsity: float) -> int:
    """Sparse Wide width: ``int(width * sqrt(round(1 / (1 - s))))`` (official truncation)."""
    return int(width * math.sqrt(base_scaling(sparsity)))


def parallel_branches(sparsity: float) -> int:
    """Sparse Parallel branch count ``B = round(1 / (1 - s))``."""
    return base_scaling(sparsity)


def factorized_rank(d_in: int, d_out: int, sparsity: float) -> int:
    """Sparse Factorized rank ``ceil(d_in d_out / ((1 - s)(d_in + d_out)))`` (``d_in`` includes the kernel)."""
    s = check_sparsity(sparsity)
    return int(math.ceil(d_in * d_out / ((1.0 - s) * (d_in + d_out)) - 1e-9))


def doped_rank(d_in: int, d_out: int, sparsity: float) -> int:
    """Sparse Doped rank ``floor(s d_in d_out / (d_in + d_out))`` of the dense low-rank part."""
    s = check_sparsity(sparsity)
    return int(math.floor(s * d_in * d_out / (d_in + d_out) + 1e-9))


# --------------------------------------------------------------------------------- layers
def _check_layer(layer: Any, where: str = "layer") -> None:
    if not isinstance(layer, _SUPPORTED):
        raise LayerError(f"{where}: Sparse-IFT transforms nn.Linear and nn.Conv2d only; got {type(layer).__name__}")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise LayerError(f"{where}: Sparse-IFT needs an ungrouped Conv2d (groups=1); got groups={layer.groups}")


def _fan(layer: nn.Module) -> tuple[int, int]:
    """``(D_in, D_out)``: inputs per output (kernel included) and outputs of ``layer``."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    kh, kw = layer.kernel_size
    return layer.in_channels * kh * kw, layer.out_channels


def _like(layer: nn.Module, n_in: int, n_out: int, *, bias: bool, pointwise: bool = False) -> nn.Module:
    """A layer of ``layer``'s type with new widths (a 1x1, stride-1 conv if ``pointwise``)."""
    p = next(layer.parameters())
    kw = {"device": p.device, "dtype": p.dtype}
    if isinstance(layer, nn.Linear):
        return nn.Linear(n_in, n_out, bias=bias, **kw)
    if pointwise:
        return nn.Conv2d(n_in, n_out, 1, bias=bias, **kw)
    return nn.Conv2d(n_in, n_out, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                     dilation=layer.dilation, bias=bias, padding_mode=layer.padding_mode, **kw)


def _norm(layer: nn.Module, n: int) -> nn.Module:
    p = next(layer.parameters())
    if isinstance(layer, nn.Conv2d):
        return nn.BatchNorm2d(n, device=p.device, dtype=p.dtype)
    return _FeatureBatchNorm(n, device=p.device, dtype=p.dtype)


class _FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last dimension of ``[..., F]`` inputs (a Linear's output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise every feature over all leading dimensions."""
        if x.dim() == 2:
            return super().forward(x)
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


def _split(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` kept weights over parts of ``sizes`` in proportion (largest remainder, exact)."""
    n = sum(sizes)
    raw = [total * s / n for s in sizes]
    out = [min(int(math.floor(r)), s) for r, s in zip(raw, sizes)]
    rest = total - sum(out)
    order = sorted(range(len(sizes)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order:
        if rest <= 0:
            break
        if out[i] < sizes[i]:
            out[i] += 1
            rest -= 1
    return out


class SparseIFTLayer(nn.Module):
    """Base class of the four transformed layers.

    Attributes:
        kind: ``"wide"``, ``"parallel"``, ``"factorized"`` or ``"doped"``.
        sparsity: the transformation's sparsity ``s`` (sizes follow from it).
        dense_weights: weight count of the dense layer it is iso-FLOP to (per output position).
        sparse_parts: names of the child modules whose ``weight`` is sparse (the DST targets).
        dense_parts: names of child modules whose ``weight`` stays dense (Sparse Doped's ``U``, ``V``).
    """

    kind = "base"

    def __init__(self, sparsity: float) -> None:
        super().__init__()
        self.sparsity = check_sparsity(sparsity)
        self.dense_weights = 0
        self.sparse_parts: tuple[str, ...] = ()
        self.dense_parts: tuple[str, ...] = ()

    def budgets(self) -> dict[str, int]:
        """Exact kept weights per sparse part, so that kept weights in total equal :attr:`dense_weights`."""
        dense = sum(getattr(self, n).weight.numel() for n in self.dense_parts)
        sizes = [getattr(self, n).weight.numel() for n in self.sparse_parts]
        return dict(zip(self.sparse_parts, _split(self.dense_weights - dense, sizes)))

    def part_sparsity(self) -> dict[str, float]:
        """Sparsity each sparse part is trained at (``1 - budget / size``; ``~ s`` up to rounding)."""
        return {n: 1.0 - k / getattr(self, n).weight.numel() for n, k in self.budgets().items()}

    def extra_repr(self) -> str:
        return f"kind={self.kind}, sparsity={self.sparsity}"


class SparseWide(SparseIFTLayer):
    """Sparse Wide: the same layer with widened input and/or output, kept weights = dense count.

    Args:
        layer: the dense ``nn.Linear`` / ``nn.Conv2d`` being replaced.
        sparsity: ``s``; widths scale by ``sqrt(round(1 / (1 - s)))`` (:func:`wide_width`).
        widen_in / widen_out: which sides to widen (a standalone layer widens both; in a model
            :func:`sparse_ift` decides per side, see the module docstring).
        in_size / out_size: explicit widened sizes (``in_features`` or ``in_channels`` ...), e.g.
            ``C' * spatial`` for a Linear after a flattened convolution; override ``widen_*``.
    """

    kind = "wide"

    def __init__(self, layer: nn.Module, sparsity: float, *, widen_in: bool = True, widen_out: bool = True,
                 in_size: int | None = None, out_size: int | None = None) -> None:
        super().__init__(sparsity)
        _check_layer(layer)
        if isinstance(layer, nn.Linear):
            n_in, n_out = layer.in_features, layer.out_features
        else:
            n_in, n_out = layer.in_channels, layer.out_channels
        new_in = in_size if in_size is not None else (wide_width(n_in, self.sparsity) if widen_in else n_in)
        new_out = out_size if out_size is not None else (wide_width(n_out, self.sparsity) if widen_out else n_out)
        self.layer = _like(layer, new_in, new_out, bias=layer.bias is not None)
        self.dense_weights = layer.weight.numel()
        self.sparse_parts = ("layer",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The widened sparse layer."""
        return self.layer(x)


class SparseParallel(SparseIFTLayer):
    """Sparse Parallel: ``sum_i norm_i(W_i x)`` over ``B = round(1/(1-s))`` sparse copies of the layer.

    Args:
        layer: the dense layer being replaced.
        sparsity: ``s``.
        branch_norm: a BatchNorm after each branch (default True, the official ResNet block);
            the original bias (if any) is added once after the sum either way.
    """

    kind = "parallel"

    def __init__(self, layer: nn.Module, sparsity: float, *, branch_norm: bool = True) -> None:
        super().__init__(sparsity)
        _check_layer(layer)
        n_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        n_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        self.branches_count = parallel_branches(self.sparsity)
        names = []
        for i in range(self.branches_count):
            self.add_module(f"branch{i}", _like(layer, n_in, n_out, bias=False))
            if branch_norm:
                self.add_module(f"norm{i}", _norm(layer, n_out))
            names.append(f"branch{i}")
        self.branch_norm = branch_norm
        self.bias = nn.Parameter(layer.bias.detach().clone()) if layer.bias is not None else None
        self.dense_weights = layer.weight.numel()
        self.sparse_parts = tuple(names)
        self._conv = isinstance(layer, nn.Conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the (normalised) sparse branches, plus the bias."""
        out = None
        for i in range(self.branches_count):
            y = getattr(self, f"branch{i}")(x)
            if self.branch_norm:
                y = getattr(self, f"norm{i}")(y)
            out = y if out is None else out + y
        if self.bias is not None:
            out = out + (self.bias.view(1, -1, 1, 1) if self._conv else self.bias)
        return out


class SparseFactorized(SparseIFTLayer):
    """Sparse Factorized: ``V(act(U x))`` with sparse ``U`` (``D_in -> r``) and ``V`` (``r -> D_out``).

    ``r = ceil(D_in D_out / ((1 - s)(D_in + D_out)))`` (:func:`factorized_rank`). For a Conv2d,
    ``U`` has the original kernel, stride and padding and ``V`` is a 1x1 convolution.

    Args:
        uv_layer: what sits between ``U`` and ``V``: ``"bn_relu"`` (default; official
            ``nonlinear_relu``), ``"relu"`` or ``"linear"`` (nothing).
    """

    kind = "factorized"
    UV_LAYERS = ("bn_relu", "relu", "linear")

    def __init__(self, layer: nn.Module, sparsity: float, *, uv_layer: str = "bn_relu") -> None:
        super().__init__(sparsity)
        _check_layer(layer)
        if uv_layer not in self.UV_LAYERS:
            raise ConfigError(f"uv_layer must be one of {list(self.UV_LAYERS)}; got {uv_layer!r}")
        d_in, d_out = _fan(layer)
        n_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        self.rank = factorized_rank(d_in, d_out, self.sparsity)
        self.U = _like(layer, n_in, self.rank, bias=False)
        self.uv_layer = uv_layer
        if uv_layer == "bn_relu":
            self.U_norm = _norm(layer, self.rank)
        self.V = _like(layer, self.rank, d_out, bias=layer.bias is not None, pointwise=True)
        self.dense_weights = layer.weight.numel()
        self.sparse_parts = ("U", "V")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``V(act(U x))``."""
        h = self.U(x)
        if self.uv_layer == "bn_relu":
            h = torch.relu(self.U_norm(h))
        elif self.uv_layer == "relu":
            h = torch.relu(h)
        return self.V(h)


class SparseDoped(SparseIFTLayer):
    """Sparse Doped: ``W_sparse x + V(U x)`` with a dense rank-``r`` part, ``r = floor(s D_in D_out / (D_in + D_out))``.

    At ``s = 0`` the rank is 0 and the layer is the dense layer (no low-rank part).
    """

    kind = "doped"

    def __init__(self, layer: nn.Module, sparsity: float) -> None:
        super().__init__(sparsity)
        _check_layer(layer)
        d_in, d_out = _fan(layer)
        n_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        self.rank = doped_rank(d_in, d_out, self.sparsity)
        self.sparse = _like(layer, n_in, d_out, bias=layer.bias is not None)
        if self.rank > 0:
            self.U = _like(layer, n_in, self.rank, bias=False)
            self.V = _like(layer, self.rank, d_out, bias=False, pointwise=True)
            self.dense_parts = ("U", "V")
        self.dense_weights = layer.weight.numel()
        self.sparse_parts = ("sparse",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse full-rank path plus the dense low-rank path."""
        out = self.sparse(x)
        if self.rank > 0:
            out = out + self.V(self.U(x))
        return out


_CLASSES: dict[str, type[SparseIFTLayer]] = {"wide": SparseWide, "parallel": SparseParallel,
                                             "factorized": SparseFactorized, "doped": SparseDoped}


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {list(KINDS)}; got {kind!r}")
    return kind


def transform_layer(layer: nn.Module, kind: str, sparsity: float, **options: Any) -> SparseIFTLayer:
    """The Sparse-IFT replacement of one ``nn.Linear`` / ``nn.Conv2d`` (see the module docstring).

    A standalone ``"wide"`` layer widens both sides (its input and output sizes change);
    :func:`sparse_ift` wires widths through a whole model.
    """
    _check_kind(kind)
    check_sparsity(sparsity)
    _check_layer(layer)
    try:
        return _CLASSES[kind](layer, sparsity, **options)
    except TypeError as e:
        raise ConfigError(f"Sparse-IFT {kind!r}: {e}") from None


# --------------------------------------------------------------------------------- model level
def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


#: sparse_ift's own defaults for the fields a dict ``targets`` leaves out: the stem and the head
#: stay dense, as in the paper and the official code
_TARGET_DEFAULTS = {"first_layer": "dense", "last_layer": "dense"}
_OLD_TARGET_KEYWORDS = ("include", "exclude", "first_layer", "last_layer")


def _targets(targets: Any, old: dict[str, Any]) -> Targets:
    """One :class:`Targets` over Linear/Conv2d from ``targets`` or the deprecated include/exclude keywords."""
    if old:
        if targets is not None:
            raise ConfigError(f"sparse_ift: pass targets= only; got targets= and the deprecated {sorted(old)}")
        warnings.warn(f"sparse_ift({', '.join(f'{k}=' for k in old)}...) is deprecated; use "
                      f"targets={{{', '.join(repr(k) + ': ...' for k in old)}}}", DeprecationWarning, stacklevel=4)
        targets = {k: v for k, v in old.items() if v is not None}
    if targets is None or isinstance(targets, dict):
        spec = {**_TARGET_DEFAULTS, **(targets or {})}
        for key in ("include", "exclude"):
            if isinstance(spec.get(key), str):
                spec[key] = (spec[key],)
        t = Targets.from_spec(spec)
    else:
        t = Targets.from_spec(targets)
    return t if t.types is not None else dataclasses.replace(t, types=_SUPPORTED)


def _select(model: nn.Module, targets: Targets) -> tuple[list[str], list[tuple[str, str]]]:
    """Names of the layers to transform and the skipped ones; an include entry naming an unsupported layer is an error."""
    names = dict(model.named_modules())
    for p in targets.include:
        for n, m in names.items():
            if n and (n == p or re.fullmatch(p, n)) and not isinstance(m, _SUPPORTED) \
                    and isinstance(getattr(m, "weight", None), nn.Parameter):
                raise LayerError(f"targets.include entry {p!r} matches {n} ({type(m).__name__}); Sparse-IFT "
                                 "transforms nn.Linear and nn.Conv2d only")
    chosen = [l.name for l in targets.select(model)]
    for n in chosen:
        _check_layer(names[n], n)
    return chosen, list(targets.skipped)


@dataclass(frozen=True)
class IFTLayer:
    """One transformed layer: its module name and the :class:`SparseIFTLayer` now in its place."""

    name: str
    module: SparseIFTLayer


@dataclass(frozen=True, kw_only=True)
class SparseIFTResult(Result):
    """What :func:`sparse_ift` returns.

    Attributes:
        model: the transformed model (a copy unless ``inplace=True``).
        layers: one :class:`IFTLayer` per transformed layer, in module order.
        skipped: ``(name, reason)`` of selected layers left dense (a weight tied to another module).
        kind, sparsity: the transformation and its ``s``.
    """

    kind: str
    sparsity: float


@renamed_keywords(example_input="example_inputs")
def sparse_ift(model: nn.Module, kind: str, sparsity: float, *, targets: Targets | dict | None = None,
               example_inputs: Any = None, inplace: bool = False, **options: Any) -> SparseIFTResult:
    """Replace the model's ``nn.Linear`` / ``nn.Conv2d`` layers by a Sparse-IFT transformation.

    Args:
        model: the dense model.
        kind: ``"wide"``, ``"parallel"``, ``"factorized"`` or ``"doped"``.
        sparsity: ``s`` in ``[0, 1)``.
        targets: which layers (:class:`~sparseforge.masking.Targets` or a dict of its fields, as
            everywhere: ``include``, ``exclude``, ``first_layer``, ``last_layer``); only Linear and
            Conv2d layers are transformed. A dict's ``first_layer`` / ``last_layer`` default to
            ``"dense"`` (the stem and the head stay dense, as in the paper and the official code);
            a :class:`Targets` object is used as given.
        example_inputs: for ``"wide"``, a forward pass on it checks that the rewired widths fit.
        inplace: modify ``model`` itself (default: a transformed deep copy).
        options: passed to the layer class (``branch_norm``, ``uv_layer``). The old keywords
            ``include``, ``exclude``, ``first_layer``, ``last_layer`` are deprecated aliases of
            ``targets`` (they warn).

    Returns:
        a :class:`SparseIFTResult`: ``.model`` the transformed model, ``.layers`` one
        :class:`IFTLayer` per transformed layer.
    """
    _check_kind(kind)
    s = check_sparsity(sparsity)
    old = {k: options.pop(k) for k in _OLD_TARGET_KEYWORDS if k in options}
    selection = _targets(targets, old)
    if options and kind == "wide":
        raise ConfigError(f"Sparse Wide takes no options; got {sorted(options)}")
    chosen, skipped = _select(model, selection)
    if not inplace:
        out = _transform(copy.deepcopy(model), kind, s, chosen, example_inputs, options)
    else:
        # all or nothing in place: a layer refused at the end (or an example input the widened
        # model cannot run) puts every replaced module back
        with transaction(model, tensors="journal"):
            out = _transform(model, kind, s, chosen, example_inputs, options)
    return SparseIFTResult(model=out, layers=[IFTLayer(n, out.get_submodule(n)) for n in chosen], skipped=skipped,
                           kind=kind, sparsity=s)


def _transform(out: nn.Module, kind: str, s: float, chosen: list[str], example_inputs: Any,
               options: dict[str, Any]) -> nn.Module:
    if kind != "wide":
        for name in chosen:
            _set_module(out, name, transform_layer(out.get_submodule(name), kind, s, **options))
        return out
    _widen(out, chosen, s)
    if example_inputs is not None:
        try:
            with preserved_modes(out), torch.no_grad():
                call_model(out, example_inputs)
        except RuntimeError as e:
            raise LayerError(f"Sparse Wide: the widened model does not run on example_inputs ({e}); the width rule "
                             "supports chains of Linear/Conv2d layers (MLPs, plain CNNs), not residual networks") from None
    return out


def _widen(model: nn.Module, chosen: list[str], s: float) -> None:
    """Sparse Wide rewiring of a chain (see the module docstring for the rule)."""
    modules = list(model.named_modules())
    layers = [(n, m) for n, m in modules if isinstance(m, _SUPPORTED)]
    pos = {n: i for i, (n, _) in enumerate(modules)}
    chosen_set = set(chosen)
    in_size: dict[str, int] = {}
    out_size: dict[str, int] = {}
    norms: list[tuple[str, int]] = []
    for (a, la), (b, lb) in zip(layers, layers[1:]):
        if a not in chosen_set or b not in chosen_set:
            continue
        c_out = la.out_features if isinstance(la, nn.Linear) else la.out_channels
        c_new = wide_width(c_out, s)
        b_in = lb.in_features if isinstance(lb, nn.Linear) else lb.in_channels
        if b_in == c_out:
            b_new = c_new
        elif isinstance(la, nn.Conv2d) and isinstance(lb, nn.Linear) and b_in % c_out == 0:
            b_new = c_new * (b_in // c_out)  # flattened [C, H, W]: C widens, the spatial size stays
        else:
            raise LayerError(f"Sparse Wide: {b} takes {b_in} inputs but {a} gives {c_out} outputs; the width rule "
                             "needs consecutive layers that feed each other (an MLP or a plain CNN)")
        out_size[a], in_size[b] = c_new, b_new
        for n, m in modules[pos[a] + 1 : pos[b]]:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.num_features == c_out:
                norms.append((n, c_new))
            elif any(True for _ in m.parameters(recurse=False)):
                raise LayerError(f"Sparse Wide: cannot widen {n} ({type(m).__name__}) between {a} and {b}")
    for n in chosen:
        layer = model.get_submodule(n)
        _set_module(model, n, SparseWide(layer, s, in_size=in_size.get(n, _in_of(layer)),
                                         out_size=out_size.get(n, _out_of(layer))))
    for n, c in norms:
        old = model.get_submodule(n)
        p = old.weight if old.weight is not None else None
        kw = {"device": p.device, "dtype": p.dtype} if p is not None else {}
        _set_module(model, n, type(old)(c, eps=old.eps, momentum=old.momentum, affine=old.affine,
                                        track_running_stats=old.track_running_stats, **kw))


def _in_of(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _out_of(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def ift_layers(model: nn.Module) -> dict[str, SparseIFTLayer]:
    """Every transformed layer of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseIFTLayer)}


def ift_budgets(model: nn.Module) -> dict[str, int]:
    """Exact kept weights per sparse part, by part module name (``"fc2.branch0"`` ...), in module order."""
    out: dict[str, int] = {}
    for name, layer in ift_layers(model).items():
        for part, k in layer.budgets().items():
            out[f"{name}.{part}"] = k
    order = [n for n, _ in model.named_modules()]
    return {n: out[n] for n in order if n in out}


def ift_targets(model: nn.Module) -> Targets:
    """:class:`~sparseforge.masking.Targets` selecting exactly the sparse parts of the transformed layers."""
    names = list(ift_budgets(model))
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Sparse-IFT layers; call sparse_ift(model, ...) first")
    return Targets(include=tuple(re.escape(n) for n in names))


def ift_method(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, method: str = "rigl",
               **params: Any) -> Any:
    """A sparsity method over the sparse parts of a Sparse-IFT model, each at its exact budget.

    ``method`` is a :func:`~sparseforge.methods.build_method` name whose masks are drawn with an
    allocation (``"rigl"`` default, as in the paper; ``"set"``, ``"static"``). ``params`` go to the
    method (``total_steps``, ``update_interval``, ``seed`` ...); ``sparsity``, ``allocation``
    and ``targets`` are set here: every sparse part keeps exactly its :func:`ift_budgets` count.
    """
    from ..methods import build_method

    for k in ("sparsity", "allocation", "targets"):
        if k in params:
            raise ConfigError(f"ift_method sets {k!r} itself (from the Sparse-IFT budgets); do not pass it")
    budgets = ift_budgets(model)
    if not budgets:
        raise ConfigError(f"{type(model).__name__} has no Sparse-IFT layers; call sparse_ift(model, ...) first")
    sizes = {n: model.get_submodule(n).weight.numel() for n in budgets}
    values = tuple((sizes[n] - k) / sizes[n] for n, k in budgets.items())
    overall = 1.0 - sum(budgets.values()) / sum(sizes.values())
    return build_method(method, model, optimizer, sparsity=overall, allocation=PerLayer(values),
                        targets=ift_targets(model), **params)
