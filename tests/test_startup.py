"""A CLI that starts at once: which modules ``import sparseforge``, ``--help`` and ``methods`` pull in.

Each check runs in a fresh interpreter and inspects ``sys.modules`` (no timing: the wall times
are measured by ``benchmarks/startup.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparseforge

SRC = str(Path(sparseforge.__file__).resolve().parents[1])
#: stacks that cost seconds and that a quick command never needs
HEAVY = ("torch.distributed.tensor", "torch.distributed.fsdp", "torch._dynamo", "torch._inductor", "sympy", "transformers", "safetensors", "scipy", "matplotlib")


def _modules_after(code: str) -> set[str]:
    script = (f"import sys, json\n{code}\n"
              "sys.stdout.write('\\n@@MODULES@@' + json.dumps(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return set(json.loads(r.stdout.rsplit("@@MODULES@@", 1)[1]))


def _cli(args: list[str]) -> str:
    return f"from sparseforge.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"


@pytest.mark.parametrize("what,code", [
    ("import sparseforge", "import sparseforge"),
    ("sparseforge --help", _cli(["--help"])),
    ("sparseforge prune --help", _cli(["prune", "--help"])),
    ("sparseforge materialize --help", _cli(["materialize", "--help"])),
])
def test_import_and_help_do_not_import_torch(what: str, code: str) -> None:
    mods = _modules_after(code)
    assert "sparseforge" in mods
    assert "torch" not in mods, f"{what} imports torch"


def test_methods_command_imports_torch_but_not_its_heavy_stacks() -> None:
    mods = _modules_after(_cli(["methods"]))
    assert "torch" in mods and "sparseforge.methods" in mods  # the check sees real imports
    # what `import torch` itself loads (its version's choice) is not ours to avoid
    added = mods - _modules_after("import torch")
    heavy = sorted(m for m in added if m.split(".")[0] in HEAVY or any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert not heavy, f"`sparseforge methods` imports {heavy[:10]}"


def test_lazy_exports_keep_every_public_name() -> None:
    code = ("import sparseforge as sf\n"
            "missing = [n for n in sf.__all__ if getattr(sf, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert set(sf.__all__) <= set(dir(sf))\n"
            "from sparseforge import RigL, materialize, load_materialized, prune_oneshot\n"
            "from sparseforge.oneshot import prune_oneshot as p2, cached_austen_gpt\n"
            "assert p2 is prune_oneshot and sf.oneshot.sequential.prune_oneshot is p2\n"
            "assert sf.export.materialize is materialize and callable(sf.kernels.load_kernel)\n"
            "from sparseforge import *\n")
    _modules_after(code)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        sparseforge.no_such_name  # noqa: B018
    import sparseforge.oneshot as oneshot

    with pytest.raises(AttributeError, match="'sparseforge.oneshot' has no attribute 'nope'"):
        oneshot.nope  # noqa: B018


def test_startup_suite_quick(tmp_path: Path) -> None:
    """The suite runs (two commands, one repeat) and writes its table with the machine's vector features."""
    from sparseforge.bench import list_suites, run_suite

    assert "startup" in list_suites()
    run_suite("startup", ["--repeats", "1", "--only", "help", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "startup.json").read_text())
    assert [r["name"] for r in data["results"]] == ["import-torch", "help"]
    assert data["results"][1]["command"].endswith("--help") and "meets_target" in data["results"][1]
    assert isinstance(data["provenance"]["machine"]["cpu_features"], list)
    md = (tmp_path / "startup.md").read_text()
    assert "- command: `sparseforge bench startup --repeats 1 --only help" in md and "CPU vector features" in md
