"""Lancet vs Tutel vs sequential on the Lancet paper's models and clusters, as a table.

    python benchmarks/overlap_matrix.py [--models gpt2-s-moe,gpt2-l-moe] [--hardware p3dn.24xlarge,p4de.24xlarge]
                                        [--nodes 2,4,8]

Every number comes from the specs and the cost model's stated defaults; nothing is tuned to a result.
Columns: iteration times; Lancet's speedup over sequential and over the best Tutel degree; Lancet's
exposed-communication reduction against the best Tutel degree; and the two ablations (Lancet with
only dW scheduling, with only partitioning) as speedups over sequential / over the best Tutel degree.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from moesim.api import run_schedule, scenario


def row(model: str, hardware: str, nodes: int) -> dict[str, object]:
    scn = scenario(model, hardware, nodes)
    seq = run_schedule(scn, "sequential").metrics
    tutel = run_schedule(scn, "tutel")
    lancet = run_schedule(scn, "lancet").metrics
    dw_only = run_schedule(replace(scn, schedule_settings={"partition": False}), "lancet").metrics
    part_only = run_schedule(replace(scn, schedule_settings={"dw_scheduling": False}), "lancet").metrics
    best = tutel.metrics
    return {
        "model": model, "hardware": hardware, "gpus": scn.cluster.num_gpus,
        "seq_ms": seq.iteration_time_s * 1e3, "tutel_ms": best.iteration_time_s * 1e3,
        "tutel_d": tutel.knobs["degree"], "lancet_ms": lancet.iteration_time_s * 1e3,
        "vs_seq": seq.iteration_time_s / lancet.iteration_time_s,
        "vs_tutel": best.iteration_time_s / lancet.iteration_time_s,
        "exposed_red": 1 - lancet.exposed_comm_s / best.exposed_comm_s,
        "dw_only": (seq.iteration_time_s / dw_only.iteration_time_s, best.iteration_time_s / dw_only.iteration_time_s),
        "part_only": (seq.iteration_time_s / part_only.iteration_time_s,
                      best.iteration_time_s / part_only.iteration_time_s),
        "a2a_share": seq.a2a_share,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2-s-moe,gpt2-l-moe")
    parser.add_argument("--hardware", default="p3dn.24xlarge,p4de.24xlarge")
    parser.add_argument("--nodes", default="2,4,8")
    args = parser.parse_args()
    header = (f"{'model':<11} {'cluster':<14} {'GPUs':>4} {'a2a%seq':>7} {'seq ms':>8} {'tutel ms':>9} {'d':>2} "
              f"{'lancet ms':>9} {'vs seq':>7} {'vs tutel':>8} {'exposed':>8} {'dW only':>11} {'part only':>11}")
    print(header)
    print("-" * len(header))
    for hardware in args.hardware.split(","):
        for model in args.models.split(","):
            for nodes in map(int, args.nodes.split(",")):
                r = row(model, hardware, nodes)
                print(f"{r['model']:<11} {r['hardware']:<14} {r['gpus']:>4} {r['a2a_share']:>7.1%} "
                      f"{r['seq_ms']:>8.1f} {r['tutel_ms']:>9.1f} {r['tutel_d']:>2} {r['lancet_ms']:>9.1f} "
                      f"{r['vs_seq']:>6.2f}x {r['vs_tutel']:>7.2f}x {-r['exposed_red']:>+8.1%} "
                      f"{_pair(r['dw_only'])} {_pair(r['part_only'])}")


def _pair(ratios: object) -> str:
    over_seq, over_tutel = ratios  # type: ignore[misc]
    return f"{over_seq:>5.2f}/{over_tutel:.2f}x"


if __name__ == "__main__":
    main()
