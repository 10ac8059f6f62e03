"""``python -m sparseforge`` (and ``torchrun -m sparseforge``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
