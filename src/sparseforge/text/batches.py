"""Mini-batches of token windows for language-model training and evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..core.rng import stream_generator
from ..errors import ConfigError, check_int

__all__ = ["lm_batches", "lm_eval_batches"]


def _check_tokens(tokens: Any, block_size: int) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1 or tokens.is_floating_point() \
            or tokens.is_complex() or tokens.dtype == torch.bool:
        if isinstance(tokens, torch.Tensor):
            shown = f"a {tokens.dim()}-D {tokens.dtype} tensor"
        else:
            shown = type(tokens).__name__
        raise ConfigError(f"tokens must be a 1-D integer tensor (e.g. TextCorpus.train); got {shown}")
    check_int(block_size, "block_size", minimum=1)
    n = tokens.numel()
    if n < block_size + 1:
        raise ConfigError(
            f"block_size must be at most {max(n - 1, 0)} for a split of {n} tokens "
            f"(a window needs block_size + 1 tokens); got {block_size}"
        )
    return tokens


def lm_batches(
    tokens: torch.Tensor,
    block_size: int,
    batch_size: int,
    *,
    seed: int,
    steps: int | None,
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Random contiguous training windows: yields ``(x, y)``, each ``[batch_size, block_size]`` int64.

    Window starts are drawn uniformly (with replacement) from every position that leaves room
    for ``block_size + 1`` tokens; ``y`` is ``x`` shifted left by one token (next-token
    targets). The draws come from the ``"lm-batches"`` stream derived from ``seed``
    (:func:`sparseforge.core.rng.stream_generator`), independent of ``torch.manual_seed``, so
    the same seed gives the same batches in any process. Arguments are checked when this is
    called, not at the first ``next()``.

    Args:
        tokens: 1-D integer tensor, e.g. ``corpus.train``.
        block_size: tokens per window (the model's context length).
        batch_size: windows per batch.
        seed: seed of the window stream.
        steps: number of batches to yield, or None for an endless stream.
        start: skip the first ``start`` batches of that stream (their draws are made, their
            windows are not gathered): a resumed run continues with the batches it would
            have seen. ``steps`` counts from the beginning, so ``steps - start`` are yielded.

    Raises:
        ConfigError: ``tokens`` not a 1-D integer tensor, ``block_size`` or ``batch_size``
            below 1, ``block_size`` too large for ``tokens``, ``steps`` below 1, or ``start``
            negative or beyond ``steps``.
    """
    tokens = _check_tokens(tokens, block_size)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(seed, "seed")
    if steps is not None:
        check_int(steps, "steps", minimum=1)
    check_int(start, "start", minimum=0)
    if steps is not None and start > steps:
        raise ConfigError(f"start must be in [0, steps={steps}]; got {start}")
    generator = stream_generator(seed, "lm-batches")
    offsets = torch.arange(block_size)
    n_starts = tokens.numel() - block_size

    def windows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(start):  # the same draws as the batches skipped, so the stream lines up
            torch.randint(n_starts, (batch_size, 1), generator=generator)
        step = start
        while steps is None or step < steps:
            starts = torch.randint(n_starts, (batch_size, 1), generator=generator)
            idx = (starts + offsets).to(tokens.device)
            # two gathers rather than slicing one window: both tensors come out contiguous
            yield tokens[idx].to(torch.int64), tokens[idx + 1].to(torch.int64)
            step += 1

    return windows()


def lm_eval_batches(
    tokens: torch.Tensor, block_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Deterministic evaluation windows: non-overlapping ``(x, y)`` windows covering ``tokens`` in order.

    Window ``i`` starts at ``i * block_size``; there are ``(len(tokens) - 1) // block_size`` of
    them (the last partial window is dropped, so every prediction has a full-length context
    budget), grouped in batches of ``batch_size`` (the last batch may be smaller). Averaging
    the loss over all of them gives the validation loss / perplexity of a split.

    Raises:
        ConfigError: as :func:`lm_batches`.
    """
    tokens = _check_tokens(tokens, block_size)
    check_int(batch_size, "batch_size", minimum=1)
    n_windows = (tokens.numel() - 1) // block_size
    offsets = torch.arange(block_size, device=tokens.device)

    def windows() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for first in range(0, n_windows, batch_size):
            starts = torch.arange(first, min(first + batch_size, n_windows), device=tokens.device) * block_size
            idx = starts[:, None] + offsets
            yield tokens[idx].to(torch.int64), tokens[idx + 1].to(torch.int64)

    return windows()
