"""The train command destroys nothing before it has validated everything, and never touches what is not a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparseforge.cli import main


def _recipe(tmp_path: Path, name: str = "a", **method) -> Path:
    r = {"name": name, "seed": 0, "epochs": 1, "model": {"name": "mlp1d"},
         "data": {"name": "mnist1d", "batch_size": 64, "n_train": 128, "n_test": 64},
         "method": {"name": "static", "sparsity": 0.5, **method}, "optimizer": {"name": "sgd", "lr": 0.05}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("sparseforge: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def run_of_a(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    assert main(["train", str(_recipe(tmp_path)), "--run-dir", str(run), "--no-progress"]) == 0
    return run


def test_a_bad_recipe_with_restart_deletes_nothing(tmp_path, run_of_a, capsys) -> None:
    before = _snapshot(run_of_a)
    bad = _recipe(tmp_path, "bad", allocation="nonsense")
    _refused(["train", str(bad), "--run-dir", str(run_of_a), "--restart", "--no-progress"], capsys, "allocation")
    assert _snapshot(run_of_a) == before


def test_another_recipe_in_a_run_folder_is_refused_and_changes_nothing(tmp_path, run_of_a, capsys) -> None:
    before = _snapshot(run_of_a)
    other = _recipe(tmp_path, "b", sparsity=0.7)
    _refused(["train", str(other), "--run-dir", str(run_of_a), "--no-progress"], capsys, "different recipe")
    assert _snapshot(run_of_a) == before


def test_restart_refuses_a_folder_that_holds_no_run(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    (folder / "result.json").write_text("{}")  # a run file name alone does not make a run
    before = _snapshot(folder)
    _refused(["train", str(_recipe(tmp_path)), "--run-dir", str(folder), "--restart", "--no-progress"], capsys,
             "holds no sparseforge run", "nothing was deleted")
    assert _snapshot(folder) == before


def test_training_into_a_folder_that_holds_no_run_is_refused(tmp_path, capsys) -> None:
    folder = tmp_path / "pruned"  # the output of `sparseforge prune`: its report.json is not a run's
    folder.mkdir()
    (folder / "report.json").write_text("{}")
    (folder / "summary.json").write_text("{}")
    before = _snapshot(folder)
    _refused(["train", str(_recipe(tmp_path)), "--run-dir", str(folder), "--no-progress"], capsys,
             "holds no sparseforge run", "report.json")
    assert _snapshot(folder) == before


def test_restart_deletes_only_the_run_files_and_says_which(tmp_path, run_of_a, capsys) -> None:
    (run_of_a / "my-notes.txt").write_text("keep me")
    capsys.readouterr()
    other = _recipe(tmp_path, "b", sparsity=0.7)
    assert main(["train", str(other), "--run-dir", str(run_of_a), "--restart", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--restart: deleted" in err and "checkpoint.pt" in err and "my-notes.txt" not in err
    assert (run_of_a / "my-notes.txt").read_text() == "keep me"
    assert yaml.safe_load((run_of_a / "recipe.yaml").read_text())["name"] == "b"


def test_a_run_file_path_is_refused(tmp_path, capsys) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    _refused(["train", str(_recipe(tmp_path)), "--run-dir", str(f), "--no-progress"], capsys, "is a file")
    assert f.read_text() == "x"
