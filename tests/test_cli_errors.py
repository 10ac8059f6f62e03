"""Every bad input a user can give the CLI is one line on stderr, ``sparseforge: error: ...``, and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sparseforge.cli import main
from sparseforge.fileio import atomic_save, atomic_save_safetensors
from sparseforge.models import TinyGPT
from sparseforge.oneshot.io import save_model_folder

CHARS = sorted(set("abcdefgh ."))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli-errors")
    f: dict[str, Path] = {}
    good = {"name": "e", "seed": 0, "epochs": 1, "model": {"name": "mlp1d"},
            "data": {"name": "mnist1d", "batch_size": 64, "n_train": 128, "n_test": 64},
            "method": {"name": "static", "sparsity": 0.5}, "optimizer": {"name": "sgd", "lr": 0.05}}

    def recipe(name: str, **change) -> Path:
        r = yaml.safe_load(yaml.safe_dump(good))
        for k, v in change.items():
            r[k] = v
        p = d / f"{name}.yaml"
        p.write_text(yaml.safe_dump(r))
        return p

    f["good"] = recipe("good")
    f["sparsity"] = recipe("sparsity", method={"name": "static", "sparsity": 1.5})
    f["method"] = recipe("method", method={"name": "bogus", "sparsity": 0.5})
    f["key"] = recipe("key", epochz=3)
    f["model"] = recipe("model", model={"name": "resnet9000"})
    f["lr"] = recipe("lr", optimizer={"name": "sgd", "lr": -1})
    (d / "syntax.yaml").write_text("method: {name: static, sparsity: [0.5\n")
    f["syntax"] = d / "syntax.yaml"
    (d / "list.yaml").write_text("- 1\n- 2\n")
    f["list"] = d / "list.yaml"
    f["empty_dir"] = d / "empty"
    f["empty_dir"].mkdir()
    (d / "bad-report.json").write_text('{"layers": [')
    f["bad_json"] = d / "bad-report.json"
    atomic_save_safetensors({"w": torch.ones(100)}, d / "w.safetensors")
    (d / "trunc.safetensors").write_bytes((d / "w.safetensors").read_bytes()[:60])
    f["trunc_st"] = d / "trunc.safetensors"
    atomic_save({"w": torch.ones(3)}, d / "plain.pt")
    f["plain_pt"] = d / "plain.pt"
    (d / "trunc.pt").write_bytes((d / "plain.pt").read_bytes()[:100])
    f["trunc_pt"] = d / "trunc.pt"
    kwargs = dict(vocab_size=len(CHARS) + 1, block_size=16, d_model=16, n_layer=1, n_head=2)
    f["gpt"] = save_model_folder(TinyGPT(**kwargs), {"model_name": "tiny-gpt", "model": kwargs, "chars": CHARS}, d / "gpt")
    (d / "calib.txt").write_text("abc def gh. " * 200)
    f["calib"] = d / "calib.txt"
    f["full_out"] = d / "full-out"
    f["full_out"].mkdir()
    (f["full_out"] / "x").write_text("x")
    return f


CASES = {
    # command line
    "no command": lambda f: [],
    "unknown command": lambda f: ["bogus"],
    "unknown option": lambda f: ["train", str(f["good"]), "--bogus"],
    "max-steps not a number": lambda f: ["train", str(f["good"]), "--max-steps", "abc"],
    # train
    "recipe missing": lambda f: ["train", str(f["good"].parent / "nope.yaml")],
    "recipe YAML syntax": lambda f: ["train", str(f["syntax"])],
    "recipe not a mapping": lambda f: ["train", str(f["list"])],
    "recipe sparsity 1.5": lambda f: ["train", str(f["sparsity"]), "--run-dir", str(f["empty_dir"] / "r1")],
    "recipe unknown method": lambda f: ["train", str(f["method"]), "--run-dir", str(f["empty_dir"] / "r2")],
    "recipe unknown key": lambda f: ["train", str(f["key"]), "--run-dir", str(f["empty_dir"] / "r3")],
    "recipe unknown model": lambda f: ["train", str(f["model"]), "--run-dir", str(f["empty_dir"] / "r4")],
    "recipe negative lr": lambda f: ["train", str(f["lr"]), "--run-dir", str(f["empty_dir"] / "r5")],
    "max-steps 0": lambda f: ["train", str(f["good"]), "--run-dir", str(f["empty_dir"] / "r6"), "--max-steps", "0"],
    "restart of a non-run folder": lambda f: ["train", str(f["good"]), "--run-dir", str(f["full_out"]), "--restart"],
    # report
    "report missing path": lambda f: ["report", str(f["empty_dir"] / "nope")],
    "report folder without a run": lambda f: ["report", str(f["empty_dir"])],
    "report corrupt report.json": lambda f: ["report", str(f["bad_json"])],
    "report truncated safetensors": lambda f: ["report", str(f["trunc_st"])],
    "report truncated checkpoint": lambda f: ["report", str(f["trunc_pt"])],
    # materialize
    "materialize missing path": lambda f: ["materialize", str(f["empty_dir"] / "nope")],
    "materialize a plain state_dict": lambda f: ["materialize", str(f["plain_pt"])],
    "materialize truncated checkpoint": lambda f: ["materialize", str(f["trunc_pt"])],
    # prune
    "prune unknown model": lambda f: ["prune", "nosuchmodel", "--out", str(f["empty_dir"] / "p1")],
    "prune unknown method": lambda f: ["prune", str(f["gpt"]), "--method", "bogus", "--out", str(f["empty_dir"] / "p2")],
    "prune sparsity 1.5": lambda f: ["prune", str(f["gpt"]), "--sparsity", "1.5", "--out", str(f["empty_dir"] / "p3")],
    "prune sparsity text": lambda f: ["prune", str(f["gpt"]), "--sparsity", "half", "--out", str(f["empty_dir"] / "p4")],
    "prune N:M not dividing": lambda f: ["prune", str(f["gpt"]), "--sparsity", "3:7", "--calibration", "none",
                                         "--method", "magnitude", "--out", str(f["empty_dir"] / "p5")],
    "prune seqlen beyond context": lambda f: ["prune", str(f["gpt"]), "--calibration", str(f["calib"]),
                                              "--seqlen", "1000", "--out", str(f["empty_dir"] / "p6")],
    "prune calibration missing": lambda f: ["prune", str(f["gpt"]), "--calibration",
                                            str(f["empty_dir"] / "nope.pt"), "--out", str(f["empty_dir"] / "p7")],
    "prune nsamples 0": lambda f: ["prune", str(f["gpt"]), "--calibration", str(f["calib"]), "--nsamples", "0",
                                   "--out", str(f["empty_dir"] / "p8")],
    "prune non-empty output": lambda f: ["prune", str(f["gpt"]), "--calibration", "none", "--method", "magnitude",
                                         "--out", str(f["full_out"])],
    # bench, demo
    "bench unknown suite": lambda f: ["bench", "bogus"],
    "demo sparsity 1.5": lambda f: ["demo", "--sparsity", "1.5"],
    "demo unknown method": lambda f: ["demo", "--methods", "bogus"],
    "demo epochs 0": lambda f: ["demo", "--epochs", "0"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_and_status_2(case: str, files, capsys) -> None:
    argv = CASES[case](files)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, (code, out.err)
    assert len(lines) == 1 and lines[0].startswith("sparseforge: error: "), out.err
    assert "Traceback" not in out.err and len(lines[0]) < 600
