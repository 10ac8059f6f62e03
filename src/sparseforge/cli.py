"""The ``sparseforge`` command line.

Commands::

    sparseforge demo                       train dense and sparse models at 90 % and print a table
    sparseforge train RECIPE.yaml          run a recipe into a run folder (resumes if interrupted);
                                           torchrun --nproc_per_node P -m sparseforge train ... uses P processes (DDP)
    sparseforge report PATH                per-layer sparsity report of a run folder or checkpoint
    sparseforge bench SUITE                run a benchmark suite from benchmarks/ (see --list)
    sparseforge materialize RUN --out DIR  swap sparse layers for real sparse CPU kernels; DIR gets model.safetensors
                                           + materialized.json, reloaded by sparseforge.export.load_materialized(DIR)
    sparseforge kernels info               the C++ kernels: loaded or why not, cache key and folder (build: ahead of time)
    sparseforge methods                    list the methods and their parameters
    sparseforge prune MODEL --out D        one-shot prune (magnitude, Wanda, SparseGPT, DSnoT) with calibration data
    sparseforge data fetch NAME            fetch offline data (austen, fashion-mnist, bible); nothing else downloads

``--help`` and ``methods`` start quickly: subcommands import torch and their modules only when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from . import __version__
from .errors import SparseforgeError
from .tables import text_table


def _cmd_train(args: argparse.Namespace) -> int:
    from .recipes import load_recipe
    from .train import Trainer, clear_run_folder, process_group

    recipe = load_recipe(args.recipe)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / recipe.name
    rank, world = process_group()  # under torchrun: one process per rank, process 0 writes
    # the Trainer builds data, model and method from the recipe: a bad recipe fails here,
    # before --restart deletes anything
    trainer = Trainer(recipe, run_dir, progress=not args.no_progress, max_steps=args.max_steps,
                      log=lambda s: print(f"[sparseforge] {s}", file=sys.stderr))
    if args.restart and rank == 0:
        deleted = clear_run_folder(run_dir)
        if deleted:
            print(f"[sparseforge] --restart: deleted {', '.join(deleted)} from {run_dir}", file=sys.stderr)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # nobody resumes from a folder that --restart is deleting
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        return 130
    if rank != 0:
        return 0
    if trainer.step < trainer.total_steps:
        print(f"stopped at step {trainer.step}/{trainer.total_steps}; run the same command again to resume ({run_dir})")
        return 0
    print(trainer.report().table())
    f = result.final
    print(f"\nfinal test accuracy {f.get('test_accuracy', float('nan')):.4f} after {trainer.step} steps; results in {run_dir}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import report_for_path

    rep = report_for_path(Path(args.path))
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.table())
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from .fetch import DATA_SOURCES, fetch

    names = list(DATA_SOURCES) if "all" in args.names else list(dict.fromkeys(args.names))
    for name in names:
        print(fetch(name, root=args.root if name == "austen" else None))
    return 0


def _cmd_data_status(args: argparse.Namespace) -> int:
    from .fetch import DATA_SOURCES, status

    print(text_table(None, [(name, f"{where}  ({DATA_SOURCES[name][1]})") for name, where in status().items()]))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from .methods import method_entry, method_names
    from .recipes import method_parameters

    for name in method_names():  # registered names, aliases and entry-point plugins
        entry = method_entry(name)
        if entry.presets:
            target = next(n for n in method_names() if method_entry(n).cls is entry.cls and not method_entry(n).presets)
            presets = ", ".join(f"{k}={v!r}" for k, v in entry.presets.items())
            print(f"{name:8s} alias of {target} with {presets}")
            continue
        doc = (entry.cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:8s} {doc}")
        print(f"{'':8s} parameters: {', '.join(sorted(method_parameters(name)))}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(epochs=args.epochs, sparsity=args.sparsity, methods=args.methods, seed=args.seed,
             dataset=args.dataset, progress=not args.no_progress)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import list_suites, run_suite

    if args.list or not args.suite:
        print(text_table(None, list(list_suites().items())))
        return 0
    run_suite(args.suite, args.rest)
    return 0


def _load_run_model(path: Path):  # noqa: ANN202
    """The model of a run folder / training checkpoint (masks loaded), one example input, and what
    rebuilds its architecture: ``(model, example, base_model, recipe dict)``."""
    from .data import load_dataset
    from .errors import CheckpointError
    from .fileio import read_checkpoint
    from .masking import load_masked_state_dict
    from .models import _dataset_kwargs, _model_key, build_model, example_input
    from .recipes import Recipe

    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    if not ckpt.exists():
        raise CheckpointError(f"no checkpoint at {str(ckpt)!r}; give a run folder or its checkpoint.pt")
    ck = read_checkpoint(ckpt, "sparseforge-checkpoint-v1",
                         "sparseforge training checkpoint (it has a recipe to rebuild the model from; for any "
                         "other model call sparseforge.export.materialize(model) from Python)")
    recipe = Recipe.from_dict(ck["recipe"])
    data_kw = {k: v for k, v in recipe.data.items() if k not in ("name", "batch_size")}
    dataset = load_dataset(recipe.data["name"], **data_kw)
    model_kw = {k: v for k, v in recipe.model.items() if k != "name"}
    model = build_model(recipe.model["name"], dataset, **model_kw)
    load_masked_state_dict(model, ck["model"])
    # the constructor arguments in full, so the saved model rebuilds without loading the dataset
    key = _model_key(recipe.model["name"])
    base = {"name": key, "kwargs": {**_dataset_kwargs(key, dataset), **model_kw}}
    return model, example_input(recipe.model["name"], dataset, batch=1), base, recipe.to_dict()


def _cmd_materialize(args: argparse.Namespace) -> int:
    import torch

    from .export.materialize import materialize
    from .export.materialized_io import _check_out, save_materialized

    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out(out, args.overwrite)  # before the minutes of benchmarking, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    model, example, base, recipe = _load_run_model(Path(args.path))
    result = materialize(model, kernel=args.kernel, dtype=args.dtype, batch_sizes=args.batch_sizes,
                         example_inputs=example, min_speedup=args.min_speedup, strict=args.strict)
    print(result.table())
    if out is not None:
        save_materialized(result.model, out, decisions=result.layers, base_model=base, recipe=recipe, overwrite=args.overwrite)
        print(f"\nwrote {out}/ (model.safetensors + materialized.json); load it with "
              f"sparseforge.export.load_materialized({str(out)!r})")
    return 0


def _cmd_kernels(args: argparse.Namespace) -> int:
    from .kernels import cpu_sparse

    if args.kernels_command == "build":
        mod = cpu_sparse.build_kernel(force=args.force)
        if mod is None:
            print(f"sparseforge: error: {cpu_sparse.kernel_unavailable_reason()}", file=sys.stderr)
            return 1
        print(f"built {mod.__file__}\ncache key {cpu_sparse.cache_key()}")
        return 0
    info = cpu_sparse.kernel_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    comps = info["components"]
    rows = [("status", info["status"]),
            ("fallback", info["fallback_reason"] or "none (materialized layers may use the custom kernels)"),
            ("library", info["library"] or "-"),
            ("cache key", info["key"]),
            ("build folder", info["build_dir"]),
            ("cpu features", " ".join(comps["cpu_features"]) or "-"),
            ("torch cpu capability", comps["torch_cpu_capability"] or "-"),
            ("compiler", comps["compiler"] or "not found"),
            ("torch", f"{comps['torch']} (cxx11 abi {comps['cxx11_abi']}), python {comps['python']}"),
            ("flags", " ".join(comps["cflags"])),
            ("other builds", " ".join(b for b in info["cached_builds"] if not info["build_dir"].endswith(b)) or "-")]
    print(text_table(None, rows))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``sparseforge: error: ...`` and exit status 2, no usage dump."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        self.exit(2, f"sparseforge: error: {self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from .demo import DEFAULT_DEMO_METHODS, METHOD_PRESETS

    p = _Parser(prog="sparseforge", description="Make neural networks sparse and keep them accurate.")
    p.add_argument("--version", action="version", version=f"sparseforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small model dense and sparse (90 %%) and print a comparison table")
    d.add_argument("--epochs", type=int, default=5, help="epochs per method (default 5)")
    d.add_argument("--sparsity", type=float, default=0.9, help="target sparsity, fraction of zeros (default 0.9)")
    d.add_argument("--methods", nargs="+", default=None,
                   help=f"presets to compare, of {' '.join(METHOD_PRESETS)} ('-sinit': with the sparse "
                        f"initialisation); default: {' '.join(DEFAULT_DEMO_METHODS)}")
    d.add_argument("--dataset", default="auto", help="auto (Fashion-MNIST if installed, else MNIST-1D), fashion-mnist or mnist1d")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="run a YAML recipe into a run folder; resumes if the folder has a checkpoint",
                       description="Run a YAML recipe into a run folder; resumes if the folder has a checkpoint. "
                                   "Launched by torchrun (torchrun --nproc_per_node P -m sparseforge train RECIPE), "
                                   "it trains with DistributedDataParallel on P processes, each taking 1/P of every "
                                   "batch; process 0 writes the run folder.")
    t.add_argument("recipe", help="path to a YAML recipe (see recipes/ for one per method)")
    t.add_argument("--run-dir", help="run folder (default runs/<recipe name>)")
    t.add_argument("--restart", action="store_true",
                   help="delete the run's files first instead of resuming (only in a folder that holds a sparseforge run)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (checkpointed; run again to resume)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("report", help="per-layer sparsity report of a run folder, training checkpoint or state_dict file")
    r.add_argument("path")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.set_defaults(func=_cmd_report)

    b = sub.add_parser("bench", help="run a benchmark suite from benchmarks/ (sparseforge bench --list)")
    b.add_argument("suite", nargs="?", help="suite name, e.g. fmnist or overhead")
    b.add_argument("--list", action="store_true", help="list suites")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the suite (try SUITE --help)")
    b.set_defaults(func=_cmd_bench)

    z = sub.add_parser("materialize", help="swap the sparse layers of a run for real sparse CPU kernels "
                                           "where a micro-benchmark shows they are faster; prints per-layer decisions")
    z.add_argument("path", help="run folder or its checkpoint.pt")
    z.add_argument("--out", help="folder to write the materialized model to: model.safetensors (the tensors) and "
                                 "materialized.json (layers, kernels, decisions, recipe); load it with "
                                 "sparseforge.export.load_materialized(FOLDER). Must not exist or be empty")
    z.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file or earlier materialized-model folder")
    z.add_argument("--kernel", default="auto", choices=["auto", "custom", "custom-bsr", "torch-csr", "torch-bsr", "dense"],
                   help="auto = benchmark per layer (default); otherwise force this kernel where it can run")
    z.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="activation dtype (default: the weights')")
    z.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64],
                   help="batch sizes to benchmark; a layer converts only if faster at all of them (default 1 64)")
    z.add_argument("--min-speedup", type=float, default=1.0, help="required worst-case speedup (default 1.0)")
    z.add_argument("--threads", type=int, default=None, help="torch threads for the benchmark (default: torch's)")
    z.add_argument("--strict", action="store_true", help="error if a sparse layer cannot be converted")
    z.set_defaults(func=_cmd_materialize)

    k = sub.add_parser("kernels", help="the C++ sparse CPU kernels: build ahead of time, or show what is loaded",
                       description="sparseforge's C++ sparse kernels are built for this CPU on first use into "
                                   "$SPARSEFORGE_CACHE/kernels (default ~/.cache/sparseforge/kernels), one folder per "
                                   "CPU features + compiler + torch version + source.")
    ksub = k.add_subparsers(dest="kernels_command", required=True)
    kb = ksub.add_parser("build", help="build (or find) the kernel for this machine now")
    kb.add_argument("--force", action="store_true", help="delete this machine's build folder and compile again")
    ki = ksub.add_parser("info", help="what is loaded, the cache key and folder, and why a fallback happens")
    ki.add_argument("--json", action="store_true", help="print JSON instead of a table")
    k.set_defaults(func=_cmd_kernels)

    m = sub.add_parser("methods", help="list methods and their parameters")
    m.set_defaults(func=_cmd_methods)

    da = sub.add_parser("data", help="fetch the offline data sets and corpora (the only command that downloads)",
                        description="Fetch the Debian packages of sparseforge's offline data once; library calls "
                                    "never download. austen: Jane Austen's novels (no root needed); fashion-mnist, "
                                    "bible: apt-get install (root).")
    dsub = da.add_subparsers(dest="data_command", required=True)
    df = dsub.add_parser("fetch", help="fetch one or more of: austen, fashion-mnist, bible, all")
    df.add_argument("names", nargs="+", choices=["austen", "fashion-mnist", "bible", "all"], metavar="NAME",
                    help="austen, fashion-mnist, bible or all")
    df.add_argument("--root", default=None, help="folder for the Austen corpus (default ~/.cache/sparseforge/janeaustenr "
                                                 "or $SPARSEFORGE_DATA/janeaustenr)")
    df.set_defaults(func=_cmd_data_fetch)
    ds = dsub.add_parser("status", help="say which data sets are present (fetches nothing)")
    ds.set_defaults(func=_cmd_data_status)

    from .commands.prune import add_prune_parser

    add_prune_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparseforge`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SparseforgeError as e:
        print(f"sparseforge: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder: the system's reason, in one line
        print(f"sparseforge: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
