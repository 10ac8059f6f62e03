"""Run one function over many keyword-argument sets, in this process or in fresh worker processes.

:func:`parallel_map` is the grid runner of the benchmark suites and of
:func:`sparseforge.soups.sparse_model_soups` (its ingredient retrains); it sits at the bottom of
the layering so that library code may use it without importing the benchmark harness.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence

from .errors import ConfigError, check_int

__all__ = ["parallel_map"]


def _set_worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def parallel_map(fn: Callable[..., Any], kwargs_list: Sequence[dict[str, Any]], *, jobs: int = 1,
                 threads: int | None = None, errors: str = "raise") -> Iterator[tuple[int, Any]]:
    """Yield ``(i, fn(**kwargs_list[i]))`` as each call finishes.

    With ``jobs > 1`` the calls run in ``jobs`` fresh (spawned) worker processes, each limited
    to ``threads`` torch threads (default ``cores // jobs``, at least 1): on a small CPU, one
    single-threaded training per core finishes a grid sooner than one two-threaded run at a time.
    ``fn`` must be importable (a module-level function of an installed module). Results arrive
    in completion order, so a caller can cache each as soon as it exists.

    ``errors="raise"`` (default) re-raises the first exception a call raises; ``"return"``
    yields the exception in place of the result and goes on with the other calls (a grid over
    learning rates expects some runs to diverge).
    """
    check_int(jobs, "jobs", minimum=1)
    if errors not in ("raise", "return"):
        raise ConfigError(f"errors must be 'raise' or 'return'; got {errors!r}")
    if jobs == 1:
        for i, kw in enumerate(kwargs_list):
            try:
                res = fn(**kw)
            except Exception as e:  # noqa: BLE001 - handed to the caller, who asked for it
                if errors == "raise":
                    raise
                res = e
            yield i, res
        return
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_set_worker_threads,
                             initargs=(threads,)) as pool:
        pending = {pool.submit(fn, **kw): i for i, kw in enumerate(kwargs_list)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                err = fut.exception()
                if err is not None and errors == "raise":
                    raise err
                yield i, fut.result() if err is None else err
