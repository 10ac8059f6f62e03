"""sparseforge.fileio: atomic writes survive a killed writer and a full disk; every corrupt file is one clear error."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sparseforge.errors import CheckpointError
from sparseforge.fileio import (atomic_save, atomic_save_safetensors, atomic_write_text, load_safetensors, load_torch,
                                read_checkpoint, read_json)

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "ck.pt"
    atomic_save({"v": torch.tensor([1.0])}, p)

    class Boom:
        def __reduce__(self):  # noqa: ANN204
            raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom"):
        atomic_save({"v": torch.tensor([2.0]), "x": Boom()}, p)
    assert torch.equal(load_torch(p)["v"], torch.tensor([1.0]))
    assert _leftovers(tmp_path) == []


def test_text_and_safetensors_round_trip(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.json", json.dumps({"k": [1, 2]}))
    assert read_json(tmp_path / "a.json") == {"k": [1, 2]}
    atomic_save_safetensors({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "w.safetensors", {"m": "1"})
    tensors, meta = load_safetensors(tmp_path / "w.safetensors", with_metadata=True)
    assert torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3)) and meta == {"m": "1"}
    assert _leftovers(tmp_path) == []


_WRITER = textwrap.dedent("""
    import sys, torch
    from sparseforge.fileio import atomic_save
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        atomic_save({"version": i, "w": torch.full((1_000_000,), float(i))}, sys.argv[1])
""")


def test_a_writer_killed_at_random_instants_leaves_a_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "ck.pt"
    atomic_save({"version": 0, "w": torch.zeros(1_000_000)}, p)
    env = {**os.environ, "PYTHONPATH": SRC}
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(p)], stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))  # a 4 MB write takes a few ms: kills land before, during and after
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ck = load_torch(p)  # whole: one of the versions, every value of it
        assert torch.equal(ck["w"], torch.full((1_000_000,), float(ck["version"])))


_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys, torch
    from sparseforge.fileio import atomic_save
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    try:
        atomic_save({"version": 2, "w": torch.ones(1_000_000)}, sys.argv[1])
    except OSError as e:
        print("OSError", e.errno)
""")


def test_a_file_size_quota_during_a_save_keeps_the_previous_file(tmp_path: Path) -> None:
    p = tmp_path / "ck.pt"
    atomic_save({"version": 1, "w": torch.zeros(10)}, p)
    before = p.read_bytes()
    r = subprocess.run([sys.executable, "-c", _FULL_DISK, str(p)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert r.stdout.startswith("OSError"), r.stderr
    assert p.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_full_disk_during_training_checkpoints_keeps_the_last_checkpoint(small_tmpfs: Path) -> None:
    from sparseforge.data import load_dataset
    from sparseforge.recipes import Recipe
    from sparseforge.train import Trainer

    data = load_dataset("mnist1d", n_train=256, n_test=64)

    def recipe() -> Recipe:
        return Recipe(name="disk", seed=0, epochs=4, model={"name": "mlp1d"},
                      data={"name": "mnist1d", "batch_size": 64, "n_train": 256, "n_test": 64},
                      method={"name": "rigl", "sparsity": 0.9, "update_interval": 2},
                      optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, checkpoint_every_steps=2)

    run = small_tmpfs / "run"
    Trainer(recipe(), run, progress=False, dataset=data, max_steps=6).fit()
    saved = (run / "checkpoint.pt").read_bytes()
    # fill the file system but for a few kilobytes: the next checkpoint cannot be written whole
    free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
    (small_tmpfs / "filler").write_bytes(b"\0" * max(0, free - 8192))
    with pytest.raises(OSError):
        Trainer(recipe(), run, progress=False, dataset=data).fit()
    assert (run / "checkpoint.pt").read_bytes() == saved
    assert _leftovers(run) == []
    # room again: the run resumes from the surviving checkpoint and finishes
    (small_tmpfs / "filler").unlink()
    t = Trainer(recipe(), run, progress=False, dataset=data)
    t.fit()
    assert t.step == t.total_steps


# ------------------------------------------------------------------------------- bad files
def _variants(good: bytes) -> dict[str, bytes]:
    n = len(good)
    flipped = bytearray(good)
    for i in range(0, min(n, 64)):
        flipped[i] ^= 0xFF
    return {"empty": b"", "truncated": good[: n // 2], "header-flipped": bytes(flipped), "text": b"hello\n"}


@pytest.mark.parametrize("kind", ["empty", "truncated", "header-flipped", "text"])
def test_corrupt_torch_files_are_one_clear_error(tmp_path: Path, kind: str) -> None:
    good = tmp_path / "good.pt"
    atomic_save({"format": "f", "w": torch.ones(100)}, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(_variants(good.read_bytes())[kind])
    with pytest.raises(CheckpointError, match=r"^run: cannot read training checkpoint '.*bad\.pt'") as e:
        read_checkpoint(bad, "f", "training checkpoint", param="run: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["empty", "truncated", "header-flipped", "text"])
def test_corrupt_safetensors_files_are_one_clear_error(tmp_path: Path, kind: str) -> None:
    good = tmp_path / "good.safetensors"
    atomic_save_safetensors({"w": torch.ones(100)}, good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_variants(good.read_bytes())[kind])
    with pytest.raises(CheckpointError, match=r"cannot read weights '.*bad\.safetensors'.*not a safetensors file") as e:
        load_safetensors(bad, what="weights")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["", "{\"a\": [1, 2", "\xff\xfe", "not json"])
def test_corrupt_json_is_one_clear_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "r.json"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match=r"cannot read report '.*r\.json'"):
        read_json(p, what="report")


def test_missing_file_and_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file .*nope.pt.*expected a checkpoint"):
        load_torch(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_torch(tmp_path)


def test_a_checkpoint_of_another_format_is_refused(tmp_path: Path) -> None:
    atomic_save({"format": "other"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="is not a sparseforge training checkpoint"):
        read_checkpoint(tmp_path / "c.pt", "sparseforge-checkpoint-v1", "sparseforge training checkpoint")
    atomic_save([1, 2], tmp_path / "l.pt")
    with pytest.raises(CheckpointError, match="is not a sparseforge training checkpoint"):
        read_checkpoint(tmp_path / "l.pt", "sparseforge-checkpoint-v1", "sparseforge training checkpoint")


def test_resource_module_is_available() -> None:
    # the quota test above relies on RLIMIT_FSIZE (POSIX); fail loudly rather than skip elsewhere
    assert hasattr(resource, "RLIMIT_FSIZE")


# ------------------------------------------------------------------------------- folders
def _write_version(folder: Path, v: int, n: int = 4) -> None:
    for i in range(n):
        (folder / f"part{i}.bin").write_bytes(bytes([v % 256]) * 10_000)


def _version_of(folder: Path) -> set[int]:
    return {b for p in folder.iterdir() for b in set(p.read_bytes())}


@pytest.mark.parametrize("exchange", [True, False])
def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path: Path, monkeypatch, exchange: bool) -> None:
    from sparseforge import fileio

    if not exchange:  # the two-rename fallback for systems without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    with fileio.atomic_dir(out) as tmp:
        _write_version(tmp, 1)
    assert _version_of(out) == {1} and len(list(out.iterdir())) == 4
    with pytest.raises(RuntimeError, match="disk"):
        with fileio.atomic_dir(out) as tmp:
            _write_version(tmp, 2, n=2)
            raise RuntimeError("disk gone")
    assert _version_of(out) == {1} and len(list(out.iterdir())) == 4  # the old folder, untouched
    with fileio.atomic_dir(out) as tmp:
        _write_version(tmp, 3, n=1)
    assert _version_of(out) == {3} and [p.name for p in out.iterdir()] == ["part0.bin"]  # no old file mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folder left
    (tmp_path / "f").write_text("a file")
    with fileio.atomic_dir(tmp_path / "f") as tmp:  # a file is replaced by the folder
        _write_version(tmp, 4, n=1)
    assert (tmp_path / "f").is_dir() and oct((tmp_path / "f").stat().st_mode & 0o777) == "0o755"


_DIR_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sparseforge.fileio import atomic_dir
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        with atomic_dir(sys.argv[1]) as tmp:
            for k in range(1 + i % 5):
                (Path(tmp) / f"part{k}.bin").write_bytes(bytes([i % 256]) * 300_000)
""")


def test_a_folder_writer_killed_at_random_instants_leaves_the_old_folder_or_the_new_one(tmp_path: Path) -> None:
    from sparseforge.fileio import atomic_dir

    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "part0.bin").write_bytes(bytes([0]) * 300_000)
    rng = random.Random(1)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _DIR_WRITER, str(out)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": SRC})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        files = sorted(out.iterdir())
        (version,) = _version_of(out)  # one version in every file ...
        assert len(files) == (1 + version % 5 if version else 1)  # ... and all of that version's files
        assert all(p.stat().st_size == 300_000 for p in files)
