"""The main job: train a small model dense and sparse and print one comparison table.

Uses LeNet-300-100 on Fashion-MNIST when the Debian package ``dataset-fashion-mnist`` is
installed, and on MNIST-1D (generated locally) otherwise. Every method gets the same epoch
budget, optimizer and learning-rate schedule; accuracy is the final epoch's test accuracy
(never the best epoch).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from .errors import ConfigError, check_int, check_sparsity
from .tables import text_table

__all__ = ["METHOD_PRESETS", "preset", "demo_recipe", "run_method", "run_recipe", "run_demo", "format_table"]

#: method presets shared by the demo and the benchmarks: name -> method section of a recipe
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "dense": {"name": "dense"},
    "static-uniform": {"name": "static", "score": "random", "allocation": "uniform"},
    "static-erk": {"name": "static", "score": "random", "allocation": "erk"},
    "snip": {"name": "snip"},
    "gmp": {"name": "gmp", "begin": 0, "end": "75%", "frequency": 10},
    "set": {"name": "set", "update_interval": "1ep", "drop_fraction": 0.3},
    "rigl": {"name": "rigl", "update_interval": 100, "drop_fraction": 0.3, "end": "75%"},
    # RigL as its authors configure it for MLPs on MNIST (Evci et al. 2022, rigl_tf2
    # mlp_configs/rigl.gin): an update every 500 steps until the end, the drop fraction scaled
    # with the learning rate (the same as cosine to the last step under a cosine LR without
    # warm-up), the optimizer step applied on update steps too
    "rigl-mlp": {"name": "rigl", "update_interval": 500, "drop_fraction": 0.3, "end": "100%", "skip_step": False},
    "imp": {"name": "imp", "fraction": 0.2, "rewind_step": 0},
}
# the sparse-from-scratch presets again with the sparse initialisation of Evci et al. 2022
# (init_scale="unit": each unit's kept weights rescaled to its real fan-in)
METHOD_PRESETS.update({f"{k}-sinit": {**METHOD_PRESETS[k], "init_scale": "unit"}
                       for k in ("static-uniform", "static-erk", "snip", "set", "rigl")})

DEFAULT_DEMO_METHODS = ("dense", "static-uniform", "static-erk", "snip", "gmp", "set", "rigl")


def preset(name: str, sparsity: float) -> dict[str, Any]:
    """Method section for preset ``name`` at ``sparsity`` (dense ignores the sparsity)."""
    if name not in METHOD_PRESETS:
        raise ConfigError(f"unknown method preset {name!r}; available: {sorted(METHOD_PRESETS)}")
    m = dict(METHOD_PRESETS[name])
    if name != "dense":
        m["sparsity"] = sparsity
    return m


def demo_recipe(method: str, *, sparsity: float, epochs: int, seed: int, dataset: str, model: str = "lenet300100") -> Any:
    """The recipe the demo and the ``fmnist`` benchmark use for one method."""
    from .recipes import Recipe

    return Recipe(
        name=f"{model}-{method}-{sparsity}",
        seed=seed,
        epochs=epochs,
        model={"name": model},
        data={"name": dataset, "batch_size": 128},
        method=preset(method, sparsity),
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        lr_schedule={"name": "cosine"},
    )


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of demo rows (method, accuracy, sparsity, nonzeros, FLOPs, time)."""
    head = ["method", "test acc", "sparsity", "nonzeros / params", "FLOPs / sample (sparse / dense)", "time"]
    body = [[r["method"], f"{100 * r['accuracy']:.2f} %", f"{100 * r['sparsity']:.1f} %",
             f"{_human(r['nonzeros'])} / {_human(r['params'])}",
             f"{_human(r['sparse_flops'])} / {_human(r['dense_flops'])}", f"{r['seconds']:.0f} s"] for r in rows]
    return text_table(head, body, align="l" + "r" * 5)


def run_method(method: str, *, sparsity: float, epochs: int, seed: int, data: Any, model: str = "lenet300100",
               progress: bool = False) -> dict[str, Any]:
    """Train one preset with :func:`demo_recipe` and return its result row.

    ``data`` is a :class:`~sparseforge.data.Dataset` or a dataset name (loaded here; the
    benchmark workers pass names so nothing large crosses process boundaries). The row holds
    the final test accuracy, achieved sparsity, nonzeros, parameter count, dense and sparse
    FLOPs per sample, the per-epoch history and the wall time.
    """
    from .data import load_dataset
    from .train import Trainer

    if isinstance(data, str):
        data = load_dataset(data)
    t0 = time.perf_counter()
    trainer = Trainer(demo_recipe(method, sparsity=sparsity, epochs=epochs, seed=seed, dataset=data.name, model=model),
                      progress=progress, dataset=data)
    result = trainer.fit()
    totals = trainer.report().totals
    return {"method": method, "model": model, "seed": seed, "epochs": epochs, "dataset": data.name,
            "accuracy": result.final["test_accuracy"], "sparsity": totals["global_sparsity"],
            "nonzeros": totals["nonzeros"], "params": totals["total_params"],
            "sparse_flops": totals["sparse_flops"], "dense_flops": totals["dense_flops"],
            "history": result.history, "seconds": time.perf_counter() - t0}


def run_recipe(recipe: dict[str, Any], *, dataset: Any = None) -> dict[str, Any]:
    """Train one recipe (a dict for :class:`~sparseforge.recipes.Recipe`) and summarise it.

    The final-epoch test accuracy is the Trainer's, measured after the last step (an N:M
    method is then in its finished state, the hard target mask). The model is then finalized
    (masks folded into the weights), every N:M layer is checked for groups with more than N
    nonzeros (a violation raises ``RuntimeError``), and the test set is scored again: the
    result holds both accuracies, which must agree.

    Args:
        recipe: recipe mapping (``method``, ``model``, ``epochs``, ``seed``, ``targets`` ...).
        dataset: a preloaded :class:`~sparseforge.data.Dataset`, or None to load the recipe's
            ``data`` section (name, ``n_train``, ``n_test``) here, so worker processes receive
            only the recipe.

    Returns:
        ``accuracy`` (final epoch), ``finalized_accuracy``, ``sparsity`` (of the masked
        layers, from the report), ``nonzeros``, ``params``, ``dense_flops``, ``sparse_flops``,
        ``masked_layers``, ``skipped``, ``notes``, ``nm_violations``, ``history``, ``seconds``, and
        ``val_accuracy`` (final epoch; None unless the recipe's ``data.n_val`` holds out a validation split).
    """
    from .core.patterns import NM
    from .lm import nm_violations
    from .methods import method_entry
    from .recipes import Recipe
    from .train import Trainer, evaluate

    t0 = time.perf_counter()
    trainer = Trainer(Recipe.from_dict(recipe), progress=False, dataset=dataset)
    dataset = trainer.dataset
    result = trainer.fit()
    report = trainer.report()
    method = trainer.method
    layers = list(method.layers)
    is_nm = isinstance(method.pattern, NM)
    method.finalize()
    violations = 0
    if is_nm:
        violations = sum(nm_violations(l.canonical(l.weight), method.pattern.n, method.pattern.m) for l in layers)
        if violations:
            raise RuntimeError(f"{recipe['method']['name']}: {violations} N:M groups broken after finalize(); "
                               "this is a bug in sparseforge")
    ev = evaluate(trainer.model, dataset.x_test, dataset.y_test)
    t = report.totals
    return {"method": recipe["method"]["name"], "recipe": recipe, "dataset": dataset.name,
            "accuracy": result.final["test_accuracy"], "finalized_accuracy": ev["accuracy"],
            "val_accuracy": result.final.get("val_accuracy"),
            "sparsity": t["global_sparsity"], "nonzeros": t["nonzeros"], "params": t["total_params"],
            "dense_flops": t["dense_flops"], "sparse_flops": t["sparse_flops"],
            "masked_layers": [l.qualname for l in layers], "skipped": list(t.get("skipped", [])),
            "notes": list(t.get("notes", [])), "nm_violations": violations if is_nm else None,
            # metrics() reports flips since its previous call, i.e. per epoch here
            "sad": sum(h.get("sad", 0) for h in result.history) if method_entry(recipe["method"]["name"]).cls.logs_mask_flips else None,
            "history": result.history, "seconds": time.perf_counter() - t0}


def run_demo(epochs: int = 5, sparsity: float = 0.9, methods: Sequence[str] | None = None, seed: int = 0,
             dataset: str = "auto", progress: bool = True) -> list[dict[str, Any]]:
    """Train every method in ``methods`` and print the comparison table; returns the rows."""
    from .data import load_dataset

    check_sparsity(sparsity, "--sparsity")
    check_int(epochs, "--epochs", minimum=1)
    methods = list(methods or DEFAULT_DEMO_METHODS)
    for m in methods:
        preset(m, sparsity)  # fail before any training
    data = load_dataset(dataset)
    print(f"sparseforge demo: LeNet-300-100 on {data.name} ({data.x_train.shape[0]} train / {data.x_test.shape[0]} test), "
          f"{epochs} epochs per method, target sparsity {sparsity:.0%}, seed {seed}")
    rows = []
    for m in methods:
        rows.append(run_method(m, sparsity=sparsity, epochs=epochs, seed=seed, data=data, progress=progress))
        print(f"  {m:15s} test accuracy {100 * rows[-1]['accuracy']:.2f} %  ({rows[-1]['seconds']:.0f} s)", flush=True)
    print()
    print(format_table(rows))
    print("\nsparsity is simulated (zeros stored in dense tensors); FLOPs count weight multiply-adds x 2.")
    return rows
