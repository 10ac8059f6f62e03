"""What both trainers do before their first step: a method's arguments for this run.

The method's class supplies its run knowledge (:meth:`~sparseforge.methods.base.SparsityMethod.run_defaults`,
:attr:`~sparseforge.methods.base.SparsityMethod.step_params`, ...); this module applies it the
same way for every runner, so neither runner knows any method by name.
"""

from __future__ import annotations

from typing import Any, Callable

from ..core.steps import resolve_steps
from ..methods import MethodEntry

__all__ = ["method_arguments", "runtime_arguments"]


def method_arguments(entry: MethodEntry, params: dict[str, Any], *, seed: int, total_steps: int,
                     steps_per_epoch: int | None, where: str = "method") -> dict[str, Any]:
    """The keyword arguments to build ``entry``'s method for a run of ``total_steps`` steps.

    In order: the alias's presets, then ``params`` (explicit values win over everything), the
    run's ``seed``, the class's :meth:`run_defaults` for this run length, and finally every
    step-valued argument (``"75%"``, ``"2ep"``) resolved to optimizer steps.
    """
    p = {**entry.presets, **params}
    p.setdefault("seed", seed)
    for k, v in entry.cls.run_defaults(total_steps, steps_per_epoch).items():
        p.setdefault(k, v)
    for k in list(p):
        if k in entry.cls.step_params:
            p[k] = resolve_steps(k, p[k], total_steps=total_steps, steps_per_epoch=steps_per_epoch, where=where)
    return p


def runtime_arguments(entry: MethodEntry, params: dict[str, Any], offered: dict[str, Callable[[], Any]]) -> None:
    """Add to ``params`` the runtime objects the method takes (its ``runner_args``) that the runner offers.

    ``offered`` maps an argument name to a function producing it, called only if the method
    takes it (the calibration batch ``data`` only if the method
    :meth:`~sparseforge.methods.base.SparsityMethod.needs_calibration_batch`). Values already in
    ``params`` win.
    """
    for key in sorted(entry.cls.runner_args):
        if key in params or key not in offered:
            continue
        if key == "data" and not entry.cls.needs_calibration_batch(params):
            continue
        params[key] = offered[key]()
