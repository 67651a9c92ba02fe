"""The tidy span table (pandas) and the CLI's plain text table."""

from __future__ import annotations

import sys

import pytest

from moesim.analysis.tables import SPAN_COLUMNS, metrics_table, to_dataframe
from moesim.plan import StreamKind
from moesim.workload.ops import Phase


@pytest.fixture
def small(make_span, make_timeline):
    return make_timeline([
        make_span(0, StreamKind.COMPUTE, 0.0, 0.5, task=0, layer=2, flops=7.0, name="L2.fc1"),
        make_span(0, StreamKind.DP_COMM, 0.25, 1.0, task=1, nbytes=64.0, name="bucket0"),
    ])


def test_dataframe_has_one_row_per_span_with_string_enums(small):
    pytest.importorskip("pandas")
    frame = to_dataframe(small)
    assert list(frame.columns) == list(SPAN_COLUMNS)
    assert len(frame) == 2
    first, second = frame.iloc[0], frame.iloc[1]
    assert (first["stream"], first["kind"], first["phase"], first["name"]) == ("compute", "matmul", "forward",
                                                                              "L2.fc1")
    assert first["layer"] == 2 and first["flops"] == 7.0
    assert second["duration_s"] == pytest.approx(0.75)
    assert second["phase"] == Phase.GRAD_SYNC.value and second["bytes"] == 64.0
    assert frame["layer"].isna().tolist() == [False, True]


def test_dataframe_without_pandas_names_the_extra(small, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"moesim\[notebooks\]"):
        to_dataframe(small)


def test_metrics_table_aligns_numbers_right_and_text_left():
    rows: list[dict[str, object]] = [{"name": "sequential", "ms": "12.50", "share": "40.0%", "n": 8},
                                     {"name": "lancet", "ms": "9.25", "share": "5.5%"}]
    columns = [("name", "schedule"), ("ms", "iteration ms"), ("share", "share"), ("n", "n")]
    table = metrics_table(rows, columns)
    assert table.splitlines() == [
        "schedule    iteration ms  share  n",
        "----------  ------------  -----  -",
        "sequential         12.50  40.0%  8",
        "lancet              9.25   5.5%  -",
    ]


def test_metrics_table_formats_floats_to_four_significant_digits():
    table = metrics_table([{"x": 0.123456, "y": None}], [("x", "x"), ("y", "why")])
    assert table.splitlines() == ["     x  why", "------  ---", "0.1235  -"]
