"""Schedules side by side: speedup over the sequential baseline, exposed communication against Tutel's.

Works on metrics alone, so predicted and measured runs compare the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moesim.analysis.metrics import Metrics

BASELINE = "sequential"
OVERLAP_BASELINE = "tutel"  # the best Tutel degree when tutel ran with degree=auto


@dataclass(frozen=True, slots=True)
class ComparisonRow:
    schedule: str
    metrics: Metrics
    knobs: str
    speedup_vs_sequential: float | None         # sequential iteration / this iteration
    exposed_comm_reduction_vs_tutel: float | None  # 1 - exposed / Tutel's exposed (0.4 = 40% less)

    def to_dict(self) -> dict[str, object]:
        return {"speedup_vs_sequential": self.speedup_vs_sequential,
                "exposed_comm_reduction_vs_tutel": self.exposed_comm_reduction_vs_tutel}


def compare_metrics(entries: Sequence[tuple[str, Metrics, str]]) -> list[ComparisonRow]:
    """One row per (schedule, metrics, knob summary), in the given order; the ratios are None when
    their baseline schedule is not among the entries (or its exposed communication is zero)."""
    by_name = {name: metrics for name, metrics, _ in entries}
    baseline, tutel = by_name.get(BASELINE), by_name.get(OVERLAP_BASELINE)
    rows = []
    for name, metrics, knobs in entries:
        speedup = baseline.iteration_time_s / metrics.iteration_time_s if baseline is not None else None
        reduction = None
        if tutel is not None and tutel.exposed_comm_s > 0:
            reduction = 1.0 - metrics.exposed_comm_s / tutel.exposed_comm_s
        rows.append(ComparisonRow(name, metrics, knobs, speedup, reduction))
    return rows
