"""YAML recipes: one file describes one training run, validated before anything runs.

Example (every key shown; only ``method`` is required)::

    name: lenet-rigl-90
    seed: 0
    epochs: 10
    model: lenet300100            # or {name: small-cnn}
    data: {name: auto, batch_size: 128}          # auto = Fashion-MNIST if installed, else MNIST-1D;
                                  # also n_train, n_test, n_val (validation held out of train), root
    method:
      name: rigl                  # dense | static | snip | gmp | imp | set | rigl
      sparsity: 0.9
      update_interval: 100        # step-valued keys accept ints, "25%" of training or "2ep"
      end: 75%
    targets: {exclude: [], first_layer: sparse, last_layer: sparse}
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}
    lr_schedule: {name: cosine, warmup_steps: 0}   # constant | cosine | step
    checkpoint_every_steps: 0     # 0 = at the end of every epoch only

IMP (``epochs`` is the length of one round): ``method: {name: imp, sparsity: 0.99, schedule: linear,
fraction: 0.01, score: magnitude, reinit: null, rewind_step: 0}``, or ``schedule: [0.5, 0.8, 0.9]``
without ``sparsity``; ``score: random`` and ``reinit: random`` are the two random controls.

Unknown keys anywhere are rejected with the list of allowed keys, and method parameters are
checked against the method's signature, so a typo fails before training starts.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import ConfigError, check_int
from .masking import Targets
from .methods import METHODS

__all__ = ["Recipe", "load_recipe", "method_parameters", "resolve_steps", "STEP_KEYS"]

#: method parameters measured in optimizer steps; recipes may write them as "25%" or "2ep"
STEP_KEYS = frozenset({"begin", "end", "total_steps", "update_interval", "steps_per_round", "rewind_step", "frequency"})

_OPTIMIZERS = {"sgd": {"lr", "momentum", "weight_decay", "nesterov", "dampening"},
               "adam": {"lr", "betas", "weight_decay", "eps", "amsgrad"},
               "adamw": {"lr", "betas", "weight_decay", "eps", "amsgrad"}}
_LR_SCHEDULES = {"constant": {"warmup_steps"}, "cosine": {"warmup_steps"}, "step": {"warmup_steps", "milestones", "gamma"}}


def _check_keys(d: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping; got {type(d).__name__}: {d!r}")
    unknown = set(d) - allowed
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")
    return d


def _named(value: Any, where: str) -> dict:
    """Accept ``"name"`` or ``{name: ..., ...}``."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        if "name" not in value:
            raise ConfigError(f"{where} needs a 'name' key; got {value!r}")
        return dict(value)
    raise ConfigError(f"{where} must be a name or a mapping with 'name'; got {value!r}")


def method_parameters(name: str) -> set[str]:
    """Keyword parameters accepted by method ``name`` (across its class hierarchy)."""
    if name == "snip":
        name = "static"
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {sorted([*METHODS, 'snip'])}")
    params: set[str] = set()
    for cls in METHODS[name].__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "model", "optimizer"):
                params.add(p.name)
    # runtime-only arguments supplied by the trainer, never by a recipe
    return params - {"data", "loss_fn", "lr_scheduler", "targets"}


_STEP_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(%|ep)\s*$")


def resolve_steps(key: str, value: Any, *, total_steps: int, steps_per_epoch: int) -> int:
    """Turn a step-valued recipe entry (int, ``"25%"`` of training, ``"2ep"``) into optimizer steps."""
    if isinstance(value, bool):
        raise ConfigError(f"method.{key} must be a step count, 'N%' or 'Nep'; got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _STEP_RE.match(value)
        if m:
            x, unit = float(m.group(1)), m.group(2)
            return int(round(x / 100.0 * total_steps)) if unit == "%" else int(round(x * steps_per_epoch))
    raise ConfigError(f"method.{key} must be an integer step count, a percentage of training like '75%' "
                      f"or epochs like '2ep'; got {value!r}")


def _check_optimizer_values(spec: dict[str, Any]) -> None:
    # torch checks these only when the optimizer is built, after the data and the model
    def number(key: str, ok: Callable[[float], bool], allowed: str, value: Any = None) -> None:
        v = spec[key] if value is None else value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(float(v)):
            raise ConfigError(f"optimizer.{key} must be {allowed}; got {v!r}")

    for key in spec:
        if key in ("lr", "eps"):
            number(key, lambda v: v > 0, "a positive number")
        elif key in ("weight_decay", "dampening"):
            number(key, lambda v: v >= 0, "a number >= 0")
        elif key == "momentum":
            number(key, lambda v: 0 <= v < 1, "a number in [0, 1)")
        elif key == "betas":
            b = spec[key]
            if not isinstance(b, (list, tuple)) or len(b) != 2:
                raise ConfigError(f"optimizer.betas must be two numbers in [0, 1); got {b!r}")
            for v in b:
                number(key, lambda v: 0 <= v < 1, "two numbers in [0, 1)", value=v)


@dataclass
class Recipe:
    """A validated training recipe (see the module docstring for the YAML form)."""

    method: dict[str, Any]
    name: str = "run"
    seed: int = 0
    epochs: int = 5
    model: dict[str, Any] = field(default_factory=lambda: {"name": "lenet300100"})
    data: dict[str, Any] = field(default_factory=lambda: {"name": "auto", "batch_size": 128})
    targets: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4})
    lr_schedule: dict[str, Any] = field(default_factory=lambda: {"name": "cosine"})
    checkpoint_every_steps: int = 0

    def __post_init__(self) -> None:
        self.method = _named(self.method, "method")
        mname = self.method["name"]
        allowed = method_parameters(mname) | {"name"}
        _check_keys(self.method, allowed, f"method ({mname})")
        # an explicit list of levels (IMP's schedule) or an Erdős–Rényi epsilon (SET, RigL)
        # fixes the final sparsity by itself
        alloc = self.method.get("allocation")
        by_epsilon = "epsilon" in self.method or (isinstance(alloc, dict) and "epsilon" in alloc)
        if (mname != "dense" and "sparsity" not in self.method and "pattern" not in self.method
                and not isinstance(self.method.get("schedule"), list) and not by_epsilon):
            raise ConfigError(f"method ({mname}) needs 'sparsity' (fraction of zeros in [0, 1))")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name must be a non-empty string; got {self.name!r}")
        check_int(self.seed, "seed", minimum=0)
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.checkpoint_every_steps, "checkpoint_every_steps", minimum=0)
        self.model = _named(self.model, "model")
        self.data = _named(self.data, "data")
        _check_keys(self.data, {"name", "batch_size", "n_train", "n_test", "n_val", "root"}, "data")
        self.data.setdefault("batch_size", 128)
        check_int(self.data["batch_size"], "data.batch_size", minimum=1)
        Targets.from_spec(self.targets or None)
        self.optimizer = _named(self.optimizer, "optimizer")
        oname = self.optimizer["name"]
        if oname not in _OPTIMIZERS:
            raise ConfigError(f"optimizer.name must be one of {sorted(_OPTIMIZERS)}; got {oname!r}")
        _check_keys(self.optimizer, _OPTIMIZERS[oname] | {"name"}, f"optimizer ({oname})")
        if "lr" not in self.optimizer:
            raise ConfigError(f"optimizer ({oname}) needs 'lr'")
        _check_optimizer_values(self.optimizer)
        self.lr_schedule = _named(self.lr_schedule, "lr_schedule")
        sname = self.lr_schedule["name"]
        if sname not in _LR_SCHEDULES:
            raise ConfigError(f"lr_schedule.name must be one of {sorted(_LR_SCHEDULES)}; got {sname!r}")
        _check_keys(self.lr_schedule, _LR_SCHEDULES[sname] | {"name"}, f"lr_schedule ({sname})")
        for k, v in self.method.items():
            if k in STEP_KEYS:
                resolve_steps(k, v, total_steps=1, steps_per_epoch=1)  # syntax check only

    @classmethod
    def from_dict(cls, d: Any) -> "Recipe":
        """Validate a mapping (e.g. parsed YAML) into a recipe."""
        _check_keys(d, {f.name for f in fields(cls)}, "recipe")
        if "method" not in d:
            raise ConfigError("recipe needs a 'method' section, e.g. method: {name: rigl, sparsity: 0.9}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (round-trips through :meth:`from_dict`)."""
        return asdict(self)


def yaml_error_line(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line error as one line: what is wrong and where (line and column, 1-based)."""
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file {str(p)!r} does not exist")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {str(p)!r} is not valid YAML: {yaml_error_line(e)}") from None
    try:
        return Recipe.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"recipe {str(p)!r}: {e}") from None
