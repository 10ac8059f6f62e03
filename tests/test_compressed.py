"""sparseforge.export.compressed: bit-exact round trips, sizes, validation of bad files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sparseforge.errors import CheckpointError, ConfigError
from sparseforge.export import (
    FORMAT_VERSION,
    FORMATS,
    compressed_size_report,
    load_compressed,
    load_compressed_state_dict,
    save_compressed,
)
from sparseforge.masking import Masking, find_masked_layers, finalize

SRC = Path(__file__).resolve().parents[1] / "src"


# ----------------------------------------------------------------------------- helpers
def mlp(width: int = 128, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def random_mask(shape: torch.Size, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Exactly round(sparsity * n) False entries at random positions."""
    n = math.prod(shape)
    mask = torch.ones(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[: round(sparsity * n)]] = False
    return mask.view(shape)


def mask_model(model: nn.Module, sparsity: float, seed: int = 1) -> Masking:
    gen = torch.Generator().manual_seed(seed)
    masking = Masking(model)
    for layer in masking:
        masking.set_mask(layer, random_mask(layer.weight.shape, sparsity, gen))
    return masking


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


def canonical(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pruned zeros are restored as +0.0 (documented): compare against that form.

    ``weight * mask`` leaves -0.0 where a negative weight was pruned; the random test weights
    never hold an exact zero anywhere else, so mapping every zero to +0.0 is the expected state.
    """
    return {k: torch.where(v == 0, torch.zeros((), dtype=v.dtype), v) if v.is_floating_point() else v for k, v in sd.items()}


def assert_same_state(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Same keys, dtypes, shapes and bytes (bit-exact)."""
    assert list(expected) == list(got)
    for k in expected:
        a, b = expected[k], got[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert torch.equal(bits(a), bits(b)), f"{k} differs bitwise"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {l.qualname: l.mask.clone() for l in find_masked_layers(model)}


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", FORMATS)
def test_masked_mlp_round_trip_bit_exact(tmp_path: Path, fmt: str) -> None:
    model = mlp()
    mask_model(model, 0.9)
    x = torch.randn(8, 64)
    expected_out = model(x)
    path = tmp_path / "m.safetensors"
    info = save_compressed(model, path, format=fmt, metadata={"run": "unit-test"})
    assert info.path == path and info.file_bytes == path.stat().st_size
    assert info.encodings == {"0.weight": fmt, "0.bias": "dense", "2.weight": fmt, "2.bias": "dense", "4.weight": fmt, "4.bias": "dense"}
    assert info.masked == ["0.weight", "2.weight", "4.weight"]

    # a fresh model, different init, no masks: gets weights and mask buffers
    fresh = mlp(seed=5)
    load_compressed(fresh, path)
    assert_same_state(canonical(model.state_dict()), fresh.state_dict())
    assert {k: torch.equal(v, masks_of(model)[k]) for k, v in masks_of(fresh).items()} == {k: True for k in masks_of(model)}
    assert torch.equal(fresh(x), expected_out)

    # and into a model that already has (different) masks
    other = mlp(seed=6)
    mask_model(other, 0.5, seed=7)
    load_compressed(other, path)
    assert_same_state(canonical(model.state_dict()), other.state_dict())

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert not any(k.endswith("_mask") for k in f.keys())  # masks come from the encoding
    assert meta["run"] == "unit-test" and meta["sparseforge.format"] == FORMAT_VERSION
    assert compressed_size_report(fresh, path)["metadata"] == {"run": "unit-test"}
    assert json.loads(meta["sparseforge.masked"]) == ["0.weight", "2.weight", "4.weight"]
    # every key of the model except the mask buffers, in state_dict order
    assert [e["key"] for e in json.loads(meta["sparseforge.tensors"])] == [
        k for k in model.state_dict() if not k.endswith("_mask")
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_conv_net_round_trip(tmp_path: Path, fmt: str) -> None:
    model = convnet()
    mask_model(model, 0.8)
    model.train()
    model(torch.randn(4, 3, 8, 8))  # non-trivial BatchNorm running statistics
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "c.safetensors"
    info = save_compressed(model, path, format=fmt)
    assert info.encodings["0.weight"] == fmt and info.encodings["1.running_var"] == "dense"
    fresh = convnet(seed=3).eval()
    load_compressed(fresh, path)
    assert_same_state(canonical(model.state_dict()), fresh.state_dict())
    assert torch.equal(fresh(x), model(x))
    assert masks_of(fresh).keys() == masks_of(model).keys()
    assert all(torch.equal(masks_of(fresh)[k], m) for k, m in masks_of(model).items())


@pytest.mark.parametrize("fmt", FORMATS)
def test_finalized_model_auto_detects_zeros(tmp_path: Path, fmt: str) -> None:
    model = mlp()
    mask_model(model, 0.9)
    finalize(model)
    assert not find_masked_layers(model)
    path = tmp_path / "f.safetensors"
    info = save_compressed(model, path, format=fmt)
    # every weight has >= 1024 elements (the head: 10 x 128) and 90 % zeros; biases are small
    assert info.encodings == {"0.weight": fmt, "0.bias": "dense", "2.weight": fmt, "2.bias": "dense", "4.weight": fmt, "4.bias": "dense"}
    assert info.masked == []
    fresh = mlp(seed=9)
    load_compressed(fresh, path)
    assert not find_masked_layers(fresh)  # nothing was masked when saved
    assert_same_state(canonical(model.state_dict()), fresh.state_dict())
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), model(x))


def test_auto_detection_thresholds(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 31), nn.Linear(64, 16))
    with torch.no_grad():
        model[0].weight[:, :16] = 0  # 1024 elements, exactly 50 % zeros -> encoded
        model[1].weight[:, :] = 0  # 992 elements: too small -> dense
        model[2].weight[:, :31] = 0  # 1024 elements, 31/64 zeros < 50 % -> dense
    info = save_compressed(model, tmp_path / "a.safetensors")
    assert info.encodings["0.weight"] == "bitmask"
    assert info.encodings["1.weight"] == "dense"
    assert info.encodings["2.weight"] == "dense"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS)
def test_half_precision_round_trip(tmp_path: Path, fmt: str, dtype: torch.dtype) -> None:
    model = mlp().to(dtype)
    mask_model(model, 0.9)
    path = tmp_path / "h.safetensors"
    save_compressed(model, path, format=fmt)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("0.weight::values").dtype == dtype  # values keep their dtype
    fresh = mlp(seed=4).to(dtype)
    load_compressed(fresh, path)
    assert_same_state(canonical(model.state_dict()), fresh.state_dict())
    x = torch.randn(4, 64, dtype=dtype)
    assert torch.equal(fresh(x), model(x))
    # strict loading refuses to cast silently; strict=False casts
    with pytest.raises(CheckpointError, match="convert the model"):
        load_compressed(mlp(), path)
    m32 = mlp()
    load_compressed(m32, path, strict=False)
    assert m32[0].weight.dtype == torch.float32
    assert torch.equal(m32[0].weight, fresh[0].weight.float()) and torch.equal(m32[0].weight_mask, fresh[0].weight_mask)


def test_kept_negative_zero_is_kept_and_pruned_zero_becomes_positive(tmp_path: Path) -> None:
    lin = nn.Linear(4, 2, bias=False)
    masking = Masking(nn.Sequential(lin))
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-0.0, 1.0, -2.0, 3.0], [4.0, -5.0, 6.0, float("nan")]]))
    masking.set_mask(masking.layers[0], torch.tensor([[True, True, False, True], [False, True, True, True]]))
    assert torch.signbit(lin.weight[0, 2])  # -2 * 0 = -0.0
    for fmt in FORMATS:
        save_compressed(lin, tmp_path / f"z{fmt}.safetensors", format=fmt)
        sd = load_compressed_state_dict(tmp_path / f"z{fmt}.safetensors")
        w = sd["weight"]
        assert torch.signbit(w[0, 0]) and w[0, 0] == 0  # a kept -0.0 stays -0.0
        assert not torch.signbit(w[0, 2]) and w[0, 2] == 0  # a pruned -0.0 comes back +0.0
        assert torch.isnan(w[1, 3])
        assert torch.equal(sd["weight_mask"], lin.weight_mask)


def test_tied_weights_stored_once(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 100, bias=False)
            self.head.weight = self.emb.weight

    model = Tied()
    info = save_compressed(model, tmp_path / "t.safetensors")
    assert info.encodings == {"emb.weight": "dense", "head.weight": "alias"}
    fresh = Tied()
    load_compressed(fresh, tmp_path / "t.safetensors")
    assert torch.equal(fresh.emb.weight, model.emb.weight) and fresh.head.weight is fresh.emb.weight


def test_fresh_process_reproduces_outputs_and_masks(tmp_path: Path) -> None:
    model = mlp()
    mask_model(model, 0.9)
    x = torch.randn(8, 64)
    save_compressed(model, tmp_path / "m.safetensors", format="csr")
    torch.save({"x": x, "y": model(x).detach(), "masks": masks_of(model)}, tmp_path / "expected.pt")
    code = (
        "import sys, torch; from torch import nn\n"
        "from sparseforge.export import load_compressed\n"
        "from sparseforge.masking import find_masked_layers\n"
        "d = sys.argv[1]\n"
        "m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))\n"
        "load_compressed(m, d + '/m.safetensors')\n"
        "e = torch.load(d + '/expected.pt', weights_only=True)\n"
        "masks = {l.qualname: l.mask for l in find_masked_layers(m)}\n"
        "assert masks.keys() == e['masks'].keys(), (masks.keys(), e['masks'].keys())\n"
        "assert all(torch.equal(masks[k], v) for k, v in e['masks'].items())\n"
        "assert torch.equal(m(e['x']), e['y'])\n"
        "print('fresh-process-ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "fresh-process-ok" in r.stdout


# ----------------------------------------------------------------------------- sizes
def _four_linear(sparsity: float) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(4)])
    mask_model(model, sparsity)
    return model


def _dense_file_bytes(model: nn.Module, path: Path) -> int:
    """Size of a plain torch.save of the dense weights (no masks)."""
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("_mask")}
    torch.save(sd, path)
    return path.stat().st_size


@pytest.mark.parametrize("fmt", FORMATS)
def test_size_scales_with_density(tmp_path: Path, fmt: str) -> None:
    sparse = _four_linear(0.9)
    dense_file = _dense_file_bytes(sparse, tmp_path / "dense.pt")
    info = save_compressed(sparse, tmp_path / "s90.safetensors", format=fmt)
    print(f"\n{fmt} 90%: file {info.file_bytes} B, torch.save dense {dense_file} B, "
          f"file/dense-file {info.file_bytes / dense_file:.4f}, info.ratio {info.ratio:.4f}")
    assert info.file_bytes <= 0.20 * dense_file
    assert info.dense_bytes == 4 * (512 * 512 + 512) * 4

    half = _four_linear(0.5)
    info50 = save_compressed(half, tmp_path / "s50.safetensors", format=fmt)
    print(f"{fmt} 50%: file {info50.file_bytes} B, file/dense-file {info50.file_bytes / dense_file:.4f}")
    assert info50.file_bytes < dense_file

    rep = compressed_size_report(sparse, tmp_path / "s90.safetensors")
    assert rep["file_bytes"] == info.file_bytes and rep["dense_bytes"] == info.dense_bytes
    assert rep["ratio"] == pytest.approx(info.ratio)
    assert rep["file_bytes"] == rep["stored_bytes"] + rep["header_bytes"]
    assert rep["mask_bytes"] == 4 * 512 * 512
    w = rep["tensors"]["0.weight"]
    kept = round(0.1 * 512 * 512)
    if fmt == "bitmask":
        assert w["stored_bytes"] == 512 * 512 // 8 + 4 * kept
    else:
        assert w["stored_bytes"] == 4 * 513 + 2 * kept + 4 * kept  # int32 crow, int16 col, fp32 values
    assert rep["tensors"]["0.bias"] == {
        "encoding": "dense", "shape": [512], "dtype": "float32", "dense_bytes": 2048, "stored_bytes": 2048, "ratio": 1.0
    }
    assert compressed_size_report(None, tmp_path / "s90.safetensors")["dense_bytes"] == info.dense_bytes
    with pytest.raises(CheckpointError, match="another architecture"):
        compressed_size_report(mlp(), tmp_path / "s90.safetensors")


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    model = mlp()
    mask_model(model, 0.9)
    path = tmp_path / "good.safetensors"
    save_compressed(model, path)
    return path


def _rewrite(src: Path, dst: Path, *, edit_tensors=None, edit_meta=None) -> Path:
    """Copy a compressed file through safetensors, optionally editing tensors or metadata."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _assert_rejected(path: Path, match: str, model: nn.Module | None = None, **kw) -> CheckpointError:
    """Loading ``path`` raises CheckpointError matching ``match`` and leaves the model untouched."""
    for target in ([model] if model is not None else [mlp(seed=3), _masked(mlp(seed=3))]):
        before = snapshot(target)
        with pytest.raises(CheckpointError, match=match) as ei:
            load_compressed(target, path, **kw)
        after = target.state_dict()
        assert list(before) == list(after)  # no mask buffer registered either
        assert all(torch.equal(bits(before[k]), bits(after[k])) for k in before)
    return ei.value


def _masked(model: nn.Module) -> nn.Module:
    mask_model(model, 0.5, seed=11)
    return model


def test_missing_file(tmp_path: Path) -> None:
    _assert_rejected(tmp_path / "nope.safetensors", "no such file")


@pytest.mark.parametrize("keep", [4, 60, -100, -1])
def test_truncated_file(saved: Path, tmp_path: Path, keep: int) -> None:
    data = saved.read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(data[:keep])
    err = _assert_rejected(bad, "not a readable safetensors file")
    assert "trunc.safetensors" in str(err)


def test_corrupted_header_bytes(saved: Path, tmp_path: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[9:17] = b"\x00garbage"
    bad = tmp_path / "hdr.safetensors"
    bad.write_bytes(bytes(data))
    err = _assert_rejected(bad, "not a readable safetensors file")
    assert "hdr.safetensors" in str(err)


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    pt = tmp_path / "model.pt"
    torch.save(mlp().state_dict(), pt)
    _assert_rejected(pt, "not a readable safetensors file")
    txt = tmp_path / "notes.safetensors"
    txt.write_text("hello, these are not tensors\n")
    _assert_rejected(txt, "not a readable safetensors file")
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in mlp().state_dict().items()}, str(plain))
    _assert_rejected(plain, "not a sparseforge compressed checkpoint")


def test_other_architecture(saved: Path) -> None:
    err = _assert_rejected(saved, "another architecture", model=mlp(width=96))
    msg = str(err)
    assert "'0.weight'" in msg and "(128, 64)" in msg and "(96, 64)" in msg and "good.safetensors" in msg


def test_missing_key(saved: Path) -> None:
    model = mlp()
    model.add_module("5", nn.Linear(10, 3))
    err = _assert_rejected(saved, "another architecture", model=model)
    assert "'5.weight'" in str(err) and "missing from the file" in str(err)
    # the file has a key the model lacks
    smaller = nn.Sequential(*list(mlp())[:3])
    err = _assert_rejected(saved, "another architecture", model=smaller)
    assert "'4.weight'" in str(err)
    # strict=False loads what fits and leaves the rest alone
    extra_before = model[5].weight.detach().clone()
    load_compressed(model, saved, strict=False)
    assert torch.equal(model[5].weight, extra_before)
    assert torch.equal(model[0].weight_mask, load_compressed_state_dict(saved)["0.weight_mask"])


def test_tampered_values_length(saved: Path, tmp_path: Path) -> None:
    def drop_one(t: dict[str, torch.Tensor]) -> None:
        t["2.weight::values"] = t["2.weight::values"][:-1].clone()

    bad = _rewrite(saved, tmp_path / "vals.safetensors", edit_tensors=drop_one)
    kept = round(0.1 * 128 * 128)
    _assert_rejected(bad, rf"'2.weight': the bitmask keeps {kept} positions but '2.weight::values' holds {kept - 1} values")


def test_flipped_mask_bit_is_caught(saved: Path, tmp_path: Path) -> None:
    def flip(t: dict[str, torch.Tensor]) -> None:
        b = t["0.weight::bitmask"].clone()
        b[0] ^= 1
        t["0.weight::bitmask"] = b

    _assert_rejected(_rewrite(saved, tmp_path / "flip.safetensors", edit_tensors=flip), "bitmask keeps")


def test_corrupted_value_bytes_fail_the_checksum(saved: Path, tmp_path: Path) -> None:
    def poke(t: dict[str, torch.Tensor]) -> None:
        v = t["0.weight::values"].clone()
        v[3] += 1.0
        t["0.weight::values"] = v

    _assert_rejected(_rewrite(saved, tmp_path / "poke.safetensors", edit_tensors=poke), "content checksum")


def test_csr_index_out_of_range(tmp_path: Path) -> None:
    model = mlp()
    mask_model(model, 0.9)
    path = tmp_path / "csr.safetensors"
    save_compressed(model, path, format="csr")

    def out_of_range(t: dict[str, torch.Tensor]) -> None:
        c = t["2.weight::col_indices"].clone()
        c[5] = 128 + 7
        t["2.weight::col_indices"] = c

    _assert_rejected(_rewrite(path, tmp_path / "oor.safetensors", edit_tensors=out_of_range), r"column index 135 .* out of range \[0, 128\)")

    def short_crow(t: dict[str, torch.Tensor]) -> None:
        c = t["2.weight::crow_indices"].clone()
        c[-1] -= 1
        t["2.weight::crow_indices"] = c

    _assert_rejected(_rewrite(path, tmp_path / "crow.safetensors", edit_tensors=short_crow), "crow_indices end at")

    def unsorted(t: dict[str, torch.Tensor]) -> None:
        c = t["2.weight::col_indices"].clone()
        c[0], c[1] = c[1].clone(), c[0].clone()
        t["2.weight::col_indices"] = c

    _assert_rejected(_rewrite(path, tmp_path / "uns.safetensors", edit_tensors=unsorted), "not strictly increasing")


def test_wrong_format_version(saved: Path, tmp_path: Path) -> None:
    def v2(meta: dict[str, str]) -> None:
        meta["sparseforge.format"] = "sparseforge-compressed-v2"

    err = _assert_rejected(_rewrite(saved, tmp_path / "v2.safetensors", edit_meta=v2), "format version")
    assert "sparseforge-compressed-v2" in str(err) and FORMAT_VERSION in str(err)


def test_edited_shape_in_header(saved: Path, tmp_path: Path) -> None:
    def reshape(meta: dict[str, str]) -> None:
        entries = json.loads(meta["sparseforge.tensors"])
        entries[0]["shape"] = [64, 128]
        meta["sparseforge.tensors"] = json.dumps(entries)

    _assert_rejected(_rewrite(saved, tmp_path / "shape.safetensors", edit_meta=reshape), "architecture checksum")


def test_save_refuses_bad_arguments_and_mask_violations(tmp_path: Path) -> None:
    model = mlp()
    mask_model(model, 0.9)
    with pytest.raises(ConfigError, match="format must be one of"):
        save_compressed(model, tmp_path / "x.safetensors", format="coo")
    with pytest.raises(ConfigError, match="reserved"):
        save_compressed(model, tmp_path / "x.safetensors", metadata={"sparseforge.format": "mine"})
    with pytest.raises(ConfigError, match="strings"):
        save_compressed(model, tmp_path / "x.safetensors", metadata={"epoch": 3})
    with torch.no_grad():
        model[2].weight.add_(1.0)  # pruned positions now nonzero
    with pytest.raises(CheckpointError, match="'2.weight'.*pruned position"):
        save_compressed(model, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# ----------------------------------------------------------------------------- property
class _One(nn.Module):
    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape).to(dtype))
        self.register_buffer("w_mask", torch.ones(shape, dtype=torch.bool))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 9), min_size=0, max_size=4).map(tuple),
    sparsity=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    fmt=st.sampled_from(FORMATS),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes_round_trip(shape, sparsity, dtype, fmt, seed) -> None:
    torch.manual_seed(seed)
    src = _One(shape, dtype)
    gen = torch.Generator().manual_seed(seed)
    mask = random_mask(torch.Size(shape), sparsity, gen)
    with torch.no_grad():
        src.w_mask.copy_(mask)
        src.w.mul_(mask)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "p.safetensors"
        info = save_compressed(src, path, format=fmt)
        assert info.encodings == {"w": fmt}
        dst = _One(shape, dtype)
        del dst.w_mask  # a model without masks gets them from the file
        load_compressed(dst, path)
        assert torch.equal(dst.w_mask, mask)
        assert_same_state(canonical(src.state_dict()), dst.state_dict())
        # the stored bits follow numpy.packbits(bitorder="little") exactly
        if fmt == "bitmask":
            with safe_open(str(path), framework="pt") as f:
                stored = f.get_tensor("w::bitmask").numpy()
            assert np.array_equal(stored, np.packbits(mask.reshape(-1).numpy(), bitorder="little"))
