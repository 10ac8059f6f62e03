"""One run of each issue-6 benchmark (Sparse-IFT, Sparse Model Soups, random node search).

The benchmark suites in ``benchmarks/`` call these through :func:`sparseforge.parallel.parallel_map`,
which needs importable functions; each takes only small picklable arguments (the dataset by
name) and returns a JSON-ready row. Every run trains an MLP with SGD (momentum 0.9, weight decay
1e-4, batch 128) and reports the final test accuracy (never the best epoch).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from .bench import per_key_values
from .errors import ConfigError
from .fileio import atomic_write_text, read_json

__all__ = ["NormMLP", "mlp_for", "load_data", "param_matched_width", "run_ift", "run_soups", "run_search", "parse_per_dataset",
           "cache_key", "run_grid"]


def load_data(dataset: str, n_train: int | None = None, n_test: int | None = None) -> Any:
    """:func:`~sparseforge.data.load_dataset` with optional prefixes of the splits."""
    from .data import load_dataset

    return load_dataset(dataset, n_train=n_train, n_test=n_test)


class NormMLP(torch.nn.Module):
    """``fc1 - bn1 - ReLU - ... - fcK``: an MLP with BatchNorm after every hidden layer.

    The baseline for Sparse-IFT variants that add BatchNorm (Sparse Parallel's branch norms,
    Sparse Factorized's ``bn_relu``), so both sides have normalisation.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.flatten = torch.nn.Flatten()
        dims = [in_features, *hidden, num_classes]
        self.num_layers = len(dims) - 1
        for i in range(self.num_layers):
            self.add_module(f"fc{i + 1}", torch.nn.Linear(dims[i], dims[i + 1]))
            if i < self.num_layers - 1:
                self.add_module(f"bn{i + 1}", torch.nn.BatchNorm1d(dims[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]``."""
        x = self.flatten(x)
        for i in range(1, self.num_layers):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"fc{i}")(x)))
        return getattr(self, f"fc{self.num_layers}")(x)


def mlp_for(data: Any, hidden: Sequence[int], norm: bool = False) -> torch.nn.Module:
    """An MLP (``fc1 .. fcK``, ReLU; BatchNorm after each hidden layer if ``norm``) sized for ``data``."""
    from .models import MLP1D

    if norm:
        return NormMLP(int(math.prod(data.input_shape)), tuple(hidden), data.num_classes)
    return MLP1D(int(math.prod(data.input_shape)), tuple(hidden), data.num_classes)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_matched_width(data: Any, depth: int, target_params: int, norm: bool = False) -> int:
    """The hidden width ``w`` of a ``depth``-hidden-layer MLP whose parameter count is closest to ``target_params``."""
    count = lambda w: _params(mlp_for(data, [w] * depth, norm))  # noqa: E731
    lo, hi = 1, 1
    while count(hi) < target_params:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target_params:
            lo = mid + 1
        else:
            hi = mid
    cands = [w for w in (lo - 1, lo) if w >= 1]
    return min(cands, key=lambda w: abs(count(w) - target_params))


def _flops(model: torch.nn.Module, data: Any) -> tuple[float, float]:
    from .report import sparsity_report

    t = sparsity_report(model, data.x_test[:1]).totals
    return t["dense_flops"], t["sparse_flops"]


def run_ift(*, dataset: str, kind: str, sparsity: float, seed: int, epochs: float, hidden: Sequence[int],
            n_train: int | None = None, n_test: int | None = None, lr: float = 0.05, batch_size: int = 128,
            method: str = "rigl", branch_norm: bool = True, uv_layer: str = "bn_relu", norm: bool = False,
            data: Any = None) -> dict[str, Any]:
    """Train one Sparse-IFT cell and return its row.

    ``kind`` is a Sparse-IFT kind, ``"dense"`` (the dense MLP: the equal-FLOPs baseline) or
    ``"dense-params:<kind>"`` (a dense MLP with uniform hidden width whose parameter count is
    closest to the ``<kind>`` model at ``sparsity``). Sparse parts train with ``method``
    (RigL: ``update_interval`` 100, drop fraction 0.3 cosine, ``end`` = 75 % of the steps).
    ``branch_norm`` (Sparse Parallel) and ``uv_layer`` (Sparse Factorized) are the layer options
    of :mod:`sparseforge.transforms.sparse_ift`; the dense MLP has no BatchNorm, so turning them off
    (``False``, ``"relu"``) isolates the effect of the sparse reparameterisation; ``norm`` gives
    every MLP (baseline included) BatchNorm after each hidden layer (:class:`NormMLP`).
    """
    from .soups import accuracy, train_classifier
    from .report import iso_flop_report
    from .transforms import ift_method, sparse_ift

    t0 = time.perf_counter()
    data = data if data is not None else load_data(dataset, n_train, n_test)
    torch.manual_seed(seed)
    base = mlp_for(data, hidden, norm)
    x1 = data.x_test[:1]
    steps = max(1, int(round(epochs * math.ceil(data.x_train.shape[0] / batch_size))))
    attach = None
    info: dict[str, Any] = {}

    def opts(k: str) -> dict[str, Any]:
        return {"parallel": {"branch_norm": branch_norm}, "factorized": {"uv_layer": uv_layer}}.get(k, {})

    if kind == "dense":
        model = base
    elif kind.startswith("dense-params:"):
        ref_kind = kind.split(":", 1)[1]
        ref = sparse_ift(base, ref_kind, sparsity, example_inputs=x1, **opts(ref_kind)).model
        width = param_matched_width(data, len(hidden), _params(ref), norm)
        torch.manual_seed(seed)
        model = mlp_for(data, [width] * len(hidden), norm)
        info = {"width": width, "target_params": _params(ref)}
    else:
        model = sparse_ift(base, kind, sparsity, example_inputs=x1, **opts(kind)).model
        if method == "rigl":
            mparams: dict[str, Any] = {"total_steps": steps}
        elif method == "set":  # official SET: one topology update per epoch
            mparams = {"update_interval": math.ceil(data.x_train.shape[0] / batch_size)}
        elif method == "static":
            mparams = {}
        else:
            raise ConfigError(f"method must be 'rigl', 'set' or 'static'; got {method!r}")
        attach = lambda opt: ift_method(model, opt, method, seed=seed, **mparams)  # noqa: E731
    history = train_classifier(model, data.x_train, data.y_train, epochs=epochs, lr=lr, batch_size=batch_size,
                               seed=seed, schedule="cosine", eval_data=(data.x_test, data.y_test),
                               on_optimizer=attach)
    dense_flops, sparse_flops = _flops(model, data)
    if attach is not None:
        rep = iso_flop_report(base, model, x1)
        info["iso_flop_ratio"] = rep.totals["ratio"]
        sparse_flops = rep.totals["ift_flops"]
    base_flops = _flops(base, data)[0]
    return {"dataset": data.name, "kind": kind, "sparsity": sparsity, "seed": seed, "epochs": epochs,
            "hidden": list(hidden), "accuracy": accuracy(model, data.x_test, data.y_test), "history": history,
            "params": _params(model), "flops": sparse_flops, "dense_model_flops": base_flops,
            "flops_ratio": sparse_flops / base_flops, "train_steps": steps, **info,
            "seconds": time.perf_counter() - t0}


def run_soups(*, dataset: str, sparsity: float, seed: int, m: int, phases: int, pretrain_epochs: float,
              retrain_epochs: float, hidden: Sequence[int], val_size: int, n_train: int | None = None,
              n_test: int | None = None, lr: float = 0.05, batch_size: int = 128) -> dict[str, Any]:
    """One Sparse Model Soups run (``m = 1`` is IMP); every phase's numbers as a row."""
    from .masking import Targets
    from .soups import sparse_model_soups

    t0 = time.perf_counter()
    data = load_data(dataset, n_train, n_test)
    torch.manual_seed(seed)
    model = mlp_for(data, hidden)
    res = sparse_model_soups(model, data, sparsity=sparsity, phases=phases, m=m, pretrain_epochs=pretrain_epochs,
                             retrain_epochs=retrain_epochs, lr=lr, batch_size=batch_size, val_size=val_size,
                             seed=seed, targets=Targets(last_layer="dense"))
    masks = [b for n, b in model.named_buffers() if n.endswith("_mask")]
    achieved = 1.0 - sum(int(b.sum()) for b in masks) / sum(b.numel() for b in masks)
    phases_out = [{"phase": p.phase, "sparsity": p.sparsity, "ingredients": p.ingredients, "uniform": p.uniform,
                   "greedy": p.greedy, "best_ingredient": p.best_ingredient()} for p in res.phases]
    return {"dataset": data.name, "sparsity": sparsity, "seed": seed, "m": m, "phases": phases_out,
            "dense": res.dense, "achieved_sparsity": achieved, "config": res.config,
            "seconds": time.perf_counter() - t0}


def run_search(*, dataset: str, sparsity: float, seed: int, samples: int, epochs: float, hidden: Sequence[int],
               score_size: int = 1000, n_train: int | None = None, n_test: int | None = None, lr: float = 0.05,
               batch_size: int = 128, eval_every: int = 0) -> dict[str, Any]:
    """Random node search at ``sparsity`` from a parent initialised with ``seed``; train best, random (and dense at 0)."""
    from .search import convergence_step, random_search
    from .soups import train_classifier

    t0 = time.perf_counter()
    data = load_data(dataset, n_train, n_test)
    if not 0 < score_size <= data.x_train.shape[0]:
        raise ConfigError(f"score_size must be in [1, {data.x_train.shape[0]}]; got {score_size}")
    torch.manual_seed(seed)
    parent = mlp_for(data, hidden)
    xs, ys = data.x_train[:score_size], data.y_train[:score_size]
    runs = {}
    search = None
    if sparsity == 0:
        candidates = {"dense": parent}
    else:
        search = random_search(parent, xs, ys, sparsity=sparsity, samples=samples, seed=seed)
        candidates = {"searched": search.model, "random": search.random_model}
    for name, model in candidates.items():
        hist = train_classifier(model, data.x_train, data.y_train, epochs=epochs, lr=lr, batch_size=batch_size,
                                seed=seed, schedule="cosine", eval_data=(data.x_test, data.y_test),
                                eval_every=eval_every)
        runs[name] = {"accuracy": hist[-1]["accuracy"], "history": hist, "steps_to_95": convergence_step(hist, 0.95),
                      "mean_accuracy": sum(h["accuracy"] for h in hist) / len(hist)}
    out = {"dataset": data.name, "sparsity": sparsity, "seed": seed, "samples": samples, "epochs": epochs,
           "hidden": list(hidden), "runs": runs, "seconds": time.perf_counter() - t0}
    if search is not None:
        out.update({"init_loss_best": search.scores[search.best_index], "init_loss_random": search.random_score,
                    "init_loss_median": sorted(search.scores)[len(search.scores) // 2],
                    "kept_nodes": [int(m.sum()) for m in search.best]})
    return out


def cache_key(job: dict[str, Any], prefix: str) -> str:
    """File name of one cached run: readable prefix + hash of the whole job."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:12]
    return f"{prefix}_{digest}"


def run_grid(fn: Any, jobs: list[dict[str, Any]], *, cache: Any, workers: int = 1, label: Any = None,
             log: Any = print) -> list[dict[str, Any]]:
    """Run ``fn(**job)`` for every job not cached in folder ``cache``; return the rows in job order.

    Each finished row is written to ``cache/<key>.json`` at once, so an interrupted suite resumes.
    ``workers > 1`` runs jobs in spawned processes (:func:`~sparseforge.parallel.parallel_map`).
    """
    import json
    from pathlib import Path

    from .parallel import parallel_map

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    label = label or (lambda j: "run")
    keys = [cache_key(j, label(j)) for j in jobs]
    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for key, job in zip(keys, jobs):
        f = cache / f"{key}.json"
        if f.exists():
            rows[key] = read_json(f, what="cached benchmark run")
        else:
            todo.append((key, job))
    log(f"{len(jobs)} runs, {len(jobs) - len(todo)} cached, {len(todo)} to train with {workers} worker(s)")
    for i, row in parallel_map(fn, [j for _, j in todo], jobs=workers):
        key = todo[i][0]
        atomic_write_text(cache / f"{key}.json", json.dumps(row))
        rows[key] = row
        log(f"{key}: done in {row.get('seconds', 0):.0f} s")
    return [rows[k] for k in keys]


def parse_per_dataset(spec: Sequence[str], datasets: Sequence[str], flag: str) -> dict[str, float]:
    """``["5"]`` -> every dataset 5; ``["fashion-mnist=5", "mnist1d=30"]`` -> per dataset."""
    return per_key_values(spec, datasets, flag, kind=float, unit="dataset")
