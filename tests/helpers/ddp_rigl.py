"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each rank uses a different torch seed and different data; RigL's masks must still be
identical on both ranks after every update (gradients are all-reduced by DDP and masks are
broadcast from rank 0 after each update), and after each backward the gradients must already
be the all-reduced ones with pruned positions zeroed (also with ``gradient_as_bucket_view``).
Writes one JSON file per rank with its mask and gradient hashes.
"""

import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from sparseforge.methods import RigL


def mask_hash(method: RigL) -> str:
    h = hashlib.sha256()
    for layer in method.layers:
        h.update(layer.mask.numpy().tobytes())
    return h.hexdigest()


def grad_state(method: RigL) -> tuple[int, int, str]:
    """(nonzero gradient entries at pruned positions, at kept positions, hash of the gradients)."""
    h = hashlib.sha256()
    pruned = kept = 0
    for layer in method.layers:
        g = layer.weight.grad
        pruned += int((g[~layer.mask] != 0).sum())
        kept += int((g[layer.mask] != 0).sum())
        h.update(g.numpy().tobytes())
    return pruned, kept, h.hexdigest()


def train(rank: int, steps: int, bucket_view: bool) -> dict:
    torch.manual_seed(1000 + rank)  # different weights init and data per rank on purpose
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = DDP(model, gradient_as_bucket_view=bucket_view)  # broadcasts rank 0's parameters and buffers
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    method = RigL(model, opt, sparsity=0.8, update_interval=5, total_steps=60, seed=0)
    hashes, pruned_grads, kept_grads, grad_hashes = [], 0, 0, []
    for step in range(steps):
        x = torch.randn(32, 16)
        y = torch.randint(0, 4, (32,))
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        if not method.is_update_step(step):  # RigL's grow steps keep the dense gradient on purpose
            # masked at the end of backward, after DDP's all-reduce: what clipping would see
            pruned, kept, gh = grad_state(method)
            pruned_grads += pruned
            kept_grads += kept
            grad_hashes.append(gh)
        opt.step()
        if method.last_update.get("step") == step + 1:
            hashes.append(mask_hash(method))
    return {"hashes": hashes, "nnz": [int(l.mask.sum()) for l in method.layers], "pruned_grads": pruned_grads,
            "kept_grads": kept_grads, "grad_hashes": grad_hashes}


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = {"rank": rank, **train(rank, 60, bucket_view=False), "bucket_view": train(rank, 20, bucket_view=True)}
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
