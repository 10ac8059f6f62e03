"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Each rank uses a different torch seed and different data; RigL's masks must still be
identical on both ranks after every update (gradients are all-reduced by DDP and masks are
broadcast from rank 0 after each update). Writes one JSON line per rank with its mask hashes.
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


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(1000 + rank)  # different weights init and data per rank on purpose
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    ddp = DDP(model)  # broadcasts rank 0's parameters and buffers at construction
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    method = RigL(model, opt, sparsity=0.8, update_interval=5, total_steps=60, seed=0)
    hashes = []
    for step in range(60):
        x = torch.randn(32, 16)
        y = torch.randint(0, 4, (32,))
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
        if method.last_update.get("step") == step + 1:
            hashes.append(mask_hash(method))
    nnz = [int(l.mask.sum()) for l in method.layers]
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "hashes": hashes, "nnz": nnz}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
