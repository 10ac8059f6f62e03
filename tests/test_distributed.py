"""Sparsity methods under torchrun with 2 CPU ranks (gloo): DDP keeps identical masks on both
ranks; FSDP2 (``fully_shard``) shards the masks with their weights and trains exactly as the
unsharded model does."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from fsdp2_recipe import CASES, train_case  # noqa: E402


pytestmark = pytest.mark.distributed


def _run_2_ranks(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` on CPU; fails the test unless it exits 0."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun must be installed with torch"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    for _ in range(3):
        with socket.socket() as sock:  # a free port; torchrun's port 0 hangs with the static rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.run(
            [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), *args],
            capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
        )
        # the port is free when chosen but released before torchrun binds it: another process
        # may take it in between, which is no failure of the code under test
        if proc.returncode == 0 or "address already in use" not in (proc.stdout + proc.stderr).lower():
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _torchrun(script: str, out: Path) -> tuple[dict, dict]:
    """Run ``tests/helpers/<script>`` on 2 CPU ranks; return the JSON each rank wrote to ``out``."""
    _run_2_ranks(str(Path(__file__).parent / "helpers" / script), str(out))
    return json.loads((out / "rank0.json").read_text()), json.loads((out / "rank1.json").read_text())


def test_ddp_rigl_masks_identical_across_ranks_and_gradients_masked_after_the_all_reduce(tmp_path: Path) -> None:
    r0, r1 = _torchrun("ddp_rigl.py", tmp_path)
    assert len(r0["hashes"]) >= 8  # updates at steps 5, 10, ..., 45 (end = 0.75 * 60)
    assert r0["hashes"] == r1["hashes"]
    assert r0["nnz"] == r1["nnz"]
    # gradients are masked at the end of backward after DDP's all-reduce (clipping sees them)
    for a, b in ((r0, r1), (r0["bucket_view"], r1["bucket_view"])):
        assert a["pruned_grads"] == b["pruned_grads"] == 0
        assert a["kept_grads"] > 0
        assert a["grad_hashes"] == b["grad_hashes"] and len(a["grad_hashes"]) >= 15


def _reference(case: str) -> tuple[list[str], dict[str, torch.Tensor], dict[str, int]]:
    """Mask digests after every step, final weights and kept counts of the unsharded run of ``case``."""
    _, method, digests, pruned_grads = train_case(case)
    assert pruned_grads == 0
    return digests, {l.qualname: l.weight.detach().clone() for l in method.layers}, {
        l.qualname: int(l.mask.sum()) for l in method.layers}


def test_fsdp2_trains_like_the_unsharded_model(tmp_path: Path) -> None:
    r0, r1 = _torchrun("fsdp2_methods.py", tmp_path)
    for case in CASES:
        digests, weights, kept = _reference(case)
        a, b = r0[case], r1[case]
        # every rank holds the same full masks, and they are the unsharded run's after every step
        assert a["digests"] == b["digests"] == digests, case
        if case in ("gmp", "gmp-global", "set", "rigl", "imp", "method-then-sharded"):
            assert len(set(digests)) >= 4, case  # the masks did change during the run
        for name, w in weights.items():
            # same batches on both ranks: FSDP2's averaged gradient is the unsharded gradient
            torch.testing.assert_close(torch.tensor(a["weights"][name]), w, rtol=0, atol=1e-6)
            # the masks are sharded like their weights (rows split 19/18, 11/10, 3/2)
            (wa, ma), (wb, mb) = a["local_numel"][name], b["local_numel"][name]
            assert wa == ma and wb == mb and wa + wb == w.numel() and wb < wa, (case, name)
        assert a["mask_sharded"] and b["mask_sharded"]
        # gradients are masked at the end of backward, after FSDP2's reduce-scatter
        assert a["pruned_grads"] == b["pruned_grads"] == 0, case
        assert a["report_nonzeros"] == kept, case
        # finalized: no masks left, and the gathered full state dict holds the pruned zeros
        assert not any(k.endswith("_mask") for k in a["final_keys"])
        for name, w in weights.items():
            assert a["final_zeros"][name] >= w.numel() - kept[name], (case, name)
    assert "FullyShardedDataParallel (FSDP1)" in r0["fsdp1_error"] and "fully_shard" in r0["fsdp1_error"]
    assert "sharded by FSDP2" in r0["nm_error"] and "0.weight" in r0["nm_error"]
    # a run resumed from a distributed checkpoint (torch.distributed.checkpoint) continues exactly
    resume = r0["resume"]
    assert resume["resumed"] == resume["straight"] == r1["resume"]["straight"]
    assert len(set(resume["straight"][11:])) >= 2  # RigL's update at step 15 came after it
    assert resume["weights_equal"] and r1["resume"]["weights_equal"]


@pytest.mark.parametrize("method", [{"name": "rigl", "sparsity": 0.9, "update_interval": 4},
                                    {"name": "gmp", "sparsity": 0.9, "begin": 0, "end": "50%", "frequency": 2}],
                         ids=lambda m: m["name"])
def test_cli_train_under_torchrun_follows_the_single_process_run(tmp_path: Path, method: dict) -> None:
    import yaml

    from sparseforge.recipes import Recipe
    from sparseforge.train import Trainer

    recipe = Recipe(name="ddp", seed=0, epochs=3, model={"name": "mlp1d"},
                    data={"name": "mnist1d", "batch_size": 64, "n_train": 505, "n_test": 256}, method=method,
                    optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4})
    rp = tmp_path / "recipe.yaml"
    rp.write_text(yaml.safe_dump(recipe.to_dict()))
    run = tmp_path / "run"
    cli = ["-m", "sparseforge", "train", str(rp), "--run-dir", str(run), "--no-progress"]
    first = _run_2_ranks(*cli, "--max-steps", "10")
    assert first.stdout.count("stopped at step 10/24") == 1  # process 0 alone reports
    second = _run_2_ranks(*cli)
    assert "from step 10/24" in second.stderr and second.stdout.count("final test accuracy") == 1
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 24 and not any(k.startswith("module.") for k in ck["model"])

    # each process took half of every batch (the last, of 57, split 29/28: the loss scaling makes
    # the shares count by their sizes), and DDP averaged: the single-process trajectory
    single = Trainer(recipe, progress=False)
    single.fit()
    ref = single.model.state_dict()
    for key, value in ck["model"].items():
        if key.endswith("_mask"):
            assert torch.equal(value, ref[key]), key
        else:
            torch.testing.assert_close(value, ref[key], rtol=0, atol=1e-5)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [8, 16, 24]
    for got, want in zip(history, single.history):
        if got["epoch"] != 2:  # epoch 2's mean loss covers only the batches after the resume at step 10
            assert abs(got["train_loss"] - want["train_loss"]) < 1e-5
        assert abs(got["test_accuracy"] - want["test_accuracy"]) < 1e-9 and got["sparsity"] == want["sparsity"]


def test_trainer_under_torchrun_gives_each_process_its_share_of_every_batch(tmp_path: Path) -> None:
    script = tmp_path / "count.py"
    script.write_text(f"""
import json, os
from sparseforge.recipes import Recipe
from sparseforge.train import Trainer
recipe = Recipe(name="n", seed=0, epochs=1, model={{"name": "mlp1d"}},
                data={{"name": "mnist1d", "batch_size": 64, "n_train": 505, "n_test": 64}},
                method={{"name": "static", "sparsity": 0.5}}, optimizer={{"name": "sgd", "lr": 0.05}})
t = Trainer(recipe, progress=False)
seen = []
t.train_model.module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
t.fit()
# what runs at exit: the DDP wrapper (its reducer holds the gloo group) is dropped and collected
# before the group is destroyed, else static destructors abort the process after the run
import weakref, torch.distributed as dist
from sparseforge.runners.trainer import _destroy_process_group
ddp, rank = weakref.ref(t.train_model), t.rank
_destroy_process_group()
exit_ok = [ddp() is None, t.train_model is t.model, not dist.is_initialized()]
open(os.path.join({str(tmp_path)!r}, f"rank{{rank}}.json"), "w").write(json.dumps([seen[:8], exit_ok]))
""")
    _run_2_ranks(str(script))
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [g[0] for g in got] == [[32] * 7 + [29], [32] * 7 + [28]]
    assert [g[1] for g in got] == [[True, True, True]] * 2
