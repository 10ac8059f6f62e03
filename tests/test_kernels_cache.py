"""The C++ kernel cache key (CPU features, compiler, torch, source) and ``sparseforge kernels build/info``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparseforge.cli import main
from sparseforge.kernels import cpu_sparse

AVX2_HOST = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu constant_tsc sse sse2 avx fma avx2 hypervisor\n"
AVX512_HOST = AVX2_HOST.replace("avx2", "avx2 avx512f avx512_bf16 amx_tile")


def test_cpu_features_keep_only_instruction_sets() -> None:
    assert cpu_sparse.cpu_features(AVX2_HOST) == ["avx", "avx2", "fma", "sse", "sse2"]
    assert "avx512_bf16" in cpu_sparse.cpu_features(AVX512_HOST) and "amx_tile" in cpu_sparse.cpu_features(AVX512_HOST)
    assert cpu_sparse.cpu_features("Features\t: fp asimd evtstrm sve smep\n") == ["asimd", "sve"]  # Arm spelling
    assert cpu_sparse.cpu_features("") == []


def test_key_changes_with_cpu_compiler_torch_and_source(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setenv("SPARSEFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_sparse, "_read_cpuinfo", lambda: AVX2_HOST)
    monkeypatch.setattr(cpu_sparse, "_compiler", lambda: ("/usr/bin/c++", "c++ (Debian 12.2.0) 12.2.0"))
    base = cpu_sparse.key_components()
    assert base["cpu_features"] == ["avx", "avx2", "fma", "sse", "sse2"] and base["compiler"].endswith("12.2.0")
    key = cpu_sparse.cache_key()
    assert key == cpu_sparse.cache_key(base) and len(key) == 16
    assert cpu_sparse.build_dir() == tmp_path / "kernels" / f"csr_linear_{key}"
    # a machine with the same vector units but other bookkeeping flags shares the build
    monkeypatch.setattr(cpu_sparse, "_read_cpuinfo", lambda: AVX2_HOST.replace(" hypervisor", ""))
    assert cpu_sparse.cache_key() == key
    # a CPU with more (or fewer) vector instructions never loads this binary
    monkeypatch.setattr(cpu_sparse, "_read_cpuinfo", lambda: AVX512_HOST)
    assert cpu_sparse.cache_key() != key
    monkeypatch.setattr(cpu_sparse, "_read_cpuinfo", lambda: AVX2_HOST)
    import torch

    monkeypatch.setattr(torch, "__version__", "9.9.0")  # a torch upgrade builds anew
    assert cpu_sparse.cache_key() != key
    monkeypatch.undo()
    for change in ({"compiler": "c++ (Debian 13.1.0) 13.1.0"}, {"source_sha256": "0" * 64},
                   {"torch_cpu_capability": "AVX2"}, {"python": "cpython-313"}):
        assert cpu_sparse.cache_key({**base, **change}) != key, change


def test_build_goes_into_the_keyed_folder_with_its_description(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real build (cached by the test session elsewhere) is keyed; here a stand-in compiler records the call."""
    import torch.utils.cpp_extension as ext

    calls = {}

    def fake_load(**kw):  # noqa: ANN003, ANN202
        calls.update(kw)
        return "module"

    monkeypatch.setenv("SPARSEFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(ext, "load", fake_load)
    monkeypatch.setattr(cpu_sparse, "_compiler", lambda: ("/usr/bin/c++", "c++ 12"))
    monkeypatch.setattr(cpu_sparse.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert cpu_sparse._build() == "module"
    key = cpu_sparse.cache_key()
    assert calls["build_directory"] == str(tmp_path / "kernels" / f"csr_linear_{key}")
    assert calls["name"] == f"sparseforge_csr_linear_{key}" and "-march=native" in calls["extra_cflags"]
    recorded = json.loads((tmp_path / "kernels" / f"csr_linear_{key}" / "key.json").read_text())
    assert recorded == cpu_sparse.key_components()


def test_kernels_info_explains_a_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("SPARSEFORGE_CACHE", str(tmp_path))
    monkeypatch.setenv("SPARSEFORGE_NO_CPP", "1")
    assert main(["kernels", "info"]) == 0
    out = capsys.readouterr().out
    assert "status                disabled" in out and "SPARSEFORGE_NO_CPP=1" in out
    assert f"csr_linear_{cpu_sparse.cache_key()}" in out and "cpu features" in out
    monkeypatch.delenv("SPARSEFORGE_NO_CPP")

    def broken():  # noqa: ANN202
        raise RuntimeError("'ninja' not found on PATH (pip install ninja)")

    monkeypatch.setattr(cpu_sparse, "_state", {})
    monkeypatch.setattr(cpu_sparse, "_build", broken)
    assert main(["kernels", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "unavailable" and "pip install ninja" in info["fallback_reason"]
    assert info["key"] == cpu_sparse.cache_key() and info["library"] is None
    assert main(["kernels", "build"]) == 1
    assert capsys.readouterr().err.startswith("sparseforge: error: C++ kernel could not be built")


def test_kernels_build_and_info_with_the_real_kernel(capsys) -> None:
    import shutil

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    assert main(["kernels", "build"]) == 0
    out = capsys.readouterr().out
    assert f"csr_linear_{cpu_sparse.cache_key()}" in out and out.strip().endswith(cpu_sparse.cache_key())
    assert main(["kernels", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "loaded" and info["fallback_reason"] is None
    assert Path(info["library"]).parent == Path(info["build_dir"])


def test_build_force_removes_only_this_machines_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARSEFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_sparse, "_state", {})
    monkeypatch.setattr(cpu_sparse, "_build", lambda: "fresh")
    mine, other = cpu_sparse.build_dir(), tmp_path / "kernels" / "csr_linear_someotherhost"
    for d in (mine, other):
        d.mkdir(parents=True)
        (d / "stale.so").write_text("x")
    assert cpu_sparse.build_kernel(force=True) == "fresh"
    assert not mine.exists() and (other / "stale.so").exists()
