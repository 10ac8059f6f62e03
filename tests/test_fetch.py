"""Downloads happen only on request (`sparseforge data fetch`), never as a side effect of a library call."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import sparseforge.fetch as fetch_mod
from sparseforge.cli import main
from sparseforge.errors import ConfigError
from sparseforge.text import AUSTEN_NOVELS, load_text_corpus, read_austen_novels

from test_text import _fake_novels, _write_lazyload_db  # noqa: E402  (the tests' own R-data writer)


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError(f"a library call ran a subprocess: {a[:1]}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_loading_a_missing_corpus_never_fetches_and_says_how(tmp_path: Path, no_subprocess) -> None:
    with pytest.raises(ConfigError, match=r"not found in .*sparseforge data fetch austen --root"):
        load_text_corpus("austen", root=tmp_path / "empty")
    with pytest.raises(ConfigError, match="sparseforge data fetch austen"):
        read_austen_novels(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def _deb(tmp_path: Path) -> Path:
    if shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None:
        pytest.skip("dpkg-deb/dpkg not available")
    pkg = tmp_path / "pkg"
    _write_lazyload_db(pkg / "usr/lib/R/site-library/janeaustenr/data", _fake_novels())
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: r-cran-janeaustenr\nVersion: 1.0-1\nArchitecture: all\n"
                                        "Maintainer: test <t@example.org>\nDescription: test package\n")
    deb = tmp_path / "r-cran-janeaustenr_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


def test_data_fetch_extracts_a_local_deb_and_the_corpus_then_loads(tmp_path: Path, capsys) -> None:
    root = tmp_path / "austen"
    root.mkdir()
    shutil.copy(_deb(tmp_path), root)  # a .deb already in the folder: extracted without any download
    assert main(["data", "fetch", "austen", "--root", str(root)]) == 0
    assert "usr/lib/R/site-library/janeaustenr" in capsys.readouterr().out
    texts = read_austen_novels(root)
    assert list(texts) == list(AUSTEN_NOVELS.values())
    # fetching again is a no-op that says where it is
    assert main(["data", "fetch", "austen", "--root", str(root)]) == 0
    assert "janeaustenr" in capsys.readouterr().out


def test_data_status_looks_and_fetches_nothing(no_subprocess, capsys) -> None:
    assert main(["data", "status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["austen", "fashion-mnist", "bible"]


def test_installing_a_system_package_needs_root(monkeypatch: pytest.MonkeyPatch, no_subprocess) -> None:
    monkeypatch.setattr(fetch_mod.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(fetch_mod.shutil, "which", lambda name: "/usr/bin/" + name)
    with pytest.raises(ConfigError, match="needs root; run as root: apt-get update && apt-get install -y bible-kjv"):
        fetch_mod.install_package("bible-kjv")


def test_unknown_source_and_root_for_a_system_package_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown data source 'mnist'"):
        fetch_mod.fetch("mnist")
    with pytest.raises(ConfigError, match="--root applies to austen only"):
        fetch_mod.fetch("bible", root="/tmp/x")
