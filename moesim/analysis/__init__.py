"""Analysis of a Timeline (predicted or measured): metrics, Chrome trace export, Gantt charts, tables.

Everything here takes a ``moesim.timeline.Timeline`` and returns a value; only the ``write_*``
functions and a ``path=`` argument write files. The Gantt functions load matplotlib on first use.
"""

from typing import Any

from moesim.analysis.chrome_trace import chrome_trace, write_chrome_trace
from moesim.analysis.metrics import Metrics, RankMetrics, compute_metrics
from moesim.analysis.tables import metrics_table, to_dataframe

__all__ = [
    "Metrics",
    "RankMetrics",
    "chrome_trace",
    "compute_metrics",
    "metrics_table",
    "plot_timeline",
    "plot_timelines",
    "to_dataframe",
    "write_chrome_trace",
]


def __getattr__(name: str) -> Any:
    if name in {"plot_timeline", "plot_timelines"}:
        from moesim.analysis import gantt

        return getattr(gantt, name)
    raise AttributeError(f"module 'moesim.analysis' has no attribute {name!r}")
