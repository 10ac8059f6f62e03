"""The one table formatter: alignment by hand, header rules, key/value listings, markdown, bad input."""

from __future__ import annotations

import pytest

from sparseforge.errors import ConfigError
from sparseforge.tables import markdown_table, text_table


def test_text_table_aligns_per_column_and_strips_trailing_spaces() -> None:
    out = text_table(["name", "n", "note"], [["a", 1, ""], ["long", 100, "x"]], align="lrl")
    assert out.splitlines() == ["name    n  note",
                                "----  ---  ----",
                                "a       1",
                                "long  100  x"]


def test_text_table_one_letter_aligns_every_column_and_no_header_means_no_rule() -> None:
    assert text_table(None, [("key", "value"), ("k", "v")]) == "key  value\nk    v"
    assert text_table(None, [(1, 22), (333, 4)], align="r", sep=" ") == "  1 22\n333  4"
    assert text_table(["a", "bb"], []) == "a  bb\n-  --"
    assert text_table(None, []) == ""


def test_markdown_table() -> None:
    assert markdown_table(["method", "acc"], [["rigl", 0.9], ["set", "-"]]) == (
        "| method | acc |\n|---|---|\n| rigl | 0.9 |\n| set | - |")


def test_bad_tables_are_refused() -> None:
    with pytest.raises(ConfigError, match="every row needs 2 cells.*rows \\[2\\]"):
        text_table(["a", "b"], [[1, 2], [1]])
    with pytest.raises(ConfigError, match="align has 3 letters for 2 columns"):
        text_table(["a", "b"], [[1, 2]], align="lrl")
    with pytest.raises(ConfigError, match="align must be a string of 'l'.*'c'"):
        text_table(["a"], [[1]], align="c")
    with pytest.raises(ConfigError, match="every row needs 2 cells"):
        markdown_table(["a", "b"], [[1, 2, 3]])
