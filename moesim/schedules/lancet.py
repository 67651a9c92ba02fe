"""`lancet`: Lancet (MLSys 2024) — whole-graph overlap of the MoE all-to-alls.

Two passes, as in the paper, each with an ablation switch:
- backward, ``dw_scheduling``: weight gradients (and other backward compute with no path to or from
  an all-to-all) are moved to run on the compute stream while an all-to-all is in flight
  (lancet_dw.py: reachability + the greedy best fit of the paper's Algorithm 1 with the code's
  refinements);
- forward, ``partition``: around each MoE layer a range of ops, reaching back into attention and on
  into the next block, is split along the batch into k parts and pipelined, so one part's
  all-to-all overlaps another part's non-MoE compute (lancet_partition.py: the paper's DP over
  grouped ops, ranges costed by a two-resource list scheduler over our cost model; per-part
  all-to-alls carry the real kept tokens of capacity passing).
The plan that results is judged, like every plan, by the full engine.

Where we differ from the paper and its code, and why:
- Gradient all-reduce stays DDP-style on its own stream in every schedule (DESIGN.md), so Lancet's
  packing of all-reduces into gaps between all-to-alls is not modelled; schedules differ only in the
  all-to-alls and the compute around them. Like DDP (which rebuilds its buckets in the order
  gradients became ready), the buckets are re-formed in the order the moved dW ops produce them.
- Only backward ops are dW candidates (the code's reachability test would also move forward ops such
  as shared experts); forward overlap is the partition pass's job. A candidate moves only inside
  its window (after every fixed op it depends on, before every fixed op that depends on it), which
  keeps the moved program a valid order in any DAG; on our graphs it gives the code's answer.
- Op times come from our cost model (compute with no interference, all-to-alls alone on the
  network), not from profiling one GPU and interpolating nccl-tests curves.
- The DP tries every allowed k and keeps the best (the code stops at the first k that does not
  improve), making it exact for its own cost function; k is at most ``max_partitions`` (8) and
  divides the per-GPU batch (the code also splits the sequence for Switch gates): with a batch of
  1, as in our Mixtral/DeepSeek/Qwen presets, nothing is partitioned.
- In the list scheduler a resource with no ready part keeps its part pointer (the code advances it
  by one); all completions at an instant are applied before any choice, so ties are deterministic.
- Per-part all-to-alls use the real token counts of capacity passing (an all-to-all-v), not the
  code's uniform C/k, so with capacity slack Lancet's partitioned MoE moves fewer bytes than the
  padded unpartitioned one. A batch-prioritized gate ranks the whole batch, so its parts split the
  kept tokens evenly instead of passing capacity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import Field

from moesim.hardware.interface import CostModel
from moesim.plan import ExecutionPlan, Task
from moesim.schedules.builder import Part, PlanBuilder, default_stream
from moesim.schedules.estimate import seconds_alone
from moesim.schedules.grad_sync import arrange_grad_sync
from moesim.schedules.lancet_clock import GradSyncCost
from moesim.schedules.lancet_dw import DWPlacement, place_weight_gradients, program_order
from moesim.schedules.lancet_partition import PartitionedRange, PartitionPlan, plan_partitions
from moesim.schedules.registry import KnobTable, Schedule, ScheduleConfig
from moesim.workload.buckets import Bucket, BucketSpec, bucket_op, rebucket
from moesim.workload.ops import Op, OpGraph


class LancetConfig(ScheduleConfig):
    dw_scheduling: bool = True   # backward: weight gradients under all-to-alls
    partition: bool = True       # forward: batch partitioning and pipelining around MoE layers
    max_partitions: int = Field(default=8, ge=2, le=8)  # the paper's rho


def plan(graph: OpGraph, cost: CostModel, config: LancetConfig) -> ExecutionPlan:
    placement = None
    if config.dw_scheduling:
        # Moving dW ops changes the order gradients become ready, and DDP fills its buckets in that order:
        # the rebuilt graph lists every op in the order Lancet runs it.
        placed = _place_dw(graph, cost)
        graph, new_id = rebucket(graph, program_order(graph, placed))
        placement = placed.renumbered(new_id)
    partitions = plan_partitions(graph, cost, max_parts=config.max_partitions) if config.partition else None

    builder = PlanBuilder(graph, SCHEDULE.name)
    ranges = {r.ops[0]: r for r in partitions.ranges} if partitions is not None else {}
    inside = {op_id for r in ranges.values() for op_id in r.ops}
    for op in graph.ops:
        if op.id in ranges:
            region = ranges[op.id]
            builder.add_region([(graph.ops[o], p) for o, p in region.order], region.parts, _specs(region))
        elif op.id not in inside:
            builder.add_whole(op)
    return arrange_grad_sync(builder.build(_knobs(graph, config, placement, partitions)), config.grad_sync, cost)


def _specs(region: PartitionedRange) -> Callable[[Op, int], Part]:
    return lambda op, part: region.part_specs[op.id, part]


def _place_dw(graph: OpGraph, cost: CostModel) -> DWPlacement:
    def alone(op: Op) -> float:
        return seconds_alone(op, Task(id=0, op=op.id, stream=default_stream(op)), cost, graph.num_ranks)

    spec = graph.meta.get("buckets")
    assert spec is None or isinstance(spec, BucketSpec), "graph.meta['buckets'] is a BucketSpec or None"
    sync = None if spec is None else GradSyncCost(spec, lambda expert, size: alone(bucket_op(0, 0, Bucket(
        expert, (), size), spec, ())))
    return place_weight_gradients(graph, alone, alone, sync)


def _knobs(graph: OpGraph, config: LancetConfig, placement: DWPlacement | None,
           partitions: PartitionPlan | None) -> dict[str, Any]:
    name = {op.id: op.name for op in graph.ops}
    knobs: dict[str, Any] = {"dw_scheduling": config.dw_scheduling, "partition": config.partition}
    if partitions is not None:
        knobs["ranges"] = [
            {"layer": r.layer, "first": name[r.ops[0]], "last": name[r.ops[-1]], "ops": len(r.ops), "k": r.parts,
             "pipelined_s": r.cost_s, "unpartitioned_s": r.unpartitioned_s}
            for r in partitions.ranges
        ]
    if placement is not None:
        knobs["dw_placement"] = [
            {"all_to_all": name[a2a], "a2a_s": placement.a2a_s[a2a], "covered_s": placement.covered_s[a2a],
             "placed": [name[op_id] for op_id in placed], "lancet_placed": placement.proposed[a2a]}
            for a2a, placed in placement.after.items() if placed or placement.proposed[a2a]
        ]
        knobs["dw_clock_s"] = {"program_order": placement.estimated_s[0], "moved": placement.estimated_s[1]}
    return knobs


def summarize(knobs: Mapping[str, object]) -> str:
    parts = []
    ranges = knobs.get("ranges")
    if isinstance(ranges, list):
        parts.append("k " + (" ".join(f"L{r['layer']}:{r['k']}" for r in ranges) if ranges else "none"))
    elif knobs.get("partition") is False:
        parts.append("no partition")
    placed = knobs.get("dw_placement")
    if isinstance(placed, list):
        moved = sum(len(entry["placed"]) for entry in placed)
        parts.append(f"{moved} dW moved under {sum(bool(entry['placed']) for entry in placed)} a2a")
    elif knobs.get("dw_scheduling") is False:
        parts.append("no dW scheduling")
    if knobs.get("grad_sync", "ddp") != "ddp":
        parts.append(f"grad_sync={knobs['grad_sync']}")
    return "; ".join(parts)


def tables(knobs: Mapping[str, object]) -> list[KnobTable]:
    result = []
    ranges = knobs.get("ranges")
    if isinstance(ranges, list):
        rows = [{"layer": r["layer"], "range": f"{r['first']} .. {r['last']}", "ops": r["ops"], "k": r["k"],
                 "pipelined": f"{r['pipelined_s'] * 1e3:.2f}", "whole": f"{r['unpartitioned_s'] * 1e3:.2f}"}
                for r in ranges]
        result.append(KnobTable("forward partitions (one per MoE layer partitioned; times from the planner's "
                                "list scheduler, ms)", rows,
                                [("layer", "MoE layer"), ("range", "range"), ("ops", "ops"), ("k", "k"),
                                 ("pipelined", "pipelined ms"), ("whole", "unpartitioned ms")]))
    placed = knobs.get("dw_placement")
    if isinstance(placed, list):
        rows = [{"a2a": e["all_to_all"], "a2a_ms": f"{e['a2a_s'] * 1e3:.2f}",
                 "covered_ms": f"{e['covered_s'] * 1e3:.2f}", "count": len(e["placed"]),
                 "lancet": e["lancet_placed"],
                 "placed": ", ".join(e["placed"][:4]) + (" ..." if len(e["placed"]) > 4 else "")}
                for e in placed]
        clock = knobs.get("dw_clock_s")
        estimate = (f"; the clock's iteration end {clock['program_order'] * 1e3:.2f} ms in program order, "
                    f"{clock['moved'] * 1e3:.2f} ms moved" if isinstance(clock, Mapping) else "")
        result.append(KnobTable("backward dW placement (compute run while each all-to-all is in flight; 'Lancet' "
                                "counts the ops Lancet's greedy put there, forced ones included, before the moves "
                                f"that delay gradient sync more than they hide were undone{estimate})", rows,
                                [("a2a", "all-to-all"), ("a2a_ms", "a2a ms"), ("covered_ms", "placed ms"),
                                 ("count", "ops"), ("lancet", "Lancet"), ("placed", "placed ops")]))
    return result


SCHEDULE = Schedule(
    name="lancet",
    description="Lancet: dW ops under backward all-to-alls + batch-partitioned forward pipelines",
    config=LancetConfig,
    plan=plan,
    summarize=summarize,
    tables=tables,
    order=2,
)
