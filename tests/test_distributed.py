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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from fsdp2_recipe import CASES, batches, build, mask_digest  # noqa: E402

from sparseforge.masking import Masking  # noqa: E402

pytestmark = pytest.mark.distributed


def _torchrun(script: str, out: Path) -> tuple[dict, dict]:
    """Run ``tests/helpers/<script>`` on 2 CPU ranks; return the JSON each rank wrote to ``out``."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun must be installed with torch"
    with socket.socket() as sock:  # a free port; torchrun's port 0 hangs with the static rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
         str(Path(__file__).parent / "helpers" / script), str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "rank0.json").read_text()), json.loads((out / "rank1.json").read_text())


def test_rigl_masks_identical_across_ranks(tmp_path: Path) -> None:
    r0, r1 = _torchrun("ddp_rigl.py", tmp_path)
    assert len(r0["hashes"]) >= 8  # updates at steps 5, 10, ..., 45 (end = 0.75 * 60)
    assert r0["hashes"] == r1["hashes"]
    assert r0["nnz"] == r1["nnz"]


def _reference(case: str) -> tuple[list[str], dict[str, torch.Tensor], dict[str, int]]:
    """Mask digests after every step, final weights and kept counts of the unsharded run of ``case``."""
    model, make_method, make_opt = build(case)
    if case == "masked-then-sharded":
        make_method(model, None)
        opt = make_opt(model)
        method = Masking(model, optimizer=opt)
    else:
        opt = make_opt(model)
        method = make_method(model, opt)
    digests = []
    for x, y in batches():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        digests.append(mask_digest(method.layers))
    return digests, {l.qualname: l.weight.detach().clone() for l in method.layers}, {
        l.qualname: int(l.mask.sum()) for l in method.layers}


def test_fsdp2_trains_like_the_unsharded_model(tmp_path: Path) -> None:
    r0, r1 = _torchrun("fsdp2_methods.py", tmp_path)
    for case in CASES:
        digests, weights, kept = _reference(case)
        a, b = r0[case], r1[case]
        # every rank holds the same full masks, and they are the unsharded run's after every step
        assert a["digests"] == b["digests"] == digests, case
        if case in ("gmp", "set", "rigl", "imp"):
            assert len(set(digests)) >= 4, case  # the masks did change during the run
        for name, w in weights.items():
            # same batches on both ranks: FSDP2's averaged gradient is the unsharded gradient
            torch.testing.assert_close(torch.tensor(a["weights"][name]), w, rtol=0, atol=1e-6)
            # the masks are sharded like their weights (rows split 19/18, 11/10, 3/2)
            (wa, ma), (wb, mb) = a["local_numel"][name], b["local_numel"][name]
            assert wa == ma and wb == mb and wa + wb == w.numel() and wb < wa, (case, name)
        assert a["mask_sharded"] and b["mask_sharded"]
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
