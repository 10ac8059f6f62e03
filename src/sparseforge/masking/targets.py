"""Which parameters get masks: :class:`Targets` and the default-target rule."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..core.layout import is_hf_conv1d
from ..errors import ConfigError, LayerError
from .layers import MaskedLayer

__all__ = ["DEFAULT_TYPES", "is_default_target", "Targets", "check_targets_match"]


DEFAULT_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_default_target(module: nn.Module) -> bool:
    """True for the layers masked by default: Linear, Conv1d/2d/3d and Hugging Face ``Conv1D``."""
    return isinstance(module, DEFAULT_TYPES) or is_hf_conv1d(module)


def _matches(pattern: str, name: str) -> bool:
    return name == pattern or re.fullmatch(pattern, name) is not None


@dataclass
class Targets:
    """Which parameters get masks.

    Args:
        types: module types whose ``weight`` is masked. Default: ``nn.Linear``,
            ``nn.Conv1d/2d/3d`` and Hugging Face ``Conv1D``.
        include: module names or regular expressions (full match); if given, only
            matching modules of the selected types are masked.
        exclude: module names or regular expressions (full match) never masked.
        first_layer / last_layer: ``"sparse"`` (default) or ``"dense"``; the first and last
            selected modules in ``named_modules()`` order.
        strict_patterns: every include/exclude entry must match at least one module (default
            True), so a typo fails loudly instead of silently masking everything.
        params: names of the parameters masked on every selected module (default
            ``("weight",)``); e.g. ``("weight", "bias")`` prunes biases too, as several
            lottery-ticket codebases do. Each gets its own ``<param>_mask`` buffer, enforced
            through training like a weight's. A selected module without one of them (a
            ``Linear(..., bias=False)``) is an error naming the layer.
        joint: score each module's parameters together (default False: each on its own):
            one ranking and one exact count over the weight and the bias of a layer, at the
            layer's sparsity, so "sparsity" means that of weights + biases. Global
            allocations pool every parameter anyway. Unstructured patterns only.
    """

    types: tuple[type, ...] | None = None
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    first_layer: str = "sparse"
    last_layer: str = "sparse"
    strict_patterns: bool = True
    params: Sequence[str] = ("weight",)
    joint: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.params, str):
            self.params = (self.params,)
        self.params = tuple(self.params)
        if not self.params or not all(isinstance(p, str) and p.isidentifier() for p in self.params):
            raise ConfigError(f"targets.params must be a non-empty list of parameter names such as "
                              f"['weight', 'bias']; got {list(self.params)!r}")
        if len(set(self.params)) != len(self.params):
            raise ConfigError(f"targets.params lists a parameter twice: {list(self.params)}")
        if not isinstance(self.joint, bool):
            raise ConfigError(f"targets.joint must be True or False; got {self.joint!r}")
        if self.joint and len(self.params) < 2:
            raise ConfigError(f"targets.joint=True scores a layer's parameters together; it needs two or more "
                              f"targets.params (e.g. ['weight', 'bias']); got {list(self.params)}")
        for f in ("first_layer", "last_layer"):
            v = getattr(self, f)
            if v not in ("sparse", "dense"):
                raise ConfigError(f"targets.{f} must be 'sparse' or 'dense'; got {v!r}")
        for f in ("include", "exclude"):
            v = getattr(self, f)
            if isinstance(v, str):
                setattr(self, f, (v,))
            for p in getattr(self, f):
                try:
                    re.compile(p)
                except re.error as e:
                    raise ConfigError(f"targets.{f}: {p!r} is not a valid regular expression ({e})") from None

    def _type_ok(self, module: nn.Module) -> bool:
        if self.types is None:
            return is_default_target(module)
        return isinstance(module, self.types) or (is_hf_conv1d(module) and any(t.__name__ == "Conv1D" for t in self.types))

    def select(self, model: nn.Module) -> list[MaskedLayer]:
        """Return the masked layers of ``model`` in module order; raise if none or a pattern misses."""
        candidates = [(n, m) for n, m in model.named_modules() if self._type_ok(m) and isinstance(getattr(m, "weight", None), nn.Parameter)]
        names = [n for n, _ in model.named_modules()]
        if self.strict_patterns:
            for f in ("include", "exclude"):
                for p in getattr(self, f):
                    if not any(_matches(p, n) for n in names):
                        raise ConfigError(
                            f"targets.{f} entry {p!r} matches no module of {type(model).__name__}; "
                            f"module names look like {names[1:6]}"
                        )
        chosen = [
            (n, m)
            for n, m in candidates
            if (not self.include or any(_matches(p, n) for p in self.include))
            and not any(_matches(p, n) for p in self.exclude)
        ]
        if chosen and self.first_layer == "dense" and chosen[0][0] == candidates[0][0]:
            chosen = chosen[1:]
        if chosen and self.last_layer == "dense" and chosen[-1][0] == candidates[-1][0]:
            chosen = chosen[:-1]
        chosen = self._drop_tied(model, chosen)
        if not chosen:
            raise ConfigError(
                f"no prunable layers in {type(model).__name__}: found {len(candidates)} candidate modules "
                f"(types {self._type_names()}), include={list(self.include)}, exclude={list(self.exclude)}, "
                f"first_layer={self.first_layer!r}, last_layer={self.last_layer!r}"
            )
        out = []
        for n, m in chosen:
            for pname in self.params:
                if not isinstance(getattr(m, pname, None), nn.Parameter):
                    what = "None (built with bias=False?)" if pname == "bias" and getattr(m, "bias", 0) is None else "absent"
                    raise LayerError(
                        f"layer {n or '(model)'!r} ({type(m).__name__}) has no parameter {pname!r} to mask (it is {what}); "
                        f"targets.params={list(self.params)}: exclude the layer or drop {pname!r}")
                # only an HF Conv1D's weight is stored transposed; its bias is 1-D
                out.append(MaskedLayer(n, m, pname, is_hf_conv1d(m) and pname == "weight"))
        return out

    def _drop_tied(self, model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        """Skip weights shared with another module (e.g. GPT-2's ``lm_head`` tied to the embedding).

        Masking a tied weight would silently prune the other module too; such layers are
        left dense and listed in :attr:`skipped` with the reason.
        """
        owners: dict[int, list[tuple[str, nn.Module]]] = {}
        for name, module in model.named_modules(remove_duplicate=False):
            p = module._parameters.get("weight")
            if p is not None:
                owners.setdefault(id(p), []).append((name, module))
        self.skipped: list[tuple[str, str]] = []
        kept, seen = [], set()
        for name, module in chosen:
            others = [(n, m) for n, m in owners.get(id(module.weight), []) if m is not module]
            if others:
                other, om = others[0]
                self.skipped.append((name, f"weight is tied to {other} ({type(om).__name__}); left dense"))
                continue
            if id(module.weight) in seen:  # the same module reached under two names
                continue
            seen.add(id(module.weight))
            kept.append((name, module))
        return kept

    def _type_names(self) -> list[str]:
        types = self.types or DEFAULT_TYPES
        return [t.__name__ for t in types] + ([] if self.types else ["transformers Conv1D"])

    @classmethod
    def from_spec(cls, spec: "Targets | dict | None") -> "Targets":
        """Build from a recipe dict (keys: include, exclude, first_layer, last_layer, params, joint)."""
        if spec is None:
            return cls()
        if isinstance(spec, Targets):
            return spec
        if not isinstance(spec, dict):
            raise ConfigError(f"targets must be a mapping; got {type(spec).__name__}")
        allowed = {"include", "exclude", "first_layer", "last_layer", "params", "joint"}
        unknown = set(spec) - allowed
        if unknown:
            raise ConfigError(f"unknown targets key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**spec)


def check_targets_match(model: nn.Module, existing: Sequence[MaskedLayer], targets: "Targets | dict") -> None:
    """Refuse ``targets`` that leave out a layer the model already masks.

    A model that carries masks (loaded from a checkpoint, pruned one-shot) keeps them: the
    masked layers are reused as they are. Targets given explicitly must then agree with them,
    or an excluded layer would stay masked (and be pruned) without a word.
    """
    selected = {(id(l.module), l.param_name) for l in Targets.from_spec(targets).select(model)}
    outside = [l.qualname for l in existing if (id(l.module), l.param_name) not in selected]
    if outside:
        raise ConfigError(
            f"targets leave out {len(outside)} layer(s) the model already masks ({outside[:5]}); "
            f"a model that carries masks keeps them: fold them first with sparseforge.finalize(model), "
            f"or pass targets that include them (or no targets)")
