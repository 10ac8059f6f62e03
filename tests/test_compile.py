"""A masked model under torch.compile: one graph, no graph breaks, no recompiles across mask updates.

Masks live in buffers that the forward pass never reads (pruned weights are exact zeros), so
mask updates by RigL cannot invalidate the compiled graph. ``aot_eager`` exercises Dynamo and
AOTAutograd without needing a C++ toolchain.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.methods import RigL


def test_rigl_training_compiles_once_with_fullgraph() -> None:
    dynamo = pytest.importorskip("torch._dynamo")
    from torch._dynamo.utils import counters

    dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = RigL(model, opt, sparsity=0.8, update_interval=5, total_steps=40)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    masks_seen = set()
    for _ in range(40):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        opt.zero_grad()
        F.cross_entropy(compiled(x), y).backward()
        opt.step()
        masks_seen.add(method.layers[0].mask.numpy().tobytes())
    assert len(masks_seen) > 3  # the masks really changed while compiled
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["graph_break"].values()) == 0
    assert counters["recompiles"] == {} or sum(counters["recompiles"].values()) == 0
    for layer in method.layers:
        assert not layer.weight[~layer.mask].any()
