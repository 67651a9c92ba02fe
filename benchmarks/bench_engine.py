"""Simulator speed: wall time per stage and simulated tasks per second, as a table.

    python benchmarks/bench_engine.py [--repeat 5]

Each case is run --repeat times; the table shows medians (the machines are noisy). "tasks" is the
number of tasks the engine actually played; "rank-tasks" counts every rank's copy (what a per-rank
simulator would play) — under rank symmetry the engine plays one representative rank.
Target (issue #2): gpt2-l-moe on 64 GPUs, end to end, under 2 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from moesim.analysis.metrics import compute_metrics
from moesim.api import scenario
from moesim.engine import simulate_plan
from moesim.schedules import get_schedule

CASES = [
    # (model, hardware, nodes, symmetric) — symmetric=None lets the engine decide (uniform routing: yes)
    ("gpt2-l-moe", "p4de.24xlarge", 2, None),
    ("gpt2-l-moe", "p4de.24xlarge", 8, None),
    ("gpt2-l-moe", "p4de.24xlarge", 32, None),
    ("deepseek-v3", "dgx-h100", 32, None),
    ("gpt2-l-moe", "p4de.24xlarge", 8, False),  # every rank played: the cost without symmetry
]


def bench(model: str, hardware: str, nodes: int, symmetric: bool | None, schedule: str) -> dict[str, float]:
    t0 = time.perf_counter()
    scn = scenario(model, hardware, nodes)
    t1 = time.perf_counter()
    policy = get_schedule(schedule)
    plan = policy.plan_with(scn.graph, scn.cost)
    t2 = time.perf_counter()
    timeline = simulate_plan(plan, scn.cost, symmetric=symmetric)
    t3 = time.perf_counter()
    compute_metrics(timeline)
    t4 = time.perf_counter()
    played = len(timeline.spans)
    return {
        "gpus": scn.cluster.num_gpus, "tasks": played, "rank_tasks": len(plan.tasks) * scn.cluster.num_gpus,
        "build": t1 - t0, "plan": t2 - t1, "simulate": t3 - t2, "metrics": t4 - t3, "total": t4 - t0,
        "tasks_per_s": played / (t3 - t2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--schedule", default="sequential")
    args = parser.parse_args()

    header = (f"{'model':<12} {'hardware':<14} {'GPUs':>5} {'mode':<9} {'tasks':>7} {'rank-tasks':>10} "
              f"{'build s':>8} {'plan s':>7} {'sim s':>7} {'metrics s':>9} {'total s':>8} {'tasks/s':>9}")
    print(f"schedule={args.schedule}, medians of {args.repeat} runs")
    print(header)
    print("-" * len(header))
    for model, hardware, nodes, symmetric in CASES:
        runs = [bench(model, hardware, nodes, symmetric, args.schedule) for _ in range(args.repeat)]
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        mode = "per-rank" if symmetric is False else "symmetric"
        print(f"{model:<12} {hardware:<14} {int(med['gpus']):>5} {mode:<9} {int(med['tasks']):>7} "
              f"{int(med['rank_tasks']):>10} {med['build']:>8.3f} {med['plan']:>7.3f} {med['simulate']:>7.3f} "
              f"{med['metrics']:>9.3f} {med['total']:>8.3f} {med['tasks_per_s']:>9.0f}")


if __name__ == "__main__":
    main()
