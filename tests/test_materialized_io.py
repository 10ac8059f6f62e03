"""Materialized models on disk: safetensors + JSON, reloaded with the same kernels, storage and outputs."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from sparseforge.errors import CheckpointError, ConfigError, LayerError
from sparseforge.export import (
    MATERIALIZED_FORMAT,
    SparseConv2d,
    SparseLinear,
    load_materialized,
    materialize,
    read_materialized_description,
    save_materialized,
)
from sparseforge.kernels import cpu_sparse


@pytest.fixture(scope="module")
def kernel_built():
    """The C++ extension (built once; the custom kernels are skipped only without any compiler)."""
    if cpu_sparse.load_kernel() is None:
        if shutil.which("c++") is None and shutil.which("g++") is None:
            pytest.skip(cpu_sparse.kernel_unavailable_reason())
        pytest.fail(f"a compiler exists but the kernel did not build: {cpu_sparse.kernel_unavailable_reason()}")
    return True


def _mask(layer: nn.Module, sparsity: float, seed: int, block: tuple[int, int] | None = None) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    w = layer.weight
    if block is None:
        keep = torch.rand(w.shape, generator=g) >= sparsity
    else:  # whole blocks of the [out, in*k*k] matrix kept or pruned
        rows, cols = w.shape[0], w[0].numel()
        kb = torch.rand(rows // block[0], cols // block[1], generator=g) >= sparsity
        keep = kb.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1).reshape(w.shape)
    layer.register_buffer("weight_mask", keep)
    return layer


class Net(nn.Module):
    """Conv -> Linear -> Linear, the last left dense by materialize (it keeps its mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def _masked_net(block: tuple[int, int] | None = None) -> Net:
    torch.manual_seed(0)
    net = Net()
    _mask(net.conv, 0.7, 1, block if block and 27 % block[1] == 0 else None)
    _mask(net.fc, 0.8, 2, block)
    _mask(net.head, 0.5, 3)
    return net


def _same_storage(a: nn.Module, b: nn.Module) -> None:
    """Same sparse layers with the same kernel, dtype, block size and bit-identical index/value buffers."""
    la = {n: m for n, m in a.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))}
    lb = {n: m for n, m in b.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))}
    assert la.keys() == lb.keys() and la
    for n in la:
        x, y = la[n], lb[n]
        assert type(x) is type(y) and x.kernel == y.kernel and x.dtype == y.dtype and x.block_size == y.block_size
        assert x.spec() == y.spec()
        for name, buf in x.named_buffers():
            other = dict(y.named_buffers())[name]
            assert buf.dtype == other.dtype and torch.equal(buf, other), (n, name)


@pytest.mark.parametrize("kernel,dtype,block", [
    ("custom", None, None), ("custom", "bf16", None), ("custom-bsr", None, (8, 8)),
    ("torch-csr", None, None), ("torch-bsr", None, (4, 4)),
])
def test_round_trip_same_kernels_storage_and_outputs(tmp_path: Path, kernel, dtype, block, kernel_built) -> None:
    net = _masked_net(block)
    result = materialize(net, kernel=kernel, dtype=dtype, targets={"include": ["conv", "fc"]},
                         block_sizes=[block] if block else [(32, 32)])
    fast, decisions = result.model, result.layers
    assert sum(d.status == "materialized" for d in decisions) >= 1
    out = save_materialized(fast, tmp_path / "m", decisions=decisions)
    assert sorted(p.name for p in out.iterdir()) == ["materialized.json", "model.safetensors"]
    back = load_materialized(out, Net())
    _same_storage(fast, back)
    x = torch.randn(3, 3, 4, 4)
    if dtype == "bf16":
        x = x.bfloat16()
        assert back.head.weight.dtype == torch.bfloat16  # dense layers keep the converted dtype
    assert torch.equal(back(x), fast(x)) and not back.training
    assert torch.equal(back.head.weight_mask, net.head.weight_mask)  # masks of dense layers survive
    desc = read_materialized_description(out)
    assert desc["format"] == MATERIALIZED_FORMAT and desc["base_model"] is None
    assert [d["name"] for d in desc["decisions"]] == ["conv", "fc"]
    fc = desc["layers"]["fc"]
    assert fc["kind"] == "SparseLinear" and fc["kernel"] == kernel and fc["weight_shape"] == [32, 128]
    assert fc["decision"]["status"] == "materialized"


def test_bare_layer_and_base_model_rebuild(tmp_path: Path) -> None:
    lin = _mask(nn.Linear(40, 16), 0.75, 0)
    sl = materialize(lin, kernel="torch-csr").model
    back = load_materialized(save_materialized(sl, tmp_path / "one"), nn.Linear(40, 16))
    assert isinstance(back, SparseLinear)
    _same_storage(nn.Sequential(sl), nn.Sequential(back))

    from sparseforge.models import build_model

    model = build_model("mlp1d", None, hidden=[32])
    _mask(model.fc1, 0.9, 0)
    result = materialize(model, kernel="torch-csr", targets={"include": ["fc1"]})
    fast, dec = result.model, result.layers
    base = {"name": "mlp1d", "kwargs": {"hidden": [32]}}
    out = save_materialized(fast, tmp_path / "mlp", decisions=dec, base_model=base, recipe={"name": "r"})
    back = load_materialized(out)  # no model: the description rebuilds the architecture
    x = torch.randn(4, 40)
    assert torch.equal(back(x), fast(x)) and isinstance(back.fc1, SparseLinear)
    assert read_materialized_description(out)["recipe"] == {"name": "r"}


def test_output_is_never_replaced_silently(tmp_path: Path) -> None:
    fast = materialize(_mask(nn.Linear(8, 8), 0.5, 0), kernel="torch-csr").model
    existing = tmp_path / "checkpoint.pt"
    existing.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="already exists \\(a file\\).*overwrite=True"):
        save_materialized(fast, existing)
    assert existing.read_bytes() == b"precious"
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log.txt").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="run"):
            save_materialized(fast, folder, overwrite=overwrite)
    assert sorted(p.name for p in folder.iterdir()) == ["log.txt"]
    (tmp_path / "empty").mkdir()
    save_materialized(fast, tmp_path / "empty")  # an empty folder is filled
    with pytest.raises(ConfigError, match="a materialized model"):
        save_materialized(fast, tmp_path / "empty")
    save_materialized(fast, tmp_path / "empty", overwrite=True)
    save_materialized(fast, existing, overwrite=True)  # an explicit request replaces the file
    assert existing.is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    fast = materialize(_mask(nn.Linear(8, 8), 0.5, 0), kernel="torch-csr").model
    save_materialized(fast, tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def disk_full(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError):
        save_materialized(fast, tmp_path / "m", overwrite=True)
    with pytest.raises(OSError):
        save_materialized(fast, tmp_path / "new")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module; got dict"):
        save_materialized({}, tmp_path / "x")
    with pytest.raises(ConfigError, match="base_model must be"):
        save_materialized(nn.Linear(2, 2), tmp_path / "x", base_model={"kwargs": {}})
    fast = materialize(_mask(nn.Linear(8, 8), 0.5, 0), kernel="torch-csr").model
    out = save_materialized(fast, tmp_path / "m")
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module or None; got str"):
        load_materialized(out, "net")
    with pytest.raises(CheckpointError, match="records no base architecture.*pass model="):
        load_materialized(out)


def _saved(tmp_path: Path) -> tuple[Path, nn.Sequential]:
    model = nn.Sequential(_mask(nn.Linear(12, 6), 0.5, 0), nn.ReLU(), nn.Linear(6, 3))
    result = materialize(model, kernel="torch-csr", targets={"include": ["0"]})
    fast, dec = result.model, result.layers
    return save_materialized(fast, tmp_path / "m", decisions=dec), model


def _edit_description(folder: Path, fn) -> None:  # noqa: ANN001
    desc = json.loads((folder / "materialized.json").read_text())
    fn(desc)
    (folder / "materialized.json").write_text(json.dumps(desc))


@pytest.mark.parametrize("damage,match", [
    (lambda f: (f / "materialized.json").write_text("{not json"), "cannot read"),
    (lambda f: _edit_description(f, lambda d: d.update(format="v0")), "has format 'v0'"),
    (lambda f: _edit_description(f, lambda d: d["layers"]["0"].update(kind="os.system")), "kind must be one of"),
    (lambda f: _edit_description(f, lambda d: d["layers"]["0"].update(kernel="mkl")), "kernel must be one of"),
    (lambda f: _edit_description(f, lambda d: d["layers"]["0"].update(dtype="float64")), "dtype must be one of"),
    (lambda f: _edit_description(f, lambda d: d["layers"]["0"].update(in_features=-1)), "in_features must be"),
    (lambda f: _edit_description(f, lambda d: d.update(base_model={"name": 3})), "base_model must be"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:40]), "cannot read"),
    (lambda f: (f / "model.safetensors").unlink(), "no such file"),
])
def test_damaged_folder_is_refused_and_model_untouched(tmp_path: Path, damage, match) -> None:  # noqa: ANN001
    out, _ = _saved(tmp_path)
    damage(out)
    base = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    state = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_materialized(out, base)
    assert isinstance(base[0], nn.Linear) and all(torch.equal(v, base.state_dict()[k]) for k, v in state.items())


def test_out_of_range_indices_and_wrong_model_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    out, _ = _saved(tmp_path)
    base = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(CheckpointError, match=r"layer '0': the model's Linear with weight \(7, 12\)"):
        load_materialized(out, nn.Sequential(nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)))
    with pytest.raises(CheckpointError, match="no Linear/Conv2d layer '0'.*ReLU"):
        load_materialized(out, nn.Sequential(nn.ReLU(), nn.Linear(12, 6), nn.Linear(6, 3)))
    tensors = load_file(str(out / "model.safetensors"))
    tensors["0.col_indices"][3] = 12  # one past the last column: a kernel would read out of bounds
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(LayerError, match=r"layer '0'.*col_indices must lie in \[0, 12\)"):
        load_materialized(out, base)
    assert isinstance(base[0], nn.Linear)
    tensors["0.col_indices"][3] = 0
    tensors["0.crow_indices"][2] = 100
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(LayerError, match="crow_indices must rise"):
        load_materialized(out, base)
    tensors["0.crow_indices"][2] = 0
    tensors["extra"] = torch.zeros(1)
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected \['extra'\]"):
        load_materialized(out, base)


class _Boom:
    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (Path(self.flag),))


def test_a_planted_pickle_never_runs(tmp_path: Path) -> None:
    """An old-style pickled module (or any pickle) in place of the tensors is refused without running it."""
    out, _ = _saved(tmp_path)
    boom = _Boom()
    boom.flag = str(tmp_path / "ran")
    (out / "model.safetensors").write_bytes(pickle.dumps(boom))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_materialized(out, nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)))
    legacy = tmp_path / "fast.pt"
    legacy.write_bytes(pickle.dumps(boom))
    with pytest.raises(CheckpointError, match="not a materialized model folder.*older sparseforge"):
        load_materialized(legacy)
    assert not (tmp_path / "ran").exists()


def test_custom_kernel_missing_on_the_loading_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      kernel_built) -> None:
    model = nn.Sequential(_mask(nn.Linear(12, 6), 0.5, 0))
    fast = materialize(model, kernel="custom").model
    out = save_materialized(fast, tmp_path / "m")
    monkeypatch.setenv("SPARSEFORGE_NO_CPP", "1")
    with pytest.raises(LayerError, match="layer '0' runs sparseforge's C\\+\\+ kernel \\(custom\\).*SPARSEFORGE_NO_CPP"):
        load_materialized(out, nn.Sequential(nn.Linear(12, 6)))
