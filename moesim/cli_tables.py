"""The tables `moesim run` and `moesim compare` print, and the training-time line of ``--train-tokens``
(columns explained in docs/metrics.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moesim.analysis.comparison import ComparisonRow
    from moesim.analysis.metrics import Metrics
    from moesim.api import SimulationResult


def print_run(result: SimulationResult, train_tokens: float | None = None) -> None:
    from moesim.analysis.tables import metrics_table

    print(headline(result))
    print(metrics_table([_row(result, result.knob_summary)], _RUN_COLUMNS))
    for table in result.decisions.tables():
        if not table.rows:
            print(f"\n{table.title}: none")
            continue
        print(f"\n{table.title}")
        print(metrics_table(table.rows, table.columns))
    if train_tokens is not None:
        print()
        print(training_line(result, train_tokens))


def print_compare(results: list[SimulationResult], train_tokens: float | None = None) -> None:
    from moesim.analysis.tables import metrics_table

    print(headline(results[0]))
    rows = [{**_row(r, r.knob_summary), **_ratios(row)} for r, row in zip(results, comparison(results), strict=True)]
    print(metrics_table(rows, _COMPARE_COLUMNS))
    if train_tokens is not None:
        print()
        for result in results:
            print(training_line(result, train_tokens))


def comparison(results: list[SimulationResult]) -> list[ComparisonRow]:
    from moesim.analysis.comparison import compare_metrics

    return compare_metrics([(r.schedule, r.metrics, r.knob_summary) for r in results])


def headline(result: SimulationResult) -> str:
    facts = result.scenario.graph.require_facts("moesim's tables")
    return (f"{result.scenario.model} on {result.scenario.nodes} x {result.scenario.hardware} "
            f"({result.metrics.num_gpus} GPUs, EP={facts.ep_size}, "
            f"{facts.tokens_per_gpu} tokens/GPU)")


def result_json(result: SimulationResult, train_tokens: float | None, row: ComparisonRow | None = None
                ) -> dict[str, object]:
    """`--json`'s object for one result: its own, the comparison's ratios, ``train`` with ``--train-tokens``."""
    out = {**result.to_dict(), **(row.to_dict() if row is not None else {})}
    if train_tokens is not None:
        out["train"] = training(result, train_tokens)
    return out


def training(result: SimulationResult, tokens: float) -> dict[str, object]:
    """``--train-tokens``' JSON: wall-clock seconds, GPU-hours and dollars (None without a price)."""
    rate = result.throughput
    return {"tokens": tokens, "seconds": rate.train_seconds(tokens), "gpu_hours": rate.train_gpu_hours(tokens),
            "usd": rate.train_usd(tokens)}


def training_line(result: SimulationResult, tokens: float) -> str:
    rate = result.throughput
    usd = rate.train_usd(tokens)
    cost = "no price for this node (hardware.node.price_per_hour)" if usd is None else f"${usd:,.0f}"
    days = rate.train_seconds(tokens) / 86400
    return (f"{result.schedule}: {tokens:.3g} tokens in {days:,.2f} days on {result.metrics.num_gpus} GPUs, "
            f"{rate.train_gpu_hours(tokens):,.0f} GPU-hours, {cost}")


_RUN_COLUMNS = [
    ("schedule", "schedule"),
    ("iteration_ms", "iteration ms"),
    ("compute_ms", "compute ms"),
    ("a2a_ms", "all-to-all ms"),
    ("a2a_share", "a2a share"),
    ("exposed_ms", "exposed comm ms"),
    ("exposed_share", "exposed share"),
    ("overlap", "overlap"),
    ("tokens_per_s", "tokens/s"),
    ("mfu", "MFU"),
    ("knobs", "knobs"),
]

_COMPARE_COLUMNS = [
    ("schedule", "schedule"),
    ("iteration_ms", "iteration ms"),
    ("speedup", "vs sequential"),
    ("compute_ms", "compute ms"),
    ("a2a_ms", "all-to-all ms"),
    ("exposed_ms", "exposed comm ms"),
    ("exposed_vs_tutel", "exposed vs tutel"),
    ("overlap", "overlap"),
    ("tokens_per_s", "tokens/s"),
    ("mfu", "MFU"),
    ("knobs", "knobs"),
]


def _row(result: SimulationResult, knobs: str) -> dict[str, object]:
    m: Metrics = result.metrics
    rate = result.throughput
    return {
        "schedule": result.schedule,
        "iteration_ms": f"{m.iteration_time_s * 1e3:.2f}",
        "compute_ms": f"{m.compute_busy_s * 1e3:.2f}",
        "a2a_ms": f"{m.a2a_time_s * 1e3:.2f}",
        "a2a_share": f"{m.a2a_share:.1%}",
        "exposed_ms": f"{m.exposed_comm_s * 1e3:.2f}",
        "exposed_share": f"{m.exposed_comm_share:.1%}",
        "overlap": f"{m.overlap_ratio:.1%}",
        "tokens_per_s": f"{rate.tokens_per_s:,.0f}",
        "mfu": f"{rate.mfu:.1%}",
        "knobs": knobs,
    }


def _ratios(row: ComparisonRow) -> dict[str, object]:
    speedup, reduction = row.speedup_vs_sequential, row.exposed_comm_reduction_vs_tutel
    return {
        "speedup": f"{speedup:.2f}x" if speedup is not None else "-",
        "exposed_vs_tutel": f"{0.0 - reduction:+.1%}" if reduction is not None else "-",
    }
