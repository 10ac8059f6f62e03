"""Command-line subcommands that have grown beyond a few lines of :mod:`sparseforge.cli`.

Each module adds its parser to ``sparseforge``'s subparsers and runs the command; it sits at the
top of the layering, beside :mod:`sparseforge.cli`, so it may use any part of the library.

* :mod:`.prune` -- ``sparseforge prune``: one-shot pruning of a saved model with calibration data.
"""
