"""The one table formatter: aligned plain text for terminals, and markdown for result files.

Every table sparseforge prints or writes (sparsity reports, demo results, materialize and 2:4
decisions, ``sparseforge kernels info`` / ``data status``, benchmark tables) goes through
:func:`text_table` or :func:`markdown_table`, so they share one alignment rule::

    table = text_table(["layer", "sparsity %"], [["fc1.weight", "90.00"], ["fc2.weight", "50.00"]], align="lr")
    assert table.splitlines() == ["layer       sparsity %",
                                  "----------  ----------",
                                  "fc1.weight       90.00",
                                  "fc2.weight       50.00"]
"""

from __future__ import annotations

from typing import Any, Sequence

from .errors import ConfigError

__all__ = ["text_table", "markdown_table"]


def _aligns(align: str, ncols: int) -> str:
    if not isinstance(align, str) or not align or set(align) - {"l", "r"}:
        raise ConfigError(f"align must be a string of 'l' (left) and 'r' (right), one per column or one for all; "
                          f"got {align!r}")
    if len(align) == 1:
        return align * ncols
    if len(align) != ncols:
        raise ConfigError(f"align has {len(align)} letters for {ncols} columns; give one per column or one for all")
    return align


def text_table(header: Sequence[Any] | None, rows: Sequence[Sequence[Any]], *, align: str = "l",
               sep: str = "  ") -> str:
    """An aligned plain-text table; each cell is ``str(cell)``.

    Args:
        header: column names, underlined by a rule of dashes as wide as each column; ``None`` for
            a table without header and rule (a key/value listing).
        rows: the rows, each with as many cells as the header (or as the first row).
        align: ``"l"``/``"r"`` per column (``"llrr"``), or one letter for every column.
        sep: text between columns.

    Trailing spaces are stripped from every line. A table with a header and no rows is the header
    and its rule.

    Raises:
        ConfigError: rows of different lengths, or an ``align`` that is not ``l``/``r`` per column.
    """
    cells = [[str(c) for c in r] for r in ([header] if header is not None else []) + list(rows)]
    if not cells:
        return ""
    ncols = len(cells[0])
    bad = [i for i, r in enumerate(cells) if len(r) != ncols]
    if bad:
        raise ConfigError(f"every row needs {ncols} cells (the {'header' if header is not None else 'first row'}'s); "
                          f"rows {bad[:5]} have {[len(cells[i]) for i in bad[:5]]}")
    how = _aligns(align, ncols)
    widths = [max(len(r[i]) for r in cells) for i in range(ncols)]

    def line(r: Sequence[str]) -> str:
        return sep.join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, how)).rstrip()

    lines = [line(r) for r in cells]
    if header is not None:
        lines.insert(1, sep.join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table: ``| a | b |``, then ``|---|---|``, then one line per row.

    Raises:
        ConfigError: a row whose cell count differs from the header's.
    """
    bad = [i for i, r in enumerate(rows) if len(r) != len(header)]
    if bad:
        raise ConfigError(f"every row needs {len(header)} cells (the header's); rows {bad[:5]} differ")
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
