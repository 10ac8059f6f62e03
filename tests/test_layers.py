"""The layer contract of docs/ARCHITECTURE.md, checked with import-linter (``[tool.importlinter]`` in pyproject).

The first test runs ``lint-imports`` on the package as it is; the others plant one forbidden import
into a copy of the package and check that the same contract reports it, so a contract that
checks nothing (a renamed package, an empty layer list) cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
CONFIG = ROOT / "pyproject.toml"

# runs the console script's entry point with this interpreter (the script may not be on PATH)
_LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    try:
        import importlinter  # noqa: F401
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.fail("import-linter is not installed: pip install -e '.[dev]' (scripts/test.sh does)")
    # the package under test first on the path, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", _LINT, str(CONFIG), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layer_contract_is_kept(tmp_path: Path) -> None:
    res = _lint(SRC, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def _planted_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(SRC / "sparseforge", src / "sparseforge", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return src


@pytest.mark.parametrize(
    "module, planted, expected",
    [
        # upward, inside a function (lazy imports count too): core must not know the runners
        ("core/scores.py", "def _planted():\n    from ..train import Trainer\n",
         "sparseforge.core is not allowed to import sparseforge.train"),
        # sideways between independent siblings of one layer
        ("methods/static.py", "from ..oneshot import prune_oneshot\n",
         "sparseforge.methods is not allowed to import sparseforge.oneshot"),
        # upward from the algorithms into the measurements above them
        ("oneshot/stats.py", "from ..export import materialize\n",
         "sparseforge.oneshot is not allowed to import sparseforge.export"),
    ],
)
def test_contract_catches_a_planted_import(tmp_path: Path, module: str, planted: str, expected: str) -> None:
    src = _planted_copy(tmp_path)
    target = src / "sparseforge" / module
    target.write_text(target.read_text() + "\n\n" + planted)
    res = _lint(src, tmp_path)
    assert res.returncode != 0
    assert expected in res.stdout, res.stdout + res.stderr


def test_contract_requires_every_module_in_a_layer(tmp_path: Path) -> None:
    src = _planted_copy(tmp_path)
    (src / "sparseforge" / "unplaced.py").write_text('"""A module nobody gave a layer."""\n')
    res = _lint(src, tmp_path)
    assert res.returncode != 0
    assert "unplaced" in res.stdout, res.stdout + res.stderr
