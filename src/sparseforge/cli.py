"""The ``sparseforge`` command line.

Commands::

    sparseforge demo                 train dense and sparse models at 90 % and print a table
    sparseforge train RECIPE.yaml    run a recipe into a run folder (resumes if interrupted)
    sparseforge report PATH          per-layer sparsity report of a run folder or checkpoint
    sparseforge bench SUITE          run a benchmark suite from benchmarks/ (see --list)
    sparseforge methods              list the methods and their parameters
    sparseforge prune MODEL --out D  one-shot prune (magnitude, Wanda, SparseGPT, DSnoT) with calibration data
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import SparseforgeError


def _cmd_train(args: argparse.Namespace) -> int:
    from .recipes import load_recipe
    from .train import Trainer

    recipe = load_recipe(args.recipe)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / recipe.name
    if args.restart and run_dir.exists():
        shutil.rmtree(run_dir)
    trainer = Trainer(recipe, run_dir, progress=not args.no_progress, max_steps=args.max_steps,
                      log=lambda s: print(f"[sparseforge] {s}", file=sys.stderr))
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        return 130
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


def _cmd_methods(args: argparse.Namespace) -> int:
    from .methods import METHODS
    from .recipes import method_parameters

    for name, cls in sorted(METHODS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:8s} {doc}")
        print(f"{'':8s} parameters: {', '.join(sorted(method_parameters(name)))}")
    print("snip     StaticSparse with score='snip' (SNIP, Lee et al. 2019)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(epochs=args.epochs, sparsity=args.sparsity, methods=args.methods, seed=args.seed,
             dataset=args.dataset, progress=not args.no_progress)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import list_suites, run_suite

    if args.list or not args.suite:
        for name, doc in list_suites().items():
            print(f"{name:12s} {doc}")
        return 0
    run_suite(args.suite, args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(prog="sparseforge", description="Make neural networks sparse and keep them accurate.")
    p.add_argument("--version", action="version", version=f"sparseforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train a small model dense and sparse (90 %%) and print a comparison table")
    d.add_argument("--epochs", type=int, default=5, help="epochs per method (default 5)")
    d.add_argument("--sparsity", type=float, default=0.9, help="target sparsity, fraction of zeros (default 0.9)")
    d.add_argument("--methods", nargs="+", default=None,
                   help="methods to compare (default: dense static-uniform static-erk snip gmp set rigl)")
    d.add_argument("--dataset", default="auto", help="auto (Fashion-MNIST if installed, else MNIST-1D), fashion-mnist or mnist1d")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="run a YAML recipe into a run folder; resumes if the folder has a checkpoint")
    t.add_argument("recipe", help="path to a YAML recipe (see recipes/ for one per method)")
    t.add_argument("--run-dir", help="run folder (default runs/<recipe name>)")
    t.add_argument("--restart", action="store_true", help="delete the run folder first instead of resuming")
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

    m = sub.add_parser("methods", help="list methods and their parameters")
    m.set_defaults(func=_cmd_methods)

    from .oneshot.command import add_prune_parser

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


if __name__ == "__main__":
    sys.exit(main())
