"""Tables: a tidy pandas DataFrame of spans (optional extra) and plain text tables for the CLI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from moesim.timeline import Timeline

if TYPE_CHECKING:
    import pandas as pd

SPAN_COLUMNS = ("rank", "stream", "task", "op", "name", "kind", "phase", "layer",
                "start_s", "end_s", "duration_s", "flops", "bytes")

_MISSING = "-"
_NUMBER_SUFFIXES = ("%", "x")  # "12.5%" and "1.30x" still read as numbers and align right


def to_dataframe(timeline: Timeline) -> pd.DataFrame:
    """One row per span with ``SPAN_COLUMNS``; enums as their string values, ``layer`` as nullable Int64.

    Needs pandas (``pip install moesim[notebooks]``); raises ImportError saying so when it is missing.
    """
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("to_dataframe needs pandas: pip install moesim[notebooks]") from err
    spans = timeline.spans
    columns: dict[str, object] = {
        "rank": [s.rank for s in spans],
        "stream": [s.stream.value for s in spans],
        "task": [s.task for s in spans],
        "op": [s.op for s in spans],
        "name": [s.name for s in spans],
        "kind": [s.kind.value for s in spans],
        "phase": [s.phase.value for s in spans],
        "layer": pd.array([s.layer for s in spans], dtype="Int64"),
        "start_s": [float(s.start) for s in spans],
        "end_s": [float(s.end) for s in spans],
        "duration_s": [float(s.end - s.start) for s in spans],
        "flops": [float(s.flops) for s in spans],
        "bytes": [float(s.bytes) for s in spans],
    }
    frame = pd.DataFrame(columns, columns=list(SPAN_COLUMNS))
    return frame.astype({"rank": "int64", "task": "int64", "op": "int64", "stream": "object",
                         "name": "object", "kind": "object", "phase": "object"})


def metrics_table(rows: Sequence[Mapping[str, object]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain aligned text table: header, a rule, one line per row.

    ``columns`` are ``(key, header)`` pairs, in display order. A column whose cells are all numbers
    (or strings that read as numbers, such as ``"12.5"``, ``"40.0%"``, ``"1.30x"``) is right-aligned;
    others are left-aligned. Missing keys and ``None`` print as ``-``; floats print with 4
    significant digits (format them beforehand for anything else).
    """
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    right = [_numeric_column([line[i] for line in cells]) for i in range(len(columns))]
    widths = [max([len(headers[i]), *(len(line[i]) for line in cells)]) for i in range(len(columns))]

    def fmt(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines.extend(fmt(line) for line in cells)
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _numeric_column(values: Sequence[str]) -> bool:
    present = [v for v in values if v != _MISSING]
    return bool(present) and all(_reads_as_number(v) for v in present)


def _reads_as_number(text: str) -> bool:
    for suffix in _NUMBER_SUFFIXES:
        text = text.removesuffix(suffix)
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
