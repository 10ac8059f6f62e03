"""Step specs: a length of training written as optimizer steps, a percentage of the run, or epochs.

``resolve_steps`` is the one place that turns ``7``, ``"75%"`` or ``"2ep"`` into a step count;
the recipe trainer and the language-model trainer both call it (the latter has no epochs, so
``"2ep"`` is refused there)::

    resolve_steps("end", "75%", total_steps=1000, steps_per_epoch=50)   # 750
    resolve_steps("end", "2ep", total_steps=1000, steps_per_epoch=50)   # 100
    resolve_steps("end", 7, total_steps=1000, steps_per_epoch=50)       # 7
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError, check_int

__all__ = ["STEP_KEYS", "resolve_steps"]

#: method parameters measured in optimizer steps in the built-in methods; recipes may write them
#: as "25%" or "2ep" (a method lists its own in ``SparsityMethod.step_params``)
STEP_KEYS = frozenset({"begin", "end", "total_steps", "update_interval", "steps_per_round", "rewind_step", "frequency"})

_STEP_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(%|ep)\s*$")


def resolve_steps(key: str, value: Any, *, total_steps: int, steps_per_epoch: int | None, where: str = "method") -> int:
    """Turn a step spec (int, ``"25%"`` of ``total_steps``, ``"2ep"``) into optimizer steps.

    Percentages and epochs are rounded to the nearest step (``round``, ties to even).

    Args:
        key: the setting's name, for messages.
        value: an int, ``"N%"`` or ``"Nep"`` (N may have a fraction: ``"0.5ep"``).
        total_steps: the run's length (what ``"100%"`` means).
        steps_per_epoch: optimizer steps per epoch, or None for a run without epochs (then
            ``"Nep"`` is an error).
        where: the section the setting belongs to, for messages (``"method"``, ``"lr_schedule"``).

    Raises:
        ConfigError: a negative count, anything else (booleans, floats, other strings), or epochs
            without epochs.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be a step count, 'N%' or 'Nep'; got {value!r}")
    if isinstance(value, int):
        return check_int(value, f"{where}.{key}", minimum=0)
    if isinstance(value, str):
        m = _STEP_RE.match(value)
        if m:
            x, unit = float(m.group(1)), m.group(2)
            if unit == "%":
                return int(round(x / 100.0 * total_steps))
            if steps_per_epoch is None:
                raise ConfigError(f"{where}.{key} = {value!r} counts epochs, but this run has no epochs; "
                                  "use steps or 'N%' of steps")
            return int(round(x * steps_per_epoch))
    raise ConfigError(f"{where}.{key} must be an integer step count, a percentage of training like '75%' "
                      f"or epochs like '2ep'; got {value!r}")
