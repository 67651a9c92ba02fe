"""Worker entry: every rank plans the same schedules and executes them; rank 0 writes the measurements.

    torchrun --nproc-per-node 2 -m moesim.validation.run_plan --model tiny-moe-a --hardware cpu-loopback \\
        --nodes 1 --schedule sequential --schedule tutel:degree=2 --warmup 1 --iterations 5 --out m.json

``--schedule`` takes a registered name, optionally with knobs for that run only
(``name:knob=value,knob=value``); it may be repeated, and the runs share one job. ``--set`` takes the
same scoped overrides as the CLI; ``schedule.*`` settings go to the schedules whose config knows them.
Plans are deterministic, so every rank builds the same one. The output JSON holds, per schedule (keyed
by the ``--schedule`` argument as written), its iteration times, median and measured timeline;
``load_measured`` reads it back. The schedules run interleaved, in ``--blocks`` rounds. This module
imports torch only inside ``main``: callers that launch the job and load its output do not need torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.api import Scenario, scenario
from moesim.errors import MoesimError
from moesim.overrides import parse_assignments
from moesim.plan import ExecutionPlan, StreamKind
from moesim.schedules import get_schedule
from moesim.timeline import Span, Timeline
from moesim.workload.ops import OpKind, Phase

from . import breakdown

FORMAT = "moesim-measured/1"
_BLOCKS = 3


@dataclass(frozen=True, slots=True, eq=False)
class MeasuredResult:
    """One schedule's measurement as loaded from the worker's JSON."""

    label: str                 # the --schedule argument, e.g. "tutel:degree=2"
    schedule: str              # the policy's name
    knobs: str                 # the plan's knobs in one line, as the policy summarises them
    iteration_times_s: tuple[float, ...]
    median_s: float
    timeline: Timeline
    environment: Mapping[str, Any]
    parts_s: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # breakdown part -> per iteration
    # breakdown part -> every collective call's seconds, over every iteration and rank
    collective_calls_s: Mapping[str, tuple[float, ...]] = field(default_factory=dict)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moesim.validation.run_plan",
                                     description="Execute schedules' plans for real on every rank of this job.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--hardware", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--schedule", action="append", required=True, help="name[:knob=value,...], repeatable")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=None,
                        help="run the schedules in this many interleaved rounds (1: one after another; "
                             "default: 3, or --iterations if fewer)")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def plan_for(scn: Scenario, label: str) -> ExecutionPlan:
    """The plan of ``label`` (``name`` or ``name:knob=value,...``): per-label knobs over ``--set``'s."""
    name, _, inline = label.partition(":")
    policy = get_schedule(name)
    known = policy.config.model_fields
    settings = {k: v for k, v in scn.schedule_settings.items() if k.split(".")[0] in known}
    settings.update(parse_assignments([item for item in inline.split(",") if item]))
    return policy.plan_with(scn.graph, scn.cost, settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every ``--schedule`` on this rank; rank 0 writes ``--out``. Bad input: one line, exit 2."""
    args = parse_args(argv)
    from . import dist as rank_dist

    ctx = rank_dist.init()
    try:
        if len(set(args.schedule)) != len(args.schedule):
            raise MoesimError(f"--schedule: each value once, got {', '.join(args.schedule)}")
        scn = scenario(args.model, args.hardware, args.nodes, parse_assignments(args.overrides))
        _check_schedule_settings(scn, args.schedule)
        blocks = min(_BLOCKS, args.iterations) if args.blocks is None else args.blocks
        if not 1 <= blocks <= args.iterations:
            raise MoesimError(f"--blocks: between 1 and --iterations ({args.iterations}), got {blocks}")
        plans = [(label, plan_for(scn, label)) for label in args.schedule]
        results = _measure_interleaved(plans, ctx, args.warmup, args.iterations, blocks)
    except MoesimError as err:  # every rank meets the same error: the inputs are the same
        print(f"error: {err}", file=sys.stderr)
        return 2
    if ctx.rank == 0:
        job = {"model": args.model, "hardware": args.hardware, "nodes": args.nodes, "overrides": args.overrides,
               "warmup": args.warmup, "iterations": args.iterations, "blocks": blocks}
        write_measured(args.out, {"format": FORMAT, "job": job, "results": results})
    rank_dist.finish()
    return 0


def _check_schedule_settings(scn: Scenario, labels: Sequence[str]) -> None:
    """A ``schedule.*`` setting that none of the requested schedules knows is a mistake, as in compare."""
    known = {field for label in labels for field in get_schedule(label.partition(":")[0]).config.model_fields}
    for key in scn.schedule_settings:
        if key.split(".")[0] not in known:
            raise MoesimError(f"unknown setting 'schedule.{key}': no schedule among {', '.join(labels)} has it")


def _measure_interleaved(plans: Sequence[tuple[str, ExecutionPlan]], ctx: Any, warmup: int, iterations: int,
                         blocks: int) -> dict[str, dict[str, Any]]:
    """Each plan's ``iterations`` in ``blocks`` rounds that take the plans in turn (each block after its own
    warm-up): a drift of the host's speed during the job then weighs on every schedule alike, not on the
    one that happened to run then. Per plan: every measured iteration, their median (the lower one), the
    timeline of the block whose median is nearest it, every iteration's parts and every collective call's
    time (``breakdown``)."""
    from .executor import MeasuredRun, execute_plan

    shares = [iterations // blocks + (1 if b < iterations % blocks else 0) for b in range(blocks)]
    runs: dict[str, list[MeasuredRun]] = {label: [] for label, _ in plans}
    for share in shares:
        for label, plan in plans:
            runs[label].append(execute_plan(plan, ctx, warmup=warmup, iterations=share))
    results = {}
    for label, plan in plans:
        times = [t for run in runs[label] for t in run.iteration_times_s]
        keys = sorted({key for run in runs[label] for key in run.parts_s})
        parts = {key: [t for run in runs[label] for t in run.parts_s.get(key, [0.0] * len(run.iteration_times_s))]
                 for key in keys}
        median = sorted(times)[(len(times) - 1) // 2]
        nearest = min(runs[label], key=lambda run: abs(run.median_s - median))
        results[label] = {
            "label": label,
            "schedule": plan.schedule,
            "knobs": plan.decisions.summary(),
            "iteration_times_s": times,
            "median_s": median,
            "environment": nearest.environment,
            "timeline": timeline_to_dict(nearest.timeline),
            "parts_s": parts,
            "collective_calls_s": breakdown.joined(run.collective_calls_s for run in runs[label]),
        }
    return results


def write_measured(path: Path, document: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))
    return path


def timeline_to_dict(timeline: Timeline) -> dict[str, Any]:
    """JSON-ready: spans as dicts with enum values as strings, ``represents`` keyed by str(rank)."""
    return {
        "num_ranks": timeline.num_ranks,
        "represents": {str(rank): list(ranks) for rank, ranks in timeline.represents.items()},
        "task_deps": [list(deps) for deps in timeline.task_deps],
        "schedule": timeline.schedule,
        "source": timeline.source,
        "meta": dict(timeline.meta),
        "spans": [{"rank": s.rank, "stream": s.stream.value, "task": s.task, "op": s.op, "name": s.name,
                   "kind": s.kind.value, "phase": s.phase.value, "layer": s.layer, "start": s.start,
                   "end": s.end, "flops": s.flops, "bytes": s.bytes} for s in timeline.spans],
    }


def timeline_from_dict(data: Mapping[str, Any]) -> Timeline:
    """The inverse of ``timeline_to_dict``."""
    spans = tuple(Span(rank=s["rank"], stream=StreamKind(s["stream"]), task=s["task"], op=s["op"], name=s["name"],
                       kind=OpKind(s["kind"]), phase=Phase(s["phase"]), layer=s["layer"], start=s["start"],
                       end=s["end"], flops=s["flops"], bytes=s["bytes"]) for s in data["spans"])
    return Timeline(spans=spans, num_ranks=data["num_ranks"],
                    represents={int(rank): tuple(ranks) for rank, ranks in data["represents"].items()},
                    task_deps=tuple(tuple(deps) for deps in data["task_deps"]), schedule=data["schedule"],
                    source=data["source"], meta=data["meta"])


def load_measured(path: str | Path) -> dict[str, MeasuredResult]:
    """The worker's output, by ``--schedule`` label, in the order the schedules ran.

    A file that is not such an output raises MoesimError naming it.
    """
    try:
        document = json.loads(Path(path).read_text())
        if document.get("format") != FORMAT:
            raise KeyError("format")
        return {label: MeasuredResult(label=label, schedule=entry["schedule"], knobs=entry["knobs"],
                                      iteration_times_s=tuple(entry["iteration_times_s"]),
                                      median_s=entry["median_s"], timeline=timeline_from_dict(entry["timeline"]),
                                      environment=entry["environment"],
                                      parts_s={key: tuple(values) for key, values in entry.get("parts_s", {}).items()},
                                      collective_calls_s={key: tuple(values) for key, values
                                                          in entry.get("collective_calls_s", {}).items()})
                for label, entry in document["results"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise MoesimError(f"{path}: not a measured-run file of format {FORMAT} ({err})") from None


if __name__ == "__main__":
    sys.exit(main())
