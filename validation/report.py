"""The validation report: predict whole iterations with a calibrated spec, run them for real, compare.

Steps: for each workload, predict every schedule with the simulator (the calibrated spec of this
machine) -> run the same plans for real in one torchrun job (run_plan) -> per schedule the predicted
and the measured median iteration, the error, and over all of them the MAPE -> whether the predicted
ranking of the schedules matches the measured one -> optionally both timelines as Chrome traces.
The calibration that made the spec saw microbenchmarks only, never these workloads.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moesim.analysis.chrome_trace import write_chrome_trace
from moesim.analysis.tables import metrics_table
from moesim.api import run_schedule, scenario
from moesim.plan import ExecutionPlan
from moesim.timeline import Timeline
from moesim.validation import breakdown
from moesim.validation.launch import torchrun

_FAMILY_ALPHA = 0.05  # the chance that any pair of a workload is called apart when none differs

WORKLOADS = ("tiny-moe-a", "tiny-moe-b")


@dataclass(frozen=True)
class Variant:
    """One schedule with its settings, e.g. tutel at degree 2; ``label`` names it in the report."""

    label: str
    schedule: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The run_plan spelling: ``tutel:degree=2``."""
        knobs = ",".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.schedule}:{knobs}" if knobs else self.schedule


VARIANTS = (
    Variant("sequential", "sequential"),
    Variant("tutel-d2", "tutel", {"degree": 2}),
    Variant("tutel-d4", "tutel", {"degree": 4}),
    Variant("lancet", "lancet"),
)


@dataclass(frozen=True)
class CollectiveCalls:
    """One collective part's calls (role and phase, e.g. ``dispatch:forward``): the predicted mean call and
    the measured calls of every iteration and rank, from the group's rendezvous to the end (the predicted
    call also holds the modelled wait for the last member, ``rendezvous_skew``, at most its cap). A mean
    well above the median is a tail: calls that stall, which an exposed collective pays in full but a
    hidden one only where the stall outlasts the compute beside it."""

    part: str
    predicted_mean_s: float
    measured_calls: int
    measured_mean_s: float
    measured_median_s: float
    measured_p90_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.part, "predicted_mean_s": self.predicted_mean_s, "measured_calls": self.measured_calls,
                "measured_mean_s": self.measured_mean_s, "measured_median_s": self.measured_median_s,
                "measured_p90_s": self.measured_p90_s}


@dataclass(frozen=True)
class Row:
    workload: str
    variant: str
    predicted_s: float
    measured_s: float                  # median over the measured iterations
    measured_spread_s: float           # half the range of the measured iterations
    measured_iterations_s: tuple[float, ...]
    # where the time goes (``breakdown``): (part, predicted s, measured s = median over iterations), mean
    # over ranks, the largest |measured - predicted| first
    parts: tuple[tuple[str, float, float], ...] = ()
    # each collective part's calls, predicted beside measured (``compare_collectives``)
    collectives: tuple[CollectiveCalls, ...] = ()

    @property
    def error(self) -> float:
        """Signed relative error of the prediction (0.1 = predicted 10% too long)."""
        return self.predicted_s / self.measured_s - 1.0


@dataclass(frozen=True)
class Ranking:
    workload: str
    predicted: tuple[str, ...]         # fastest first
    measured: tuple[str, ...]
    match: bool                        # the two orders are identical
    match_beyond_noise: bool           # every pair the measurement separates (``separated``) agrees
    separated: tuple[tuple[str, str], ...] = ()  # (faster, slower) pairs told apart by a rank-sum test


@dataclass(frozen=True)
class ValidationReport:
    hardware: str
    rows: tuple[Row, ...]
    rankings: tuple[Ranking, ...]
    environment: Mapping[str, Any]
    traces: tuple[str, ...] = ()

    @property
    def mape(self) -> float:
        return statistics.fmean(abs(row.error) for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hardware": self.hardware,
            "mape": self.mape,
            "rows": [{"workload": r.workload, "schedule": r.variant, "predicted_s": r.predicted_s,
                      "measured_s": r.measured_s, "measured_spread_s": r.measured_spread_s,
                      "measured_iterations_s": list(r.measured_iterations_s), "error": r.error,
                      "parts": [{"part": part, "predicted_s": p, "measured_s": m} for part, p, m in r.parts],
                      "collectives": [c.to_dict() for c in r.collectives]}
                     for r in self.rows],
            "rankings": [{"workload": k.workload, "predicted": list(k.predicted), "measured": list(k.measured),
                          "match": k.match, "match_beyond_noise": k.match_beyond_noise,
                          "separated": [list(pair) for pair in k.separated]} for k in self.rankings],
            "environment": dict(self.environment),
            "traces": list(self.traces),
        }


def validate(
    hardware: str,
    *,
    workloads: Sequence[str] = WORKLOADS,
    variants: Sequence[Variant] = VARIANTS,
    nproc: int = 2,
    warmup: int = 2,
    iterations: int = 5,
    overrides: Mapping[str, Any] | None = None,
    trace_dir: Path | None = None,
    timeout_s: float = 1800,
) -> ValidationReport:
    """Predict and measure every (workload, variant) on one host of ``nproc`` ranks."""
    from moesim.validation.run_plan import load_measured

    rows: list[Row] = []
    rankings: list[Ranking] = []
    environment: Mapping[str, Any] = {}
    traces: list[str] = []
    for workload in workloads:
        scn = scenario(workload, hardware, 1, overrides)
        assert scn.cluster.num_gpus == nproc, f"{hardware} has {scn.cluster.num_gpus} ranks, the job {nproc}"
        predicted = {v.label: run_schedule(replace(scn, schedule_settings=dict(v.settings)), v.schedule)
                     for v in variants}
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "measured.json"
            args = ["--model", workload, "--hardware", hardware, "--nodes", "1", "--warmup", str(warmup),
                    "--iterations", str(iterations), "--out", str(out)]
            args += [arg for key, value in (overrides or {}).items() for arg in ("--set", f"{key}={value}")]
            args += [arg for v in variants for arg in ("--schedule", v.spec)]
            torchrun("moesim.validation.run_plan", args, nproc, timeout_s=timeout_s)
            measured = load_measured(out)
        for v in variants:
            run = measured[v.spec]
            times = tuple(run.iteration_times_s)
            guess = predicted[v.label]
            rows.append(Row(workload, v.label, guess.metrics.iteration_time_s,
                            statistics.median(times), (max(times) - min(times)) / 2, times,
                            compare_parts(breakdown.timeline_parts(guess.plan, guess.timeline), run.parts_s),
                            compare_collectives(guess.plan, guess.timeline, run.collective_calls_s)))
            environment = run.environment
            if trace_dir is not None:
                traces += _write_traces(trace_dir / workload, v.label, guess.timeline, run.timeline)
        rankings.append(_ranking(workload, [r for r in rows if r.workload == workload]))
    return ValidationReport(hardware, tuple(rows), tuple(rankings), environment, tuple(traces))


def compare_parts(predicted: Mapping[str, float],
                  measured: Mapping[str, Sequence[float]]) -> tuple[tuple[str, float, float], ...]:
    """(part, predicted, measured median) for every part either side has, the largest difference first (ties
    by name). Without measured parts (a file from before they were kept) there is nothing to compare; a file
    from before the waits were told apart counts them in ``IDLE``, so the predicted waits are folded into it."""
    if not measured:
        return ()
    medians = {part: statistics.median(values) for part, values in measured.items() if values}
    if breakdown.HANDOVER not in medians:
        folded = sum(seconds for part, seconds in predicted.items() if breakdown.is_wait(part))
        predicted = {part: seconds for part, seconds in predicted.items() if not breakdown.is_wait(part)}
        predicted[breakdown.IDLE] = predicted.get(breakdown.IDLE, 0.0) + folded
    rows = [(part, predicted.get(part, 0.0), medians.get(part, 0.0)) for part in sorted({*predicted, *medians})]
    return tuple(sorted(rows, key=lambda row: (-abs(row[2] - row[1]), row[0])))


def compare_collectives(plan: ExecutionPlan, predicted: Timeline,
                        measured: Mapping[str, Sequence[float]]) -> tuple[CollectiveCalls, ...]:
    """Per collective part the measured calls have: the predicted timeline's mean call of that part and the
    measured calls' count, mean, median and 90th percentile (nearest rank), the part with the most measured
    time first (ties by name). Empty for a measured file from before the calls were kept."""
    spans: dict[str, list[float]] = {}
    for span in predicted.spans:
        if span.kind.is_collective:
            spans.setdefault(breakdown.part_of(plan.graph.ops[span.op]), []).append(span.duration)
    rows = []
    for part, calls in measured.items():
        if not calls:
            continue
        ordered = sorted(calls)
        rows.append(CollectiveCalls(part, statistics.fmean(spans[part]) if part in spans else 0.0, len(calls),
                                    statistics.fmean(calls), statistics.median(calls),
                                    ordered[math.ceil(0.9 * len(ordered)) - 1]))
    return tuple(sorted(rows, key=lambda row: (-row.measured_mean_s * row.measured_calls, row.part)))


def _ranking(workload: str, rows: Sequence[Row]) -> Ranking:
    """The two orders, and whether the prediction orders every pair that the measurement separates: a
    two-sided Mann-Whitney rank-sum test on the two schedules' measured iterations (run interleaved in
    blocks, so the host's drift weighs on both alike), over all pairs of the workload at a family-wise 5%
    (Holm's step-down: with 4 schedules, 6 pairs tested at 5% each would call one of them apart by chance
    in about a quarter of runs)."""
    predicted = tuple(r.variant for r in sorted(rows, key=lambda r: r.predicted_s))
    measured = tuple(r.variant for r in sorted(rows, key=lambda r: r.measured_s))
    pairs = [(rank_sum_z(a.measured_iterations_s, b.measured_iterations_s), a, b)
             for a, b in itertools.combinations(rows, 2)]
    tests = sorted(((rank_sum_p(z), z, a, b) for z, a, b in pairs), key=lambda test: test[0])
    separated, agree = [], True
    for position, (p_value, z, a, b) in enumerate(tests):
        if p_value > _FAMILY_ALPHA / (len(tests) - position):
            break  # Holm: this pair and every larger p-value stay undecided
        faster, slower = (a, b) if z > 0 else (b, a)
        separated.append((faster.variant, slower.variant))
        agree = agree and faster.predicted_s < slower.predicted_s
    return Ranking(workload, predicted, measured, predicted == measured, agree, tuple(separated))


def rank_sum_p(z: float) -> float:
    """The two-sided p-value of a standard-normal ``z``."""
    return math.erfc(abs(z) / math.sqrt(2))


def rank_sum_z(first: Sequence[float], second: Sequence[float]) -> float:
    """The Mann-Whitney statistic that ``first`` runs faster than ``second`` (ties count half), as a z-score
    under the normal approximation (> 1.96: faster at 5%, two-sided); 0 with fewer than 2 samples."""
    n, m = len(first), len(second)
    if n < 2 or m < 2:
        return 0.0
    u = sum((x < y) + 0.5 * (x == y) for x in first for y in second)
    return (u - n * m / 2) / math.sqrt(n * m * (n + m + 1) / 12)


def _write_traces(folder: Path, label: str, predicted: Any, measured: Any) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{label}.predicted.json", folder / f"{label}.measured.json"]
    write_chrome_trace(predicted, paths[0])
    write_chrome_trace(measured, paths[1])
    return [str(p) for p in paths]


def write_report(report: ValidationReport, path: Path) -> Path:
    path.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    return path


_PARTS_SHOWN = 4  # parts per schedule in the text report's "where the error is"
_CALLS_SHOWN = 2  # collective parts per schedule in its "collective calls"


def render_text(report: ValidationReport) -> str:
    """The report as `moesim validate` prints it: the table, MAPE, rankings, where the error is, collective calls."""
    lines: list[str] = []
    rows = [{"workload": r.workload, "schedule": r.variant, "predicted": f"{r.predicted_s * 1e3:.1f}",
             "measured": f"{r.measured_s * 1e3:.1f}", "spread": f"±{r.measured_spread_s * 1e3:.1f}",
             "error": f"{r.error:+.1%}"} for r in report.rows]
    lines.append(f"validation on {report.hardware}: {report.environment.get('world_size')} ranks, "
                 f"{report.environment.get('backend')}, torch {report.environment.get('torch')}")
    columns = [("workload", "workload"), ("schedule", "schedule"), ("predicted", "predicted ms"),
               ("measured", "measured ms"), ("spread", "measured spread"), ("error", "error")]
    lines.append(metrics_table(rows, columns))
    lines.append(f"\nMAPE {report.mape:.1%}")
    for ranking in report.rankings:
        verdict = "matches" if ranking.match else (
            "differs only where the measurement cannot tell the schedules apart" if ranking.match_beyond_noise
            else "differs")
        told = ", ".join(f"{fast} < {slow}" for fast, slow in ranking.separated) or "none"
        lines.append(f"{ranking.workload}: predicted {' < '.join(ranking.predicted)}; "
                     f"measured {' < '.join(ranking.measured)} — ranking {verdict} "
                     f"(told apart by rank-sum tests, family-wise 5%: {told})")
    with_parts = [r for r in report.rows if r.parts]
    if with_parts:
        lines.append(f"\nwhere the error is: measured - predicted ms per iteration (mean over ranks), the "
                     f"{_PARTS_SHOWN} largest parts (--json has all)")
        for r in with_parts:
            largest = ", ".join(f"{part} {(m - p) * 1e3:+.1f}" for part, p, m in r.parts[:_PARTS_SHOWN])
            lines.append(f"  {r.workload} {r.variant}: {largest}")
    with_calls = [r for r in report.rows if r.collectives]
    if with_calls:
        lines.append(f"\ncollective calls: predicted mean / measured mean, median, 90th percentile ms, the "
                     f"{_CALLS_SHOWN} parts with the most measured time (--json has all)")
        for r in with_calls:
            calls = "; ".join(f"{c.part} {c.predicted_mean_s * 1e3:.2f} / {c.measured_mean_s * 1e3:.2f}, "
                              f"{c.measured_median_s * 1e3:.2f}, {c.measured_p90_s * 1e3:.2f}"
                              for c in r.collectives[:_CALLS_SHOWN])
            lines.append(f"  {r.workload} {r.variant}: {calls}")
    return "\n".join(lines)
