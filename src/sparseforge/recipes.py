"""YAML recipes: one file describes one training run, validated before anything runs.

Example (every key shown; only ``method`` is required)::

    name: lenet-rigl-90
    seed: 0
    epochs: 10
    model: lenet300100            # or {name: small-cnn}
    data: {name: auto, batch_size: 128}          # auto = Fashion-MNIST if installed, else MNIST-1D;
                                  # also n_train, n_test, n_val (validation held out of train), root
    method:
      name: rigl                  # any registered method: sparseforge methods lists them
      sparsity: 0.9               # a fraction of zeros, or N:M quoted: "2:4" (N:M methods)
      overrides: {fc3: 0.5}       # per-layer sparsities (module name or regex); the rest share 0.9
      update_interval: 100        # step-valued keys accept ints, "25%" of training or "2ep"
      end: 75%
    targets: {exclude: [], first_layer: sparse, last_layer: sparse}
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}
    lr_schedule: {name: cosine, warmup_steps: 0}   # constant | cosine | step
    checkpoint_every_steps: 0     # 0 = at the end of every epoch only
    imports: []                   # modules to import first; they may register more methods

IMP (``epochs`` is the length of one round): ``method: {name: imp, sparsity: 0.99, schedule: linear,
fraction: 0.01, score: magnitude, reinit: null, rewind_step: 0}``, or ``schedule: [0.5, 0.8, 0.9]``
without ``sparsity``; ``score: random`` and ``reinit: random`` are the two random controls.

Unknown keys anywhere are rejected with the list of allowed keys, and every value is checked when
the recipe loads (method parameters by the method's own rules, :meth:`SparsityMethod.validate_params`),
before any data or model is built.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .core.steps import STEP_KEYS, resolve_steps
from .errors import ConfigError, check_int, check_number
from .masking import Targets
from .methods import import_method_modules, method_entry

__all__ = ["Recipe", "load_recipe", "method_class", "method_parameters", "resolve_steps", "STEP_KEYS"]

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
    """Keyword parameters a recipe may set for method ``name`` (across its class hierarchy).

    The runtime objects a runner supplies (the method's ``runner_args``) and ``targets`` (a
    recipe section of its own) are left out.
    """
    cls, _ = method_class(name)
    return set(cls.parameter_defaults()) - set(cls.runner_args) - {"targets"}


def _check_optimizer_values(spec: dict[str, Any]) -> None:
    # torch checks these only when the optimizer is built, after the data and the model
    for key, value in spec.items():
        if key in ("lr", "eps"):
            check_number(value, f"optimizer.{key}", minimum=0.0, min_open=True)
        elif key in ("weight_decay", "dampening"):
            check_number(value, f"optimizer.{key}", minimum=0.0)
        elif key == "momentum":
            check_number(value, "optimizer.momentum", minimum=0.0, maximum=1.0, max_open=True)
        elif key in ("nesterov", "amsgrad") and not isinstance(value, bool):
            raise ConfigError(f"optimizer.{key} must be true or false; got {value!r}")
        elif key == "betas":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ConfigError(f"optimizer.betas must be two numbers in [0, 1); got {value!r}")
            for i, v in enumerate(value):
                check_number(v, f"optimizer.betas[{i}]", minimum=0.0, maximum=1.0, max_open=True)


def _check_lr_schedule_values(spec: dict[str, Any]) -> None:
    for key, value in spec.items():
        if key == "warmup_steps":
            resolve_steps(key, value, total_steps=1, steps_per_epoch=1, where="lr_schedule")
        elif key == "gamma":
            check_number(value, "lr_schedule.gamma", minimum=0.0, maximum=1.0, min_open=True)
        elif key == "milestones":
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"lr_schedule.milestones must be a list of steps (ints, 'N%' or 'Nep'); got {value!r}")
            for m in value:
                resolve_steps("milestones", m, total_steps=1, steps_per_epoch=1, where="lr_schedule")


def _check_data_values(spec: dict[str, Any]) -> None:
    from .data import DATASETS

    if spec["name"] not in DATASETS:
        raise ConfigError(f"data.name must be one of {list(DATASETS)}; got {spec['name']!r}")
    check_int(spec["batch_size"], "data.batch_size", minimum=1)
    for key in ("n_train", "n_test"):
        if spec.get(key) is not None:
            check_int(spec[key], f"data.{key}", minimum=1)
    if spec.get("n_val") is not None:
        check_int(spec["n_val"], "data.n_val", minimum=0)
    if spec.get("root") is not None and not isinstance(spec["root"], str):
        raise ConfigError(f"data.root must be a folder path (a string); got {spec['root']!r}")


def _check_model_values(spec: dict[str, Any]) -> None:
    from .models import MODELS, _model_key

    cls = MODELS[_model_key(spec["name"])]
    allowed = [q for q in inspect.signature(cls.__init__).parameters if q != "self"]
    unknown = sorted(set(spec) - {"name"} - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in model ({spec['name']}); allowed: {sorted(allowed)}")


def method_class(name: str) -> tuple[type, dict[str, Any]]:
    """The method class of recipe name ``name`` and the preset parameters of an alias (``snip``), from the registry."""
    entry = method_entry(name)
    return entry.cls, dict(entry.presets)


def _check_method(spec: dict[str, Any]) -> None:
    mname = spec["name"]
    if not isinstance(mname, str):
        raise ConfigError(f"method.name must be a string; got {mname!r}")
    cls, implied = method_class(mname)
    _check_keys(spec, method_parameters(mname) | {"name"}, f"method ({mname})")
    # an explicit list of levels (IMP's schedule) or an Erdős–Rényi epsilon (SET, RigL, static)
    # fixes the final sparsity by itself; N:M methods default to 2:4
    alloc = spec.get("allocation")
    by_epsilon = "epsilon" in spec or (isinstance(alloc, dict) and "epsilon" in alloc)
    if (mname != "dense" and "sparsity" not in spec and "pattern" not in spec and not by_epsilon
            and getattr(cls, "default_target", None) is None and not isinstance(spec.get("schedule"), list)):
        raise ConfigError(f"method ({mname}) needs 'sparsity' (a fraction of zeros in [0, 1), or N:M such as '2:4')")
    for k, v in spec.items():
        if k in STEP_KEYS:
            resolve_steps(k, v, total_steps=1, steps_per_epoch=1)  # syntax check only
    params = {**implied, **{k: v for k, v in spec.items() if k != "name"}}
    # the trainer supplies the run length; stand in for it so that rules needing it can run
    if "total_steps" in cls.parameter_defaults() and "total_steps" not in params:
        params["total_steps"] = "100%"
    try:
        cls.validate_params(params)
    except ConfigError as e:
        raise ConfigError(f"method ({mname}): {e}") from None


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
    imports: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # plugin modules first: importing them registers the methods the recipe names
        if not isinstance(self.imports, list):
            raise ConfigError(f"imports must be a list of module names; got {self.imports!r}")
        import_method_modules(self.imports)
        self.method = _named(self.method, "method")
        _check_method(self.method)
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name must be a non-empty string; got {self.name!r}")
        check_int(self.seed, "seed", minimum=0)
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.checkpoint_every_steps, "checkpoint_every_steps", minimum=0)
        self.model = _named(self.model, "model")
        _check_model_values(self.model)
        self.data = _named(self.data, "data")
        _check_keys(self.data, {"name", "batch_size", "n_train", "n_test", "n_val", "root"}, "data")
        self.data.setdefault("batch_size", 128)
        _check_data_values(self.data)
        try:
            Targets.from_spec(self.targets or None)
        except TypeError as e:  # an unknown field
            raise ConfigError(f"targets: {e}") from None
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
        _check_lr_schedule_values(self.lr_schedule)

    @classmethod
    def from_dict(cls, d: Any) -> "Recipe":
        """Validate a mapping (e.g. parsed YAML) into a recipe."""
        _check_keys(d, {f.name for f in fields(cls)}, "recipe")
        if "method" not in d:
            raise ConfigError("recipe needs a 'method' section, e.g. method: {name: rigl, sparsity: 0.9}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (round-trips through :meth:`from_dict`); ``imports`` only when there are some.

        Leaving an empty ``imports`` out keeps the mapping of a recipe without plugins as it was
        before the key existed, so run folders and checkpoints written then still resume.
        """
        d = asdict(self)
        if not d["imports"]:
            del d["imports"]
        return d


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
