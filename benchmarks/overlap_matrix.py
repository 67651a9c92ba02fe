"""Lancet vs Tutel vs sequential, and Lancet's ablations, as a table of iteration times.

    python benchmarks/overlap_matrix.py                       # the Lancet paper's models and clusters
    python benchmarks/overlap_matrix.py --presets              # every model preset on 4 x p4de and 4 x dgx-h100
    python benchmarks/overlap_matrix.py --grad-sync ddp,priority,packed
    python benchmarks/overlap_matrix.py --planning             # lancet's planning time, deepseek-v3 on 1,024 GPUs

Every number comes from the specs and the cost model's stated defaults; nothing is tuned to a result.
Columns (ms): sequential, the best Tutel degree (searched), lancet, lancet with dW scheduling only
(partition=false) and with partitioning only (dw_scheduling=false); then lancet over sequential and
over Tutel, and the candidate lancet kept. ``--grad-sync`` repeats every row for each mode (every
schedule of the row runs under it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from moesim.api import Scenario, run_schedule, scenario
from moesim.schedules import get_schedule
from moesim.workload.presets import list_model_presets

PAPER = [(model, hardware, nodes) for hardware in ("p3dn.24xlarge", "p4de.24xlarge")
         for model in ("gpt2-s-moe", "gpt2-l-moe") for nodes in (2, 4, 8)]


def presets() -> list[tuple[str, str, int]]:
    """Every model preset but the CPU validation ones, on 4 nodes of each GPU cluster of the issue."""
    models = [m for m in list_model_presets() if not m.startswith("tiny-")]
    return [(model, hardware, 4) for hardware in ("dgx-h100", "p4de.24xlarge") for model in models]


def row(scn: Scenario, grad_sync: str) -> dict[str, object]:
    def ms(schedule: str, **settings: object) -> tuple[float, dict[str, object]]:
        result = run_schedule(replace(scn, schedule_settings={"grad_sync": grad_sync, **settings}), schedule)
        return result.metrics.iteration_time_s * 1e3, dict(result.knobs)

    seq, _ = ms("sequential")
    tutel, tutel_knobs = ms("tutel")
    lancet, lancet_knobs = ms("lancet")
    dw_only, _ = ms("lancet", partition=False)
    part_only, _ = ms("lancet", dw_scheduling=False)
    return {"seq": seq, "tutel": tutel, "d": tutel_knobs["degree"], "lancet": lancet, "dw_only": dw_only,
            "part_only": part_only, "kept": lancet_knobs["kept"]}


def planning_time(repeat: int) -> None:
    scn = scenario("deepseek-v3", "dgx-h100", 128)
    policy = get_schedule("lancet")
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        policy.plan_with(scn.graph, scn.cost)
        seconds.append(time.perf_counter() - start)
    print(f"lancet planning, deepseek-v3 on 128 x dgx-h100 (1,024 GPUs), median of {repeat}: "
          f"{statistics.median(seconds):.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f}; the first run "
          "also fills the cost model's demand cache)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", action="store_true", help="every model preset on 4 x p4de and 4 x dgx-h100")
    parser.add_argument("--grad-sync", default="ddp", help="comma-separated modes: ddp, priority, packed")
    parser.add_argument("--planning", action="store_true", help="only time lancet's planning at 1,024 GPUs")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.planning:
        planning_time(args.repeat)
        return
    header = (f"{'model':<18} {'cluster':<14} {'GPUs':>4} {'sync':<8} {'seq ms':>9} {'tutel ms':>9} {'d':>2} "
              f"{'lancet ms':>9} {'dW only':>9} {'part only':>9} {'vs seq':>7} {'vs tutel':>8}  kept")
    print(header)
    print("-" * len(header))
    for model, hardware, nodes in presets() if args.presets else PAPER:
        scn = scenario(model, hardware, nodes)
        for mode in args.grad_sync.split(","):
            r = row(scn, mode)
            print(f"{model:<18} {hardware:<14} {scn.cluster.num_gpus:>4} {mode:<8} {r['seq']:>9.1f} "
                  f"{r['tutel']:>9.1f} {r['d']:>2} {r['lancet']:>9.1f} {r['dw_only']:>9.1f} {r['part_only']:>9.1f} "
                  f"{r['seq'] / r['lancet']:>6.2f}x {r['tutel'] / r['lancet']:>7.2f}x  {r['kept']}", flush=True)


if __name__ == "__main__":
    main()
