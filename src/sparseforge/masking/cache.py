"""Float (0/1) copies of a :class:`~sparseforge.masking.Masking`'s bool masks, kept current cheaply."""

from __future__ import annotations

from typing import Sequence

import torch

from .layers import mask_to

__all__ = ["FloatMaskCache"]


class FloatMaskCache:
    """One float copy of each layer's bool mask, in its weight's dtype, rebuilt only when it is out of date.

    Every optimizer step multiplies gradients (and for some optimizers weights) by the masks, and
    converting every bool mask at every step would cost a pass per layer. A layer's copy is
    current while its weight keeps its dtype and device and its mask is the same tensor at the
    same version: torch bumps a tensor's version at every in-place change, so a mask changed
    behind the owner's back (``model.load_state_dict``, a ``copy_`` by the user) is noticed.
    :meth:`entry` is that rule, and the only place that states it.

    A layer whose mask the owner changes itself keeps the other layers' copies current:
    :meth:`replace` (a whole new mask) and :meth:`set_positions` (a few positions).
    """

    __slots__ = ("_entries", "_masks")

    def __init__(self) -> None:
        self._entries: list[tuple] | None = None
        self._masks: list[torch.Tensor] | None = None

    @staticmethod
    def entry(weight: torch.Tensor, mask: torch.Tensor) -> tuple:
        """What a layer's float copy depends on: the weight's dtype and device, the mask's identity and version."""
        return (weight.dtype, weight.device, id(mask), mask._version)

    def get(self, weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        """``(float masks, rebuilt)`` for the layers' ``weights`` and bool ``masks``; ``rebuilt`` if any was out of date."""
        entries = list(map(self.entry, weights, masks))
        if entries != self._entries:
            self._entries = entries
            self._masks = [mask_to(m, w.dtype) for w, m in zip(weights, masks)]
            return self._masks, True
        return self._masks, False

    def clear(self) -> None:
        """Forget every copy (the next :meth:`get` rebuilds them)."""
        self._entries = None
        self._masks = None

    def replace(self, index: int | None, weight: torch.Tensor, mask: torch.Tensor, float_mask: torch.Tensor) -> None:
        """Layer ``index`` has a new ``mask`` whose float copy is ``float_mask`` (``None`` index: forget everything)."""
        if self._masks is None or index is None:
            self.clear()
            return
        self._entries[index] = self.entry(weight, mask)
        self._masks[index] = float_mask

    def set_positions(self, index: int | None, mask: torch.Tensor, version_before: int, positions: torch.Tensor,
                      keep: bool) -> None:
        """Layer ``index``'s ``mask`` was set to ``keep`` at flat ``positions`` (stored layout), from ``version_before``.

        Its copy is updated in place if it was current before the change; otherwise every copy is
        forgotten. Nothing happens without copies or for a layer the owner does not list.
        """
        if self._masks is None or index is None:
            return
        dtype, device, mask_id, version = self._entries[index]
        copy = self._masks[index]
        if (mask_id, version) == (id(mask), version_before) and copy.is_contiguous():
            copy.view(-1)[positions] = float(keep)
            self._entries[index] = (dtype, device, mask_id, mask._version)
        else:
            self.clear()
