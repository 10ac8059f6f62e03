"""The documentation runs: README code blocks execute, its calls bind, and every documented command parses.

Stale examples are one of the first things users of pruning tools hit (a renamed function, a
removed flag, a wrong signature in the README). These tests keep the README and the committed
benchmark commands true to the code:

* every ```python block of the README runs on a tiny model (placeholders such as ``model = ...``
  are filled by the test's namespace; the FSDP2 block runs on a one-process gloo group in a
  subprocess; the one block that trains for tens of minutes only has its imports executed);
* every inline ``sf.<function>(...)`` call in the README binds to the function's signature;
* every ``sparseforge ...`` command in the README's shell blocks and inline code, in the
  benchmark suites' usage lines, and in the ``command:`` line of each committed result parses
  with today's argument parsers (for ``bench``, the suite's own parser), without running.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseforge as sf
from sparseforge.bench import benchmarks_dir, list_suites
from sparseforge.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def fenced_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every fenced block of ``lang`` in a markdown text."""
    out, code, start = [], None, 0
    for i, line in enumerate(text.splitlines(), 1):
        if code is None and line.strip() == f"```{lang}":
            code, start = [], i + 1
        elif code is not None and line.strip() == "```":
            out.append((start, "\n".join(code)))
            code = None
        elif code is not None:
            code.append(line)
    return out


class Net(nn.Module):
    """A tiny MLP with the attribute names the README's snippets use (``blocks``, ``classifier``)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 32)])
        self.classifier = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.classifier(x)


def _namespace() -> dict:
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(64, 32), torch.randint(0, 8, (64,))
    return {"model": model, "x": x, "y": y, "example_inputs": x[:8], "steps": 4,
            "loader": [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)], "loss_fn": F.cross_entropy,
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), "make_model": Net}


def _fill_placeholders(code: str) -> str:
    # ``name = ...`` stands for "your own object": the namespace provides it
    return "\n".join("" if re.fullmatch(r"\s*\w+\s*=\s*\.\.\.\s*(#.*)?", line) else line for line in code.splitlines())


def _imports_only(code: str) -> str:
    tree = ast.parse(code)
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))


FSDP2_PRELUDE = textwrap.dedent("""
    import os, torch, torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.fsdp import fully_shard
    from sparseforge.methods import RigL
    sys.path.insert(0, {tests!r})
    from test_docs import _namespace
    os.environ["MASTER_ADDR"] = "127.0.0.1"  # MASTER_PORT: a free port chosen by the test
    dist.init_process_group("gloo", rank=0, world_size=1)
    globals().update(_namespace())
""")
FSDP2_CHECK = textwrap.dedent("""
    for xb, yb in loader:
        optimizer.zero_grad(); F.cross_entropy(model(xb), yb).backward(); optimizer.step()
    kept = sum(int(l.canonical(l.mask).sum()) for l in method.layers)
    total = sum(l.weight.numel() for l in method.layers)
    assert abs(1 - kept / total - 0.9) < 0.01, kept / total
    dist.destroy_process_group()
    print("fsdp2 block ok")
""")


def _readme_python_blocks() -> list[tuple[int, str]]:
    return fenced_blocks(README.read_text(), "python")


@pytest.mark.parametrize("line,code", [pytest.param(l, c, id=f"README.md:{l}") for l, c in _readme_python_blocks()])
def test_readme_python_block_runs(line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each README Python block runs as written (fed a tiny model and data for its placeholders)."""
    monkeypatch.chdir(tmp_path)  # blocks that save write here
    monkeypatch.setenv("SPARSEFORGE_NO_CPP", "1")  # the kernels' build is tested elsewhere
    code = _fill_placeholders(code)
    if "austen_gpt()" in code:
        # the real one trains for 20-50 minutes on first use: run the block on a tiny one
        corpus = tmp_path / "words.txt"
        corpus.write_text("\n\n".join(" ".join(["the cat sat on a mat and she was not there"] * 40) for _ in range(3)))
        code = code.replace("austen_gpt()", f"austen_gpt(cache_dir={str(tmp_path)!r}, corpus='text:{corpus}', "
                                           "d_model=16, n_layer=1, n_head=2, block_size=16, steps=5, batch_size=4)")
    if "fully_shard" in code:
        script = "import sys\n" + FSDP2_PRELUDE.format(tests=str(Path(__file__).parent)) + code + "\n" + FSDP2_CHECK
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "MASTER_PORT": str(port)})
        assert r.returncode == 0 and "fsdp2 block ok" in r.stdout, f"README.md:{line}\n{r.stdout}\n{r.stderr[-3000:]}"
        return
    ns = _namespace()
    exec(compile(code, f"README.md:{line}", "exec"), ns)
    if "method.finalize()" in code:  # the training-loop block: a plain model with exact zeros
        weights = [m.weight for m in ns["model"].modules() if isinstance(m, nn.Linear)]
        assert not any(n.endswith("_mask") for n, _ in ns["model"].named_buffers())
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert abs(zeros - 0.9) < 0.01


def _inline_calls(text: str) -> list[str]:
    return re.findall(r"`(sf\.\w+\([^`]*\))`", text)


def test_readme_inline_calls_bind_to_the_signatures() -> None:
    """``sf.f(a, b, k=v)`` written in the README's prose names real functions and parameters."""
    calls = _inline_calls(README.read_text())
    assert calls, "the README has no inline sf.* calls: the pattern above no longer matches its style"
    for text in calls:
        call = ast.parse(text, mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
        fn = getattr(sf, call.func.attr, None)
        assert fn is not None, f"README: sparseforge has no {call.func.attr!r} ({text})"
        try:
            inspect.signature(fn).bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
        except TypeError as e:
            pytest.fail(f"README: {text} does not match {call.func.attr}{inspect.signature(fn)}: {e}")


# ----------------------------------------------------------------------------- commands


def _command_lines(text: str) -> list[str]:
    """``sparseforge ...`` commands in shell blocks and inline code of a markdown text."""
    out = []
    for _, block in fenced_blocks(text, "bash"):
        for cmd in block.replace("\\\n", " ").splitlines():
            out.append(cmd)
    out += re.findall(r"`((?:sparseforge|torchrun) [^`]*)`", text)
    return [c for c in (_strip(c) for c in out) if c.startswith("sparseforge ")]


def _strip(cmd: str) -> str:
    cmd = re.sub(r"\s#.*$", "", cmd.strip())
    # `torchrun ... -m sparseforge train X` runs the same parser
    cmd = re.sub(r"^torchrun .*?-m sparseforge ", "sparseforge ", cmd)
    # optional parts `[--flag V]` are documented as usable: check them too; `...` continues a list
    cmd = cmd.replace("[", "").replace("]", "")
    # `...` continues a list; upper-case metavariables stand for a value of their kind
    return " ".join(METAVARS.get(t, t) for t in cmd.split() if t != "...")


METAVARS = {"N": "1", "DIR": "runs/x", "PATH": "runs/x", "RECIPE": "recipes/rigl.yaml"}


class _Parsed(Exception):
    pass


def _parse_only(args: list[str]) -> None:
    """Parse ``sparseforge`` arguments (and a bench suite's own) without running anything."""
    ns = build_parser().parse_args(args)
    if ns.command != "bench" or ns.list or not ns.suite:
        return
    assert ns.suite in list_suites(), f"unknown suite {ns.suite!r}"
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"sparseforge_bench_{ns.suite}", benchmarks_dir() / f"{ns.suite}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        original(self, *a, **k)
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        mod.main(list(ns.rest))
    except _Parsed:
        return
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"suite {ns.suite} did not parse its arguments with argparse")


def _documented_commands() -> list[tuple[str, str]]:
    cmds = [("README.md", c) for c in _command_lines(README.read_text())]
    for md in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        m = re.search(r"^- command: `([^`]*)`", md.read_text(), re.M)
        assert m, f"{md.name} has no '- command:' line"
        cmds.append((f"benchmarks/results/{md.name}", _strip(m.group(1))))
    for py in sorted(benchmarks_dir().glob("*.py")):
        doc = ast.get_docstring(ast.parse(py.read_text())) or ""
        cmds += [(f"benchmarks/{py.name}", _strip(line)) for line in doc.splitlines()
                 if line.strip().startswith("sparseforge bench ")]  # a suite's usage lines
    return cmds


@pytest.mark.parametrize("where,cmd", _documented_commands(), ids=lambda v: v)
def test_documented_command_parses(where: str, cmd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command written in the README, a suite's usage or a committed result is valid today."""
    monkeypatch.chdir(ROOT)  # recipe paths in the README are relative to the repository
    args = shlex.split(cmd)[1:]
    if len(args) == 1 and not args[0].startswith("-"):  # prose naming a subcommand, e.g. `sparseforge prune`
        subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        assert args[0] in subcommands.choices, f"{where}: no subcommand {args[0]!r}"
        return
    try:
        _parse_only(args)
    except SystemExit as e:
        if e.code not in (0, None):
            pytest.fail(f"{where}: `{cmd}` is rejected by the argument parser (exit {e.code})")
    if args and args[0] == "train":
        assert Path(args[1]).is_file(), f"{where}: recipe {args[1]} does not exist"


def test_command_extraction_sees_every_form() -> None:
    """The extraction handles comments, optional parts, torchrun and line continuations."""
    text = textwrap.dedent("""\
        ```bash
        sparseforge demo [--epochs 5] [--methods dense gmp ...]   # comment
        torchrun --nproc_per_node 2 -m sparseforge train recipes/rigl.yaml [--max-steps N]  # DDP
        sparseforge prune m --method wanda \\
            --out x
        echo not a command
        ```
        Run `sparseforge bench fmnist --jobs 2` now.
        """)
    assert _command_lines(text) == ["sparseforge demo --epochs 5 --methods dense gmp",
                                    "sparseforge train recipes/rigl.yaml --max-steps 1",
                                    "sparseforge prune m --method wanda --out x",
                                    "sparseforge bench fmnist --jobs 2"]
    with pytest.raises(SystemExit):
        _parse_only(["demo", "--epoch-count", "5"])
    with pytest.raises(AssertionError, match="unknown suite"):
        _parse_only(["bench", "no_such_suite"])
    with pytest.raises(SystemExit):
        _parse_only(["bench", "fmnist", "--no-such-flag"])


def _public_objects() -> list[tuple[str, object]]:
    import importlib
    import pkgutil

    out = []
    for info in pkgutil.walk_packages(sf.__path__, "sparseforge."):
        if info.name.endswith("__main__"):  # importing it runs the command line
            continue
        mod = importlib.import_module(info.name)
        out.append((info.name, mod))
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj):
                out.append((f"{info.name}.{name}", obj))
            elif inspect.isclass(obj):
                out.append((f"{info.name}.{name}", obj))
                for mname, member in vars(obj).items():
                    f = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if not mname.startswith("_") and inspect.isfunction(f):
                        out.append((f"{info.name}.{name}.{mname}", getattr(obj, mname) if not isinstance(member, property) else f))
    return out


def test_every_public_module_class_and_function_has_a_docstring() -> None:
    """The house rule, checked: no public module, class, function or method without a docstring."""
    objects = _public_objects()
    assert len(objects) > 300  # the walk really covers the package
    missing = [name for name, obj in objects if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, f"public objects without a docstring: {missing}"
