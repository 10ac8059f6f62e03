"""Jane Austen's six novels from the Debian package ``r-cran-janeaustenr``: finding and reading it.

Nothing here downloads: :func:`ensure_austen` and :func:`read_austen_novels` look in the
cache folder (:func:`default_austen_root`) and the system-wide R library, and say what to run
when the package is missing -- ``sparseforge data fetch austen`` (:mod:`sparseforge.fetch`)
or the ``apt-get download`` + ``dpkg -x`` it performs.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .rdata import RObject, read_lazyload_db, read_rda

__all__ = ["AUSTEN_NOVELS", "AUSTEN_PACKAGE", "DATA_ENV_VAR", "austen_available", "default_austen_root",
           "ensure_austen", "read_austen_novels"]

#: Debian package holding the novels (``apt-get download r-cran-janeaustenr``).
AUSTEN_PACKAGE = "r-cran-janeaustenr"
#: Environment variable naming sparseforge's data folder; the novels go to ``$SPARSEFORGE_DATA/janeaustenr``.
DATA_ENV_VAR = "SPARSEFORGE_DATA"
#: R object name -> title of the six novels, in publication order (the package's own order).
AUSTEN_NOVELS: dict[str, str] = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
# where ``dpkg -x`` puts the R package, and where ``apt-get install`` puts it system-wide
_PKG_SUBDIR = Path("usr/lib/R/site-library/janeaustenr")
_SYSTEM_DIRS = (Path("/usr/lib/R/site-library/janeaustenr"), Path("/usr/local/lib/R/site-library/janeaustenr"))


def default_austen_root() -> Path:
    """``$SPARSEFORGE_DATA/janeaustenr`` if that variable is set, else ``~/.cache/sparseforge/janeaustenr``."""
    base = os.environ.get(DATA_ENV_VAR)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "sparseforge") / "janeaustenr"


def _package_dir(root: Path) -> Path | None:
    """The R package folder (holding ``data/``) under ``root``, for either layout we accept."""
    for cand in (root, root / _PKG_SUBDIR):
        data = cand / "data"
        if (data / "Rdata.rdx").is_file() and (data / "Rdata.rdb").is_file():
            return cand
        if data.is_dir() and any(p.suffix.lower() in (".rda", ".rdata") for p in data.iterdir()):
            return cand
    return None


def austen_available(root: str | os.PathLike[str] | None = None) -> bool:
    """True if the Austen novels are already on disk (never downloads)."""
    try:
        ensure_austen(root, download=False)
    except ConfigError:
        return False
    return True


def ensure_austen(root: str | os.PathLike[str] | None = None, *, download: bool = False) -> Path:
    """Find the extracted ``janeaustenr`` R package and return its folder.

    Looks in ``root`` (default :func:`default_austen_root`), which may be either the package
    folder itself (the one holding ``data/``) or the target of ``dpkg -x`` (the package then
    lies in ``usr/lib/R/site-library/janeaustenr`` below it); without ``root`` also in the
    system-wide install of ``apt-get install r-cran-janeaustenr``. Nothing is downloaded unless
    the caller asks for it with ``download=True`` (then :func:`sparseforge.fetch.fetch_austen`
    runs, as ``sparseforge data fetch austen`` does).

    Returns:
        the package folder, e.g. ``~/.cache/sparseforge/janeaustenr/usr/lib/R/site-library/janeaustenr``.

    Raises:
        ConfigError: the novels are not there (the message says how to fetch them), or the
            requested fetch failed.
    """
    explicit = root is not None
    target = Path(root).expanduser() if explicit else default_austen_root()
    for cand in (target,) if explicit else (target, *_SYSTEM_DIRS):
        found = _package_dir(cand)
        if found is not None:
            return found
    if download:
        from ..fetch import fetch_austen

        return fetch_austen(target)
    where = f" --root {target}" if explicit else ""
    raise ConfigError(
        f"Jane Austen corpus not found in {target}; fetch it once with `sparseforge data fetch austen{where}` "
        f"(or by hand: cd /tmp && apt-get download {AUSTEN_PACKAGE} && dpkg -x {AUSTEN_PACKAGE}_*.deb {target}; "
        f"or `apt-get install {AUSTEN_PACKAGE}`, or set ${DATA_ENV_VAR} / pass root= to a folder holding it)")


@functools.lru_cache(maxsize=4)
def _parse_austen(package_dir: str, signature: tuple[Any, ...]) -> tuple[tuple[str, str], ...]:
    del signature  # part of the cache key only: a re-extracted package is parsed again
    data_dir = Path(package_dir) / "data"
    if (data_dir / "Rdata.rdx").is_file():
        objects = read_lazyload_db(data_dir / "Rdata")
    else:
        objects = {}
        for path in sorted(data_dir.iterdir()):
            if path.suffix.lower() in (".rda", ".rdata"):
                objects.update(read_rda(path))
    novels = []
    for key, title in AUSTEN_NOVELS.items():
        obj = objects.get(key)
        lines = obj.value if isinstance(obj, RObject) else obj
        if not isinstance(lines, list) or not all(isinstance(s, str) or s is None for s in lines):
            raise ConfigError(
                f"{data_dir} does not hold the novel {key!r} as a character vector; found objects {sorted(objects)}"
            )
        # Gutenberg line breaks are kept: the model learns them like any other character
        novels.append((title, "\n".join(s or "" for s in lines).strip("\n") + "\n"))
    return tuple(novels)


def read_austen_novels(root: str | os.PathLike[str] | None = None, *, download: bool = False) -> dict[str, str]:
    """The six novels as ``{title: text}`` in publication order (lines joined with ``"\\n"``).

    ``root`` and ``download`` are passed to :func:`ensure_austen`. Parsed once per process.
    """
    pkg = ensure_austen(root, download=download)
    data_dir = pkg / "data"
    signature = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in data_dir.iterdir()))
    return dict(_parse_austen(str(pkg), signature))
