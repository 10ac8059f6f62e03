"""The one place sparseforge downloads anything: the Debian packages of its offline data, on request.

Library calls never fetch; ``sparseforge data fetch NAME`` (and the install scripts) do:

* ``austen`` (:func:`fetch_austen`): ``apt-get download r-cran-janeaustenr`` -- no root
  rights needed, only the Debian package registry -- and ``dpkg -x`` into a temporary folder
  that is renamed into place when complete, so an interrupted fetch never leaves a
  half-extracted corpus behind;
* ``fashion-mnist``, ``bible`` (:func:`install_package`): ``apt-get install`` of
  ``dataset-fashion-mnist`` / ``bible-kjv``, which needs root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import ConfigError
from .text.austen import AUSTEN_PACKAGE, DATA_ENV_VAR, _package_dir, default_austen_root

__all__ = ["DATA_SOURCES", "fetch", "fetch_austen", "install_package", "status"]

_APT_TIMEOUT_S = 300

#: What ``sparseforge data fetch`` can fetch: name -> (Debian package, what it is).
DATA_SOURCES = {
    "austen": (AUSTEN_PACKAGE, "Jane Austen's six novels (LM training and calibration text), unpacked into the cache"),
    "fashion-mnist": ("dataset-fashion-mnist", "Fashion-MNIST (60k/10k 28x28 images), system-wide; needs root"),
    "bible": ("bible-kjv", "the King James Bible (a second calibration text), system-wide; needs root"),
}


def fetch_austen(root: str | os.PathLike[str] | None = None) -> Path:
    """Fetch and extract ``r-cran-janeaustenr`` into ``root`` (default :func:`~.austen.default_austen_root`).

    A ``r-cran-janeaustenr_*.deb`` already lying in ``root`` is extracted instead of
    downloading. Returns the package folder; if it is already there, returns it at once.

    Raises:
        ConfigError: the fetch failed (no ``apt-get``/``dpkg``, no registry, a non-empty
            ``root`` that holds something else); the message says what to run by hand.
    """
    target = Path(root).expanduser() if root is not None else default_austen_root()
    found = _package_dir(target)
    if found is not None:
        return found
    how = (f"get it by hand with: cd /tmp && apt-get download {AUSTEN_PACKAGE} && dpkg -x {AUSTEN_PACKAGE}_*.deb "
           f"{target} (or `apt-get install {AUSTEN_PACKAGE}`, or set ${DATA_ENV_VAR})")
    try:
        _fetch_into(target)
    except (OSError, subprocess.SubprocessError) as e:
        found = _package_dir(target)  # another process may have fetched it meanwhile
        if found is not None:
            return found
        raise ConfigError(f"fetching the Jane Austen corpus into {target} failed ({e}); {how}") from e
    found = _package_dir(target)
    if found is None:
        raise ConfigError(f"the {AUSTEN_PACKAGE} package extracted into {target} holds no R data files; {how}")
    return found


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=_APT_TIMEOUT_S, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise subprocess.SubprocessError(f"`{' '.join(cmd)}` exited with {done.returncode}: {tail[0]}")


def _fetch_into(target: Path) -> None:
    if target.exists() and any(p for p in target.iterdir() if not p.name.endswith(".deb")):
        raise OSError(f"{target} exists and is not empty but holds no janeaustenr package")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".janeaustenr-", dir=target.parent) as tmp:
        work = Path(tmp)
        debs = sorted(target.glob(f"{AUSTEN_PACKAGE}_*.deb")) if target.is_dir() else []
        if not debs:
            if shutil.which("apt-get") is None:
                raise OSError("apt-get is not available on this system")
            _run(["apt-get", "download", AUSTEN_PACKAGE], cwd=work)
            debs = sorted(work.glob(f"{AUSTEN_PACKAGE}_*.deb"))
            if not debs:
                raise OSError(f"apt-get download left no {AUSTEN_PACKAGE}_*.deb")
        if shutil.which("dpkg") is None:
            raise OSError("dpkg is not available on this system")
        extracted = work / "extracted"
        _run(["dpkg", "-x", str(debs[-1].resolve()), str(extracted)], cwd=work)
        if target.is_dir():  # only .deb files in it (checked above): keep them next to the extraction
            for deb in target.iterdir():
                os.replace(deb, extracted / deb.name)
            target.rmdir()
        os.replace(extracted, target)


def install_package(package: str) -> None:
    """``apt-get install -y PACKAGE`` (after ``apt-get update``); needs root and apt.

    Raises:
        ConfigError: not root, no apt-get, or apt failed; the message gives the command to run.
    """
    how = f"run as root: apt-get update && apt-get install -y {package}"
    if shutil.which("apt-get") is None:
        raise ConfigError(f"cannot install {package}: apt-get is not available on this system ({how})")
    if os.geteuid() != 0:
        raise ConfigError(f"installing {package} needs root; {how}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_APT_TIMEOUT_S, check=False, env=env)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ConfigError(f"`{' '.join(cmd)}` exited with {done.returncode}: {tail[0]}")


def fetch(name: str, *, root: str | os.PathLike[str] | None = None) -> str:
    """Fetch one of :data:`DATA_SOURCES` unless it is already there; return a line saying where it is.

    ``root`` applies to ``austen`` only (its cache folder).
    """
    if name not in DATA_SOURCES:
        raise ConfigError(f"unknown data source {name!r}; allowed: {sorted(DATA_SOURCES)}")
    if name == "austen":
        return f"austen: {fetch_austen(root)}"
    if root is not None:
        raise ConfigError(f"--root applies to austen only; {name} installs system-wide")
    if _available(name):
        return f"{name}: already installed ({DATA_SOURCES[name][0]})"
    install_package(DATA_SOURCES[name][0])
    if not _available(name):
        raise ConfigError(f"{DATA_SOURCES[name][0]} installed but {name} is still not found")
    return f"{name}: installed {DATA_SOURCES[name][0]}"


def _available(name: str) -> bool:
    if name == "fashion-mnist":
        from .data import fashion_mnist_available

        return fashion_mnist_available()
    return shutil.which("bible") is not None


def status() -> dict[str, str]:
    """Where each of :data:`DATA_SOURCES` is, or ``"missing"``; looks only, never fetches."""
    from .text.austen import austen_available, ensure_austen

    out = {"austen": str(ensure_austen()) if austen_available() else "missing"}
    for name in ("fashion-mnist", "bible"):
        out[name] = "installed" if _available(name) else "missing"
    return out

