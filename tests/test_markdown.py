"""Markdown helpers (steerlab.markdown) and the judges' one Spearman (steerlab.judges.metrics)."""

import math

import pytest

from steerlab.judges.metrics import spearman
from steerlab.markdown import cell, table


def test_table_lines():
    assert table(["trait", "n", "rho"], [["evil", 65, "0.7704"], ("x", 1, 0.5)]) == [
        "| trait | n | rho |",
        "|---|---|---|",
        "| evil | 65 | 0.7704 |",
        "| x | 1 | 0.5 |",
    ]
    assert table(["a"], []) == ["| a |", "|---|"]


def test_cell_is_one_line_escaped_and_capped():
    assert cell("a |\nb" + "x" * 400, 10) == "a \\| bxxxx…"
    assert cell("  two\n\tlines  ") == "two lines"
    assert cell(0.5) == "0.5"
    assert len(cell("y" * 1000)) == 300


def test_spearman_and_where_it_is_undefined():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    for x, y in (([1, 2], [1, 2]), ([5, 5, 5], [1, 2, 3]), ([1, 2, 3], [7, 7, 7]), ([], [])):
        assert math.isnan(spearman(x, y))
