"""Invariants every registered schedule keeps on every model preset (docs/architecture.md, "Contracts").

For each (schedule, preset) the predicted timeline must show: every op executed exactly once across its
parts, with the parts' FLOPs and bytes adding up to the op's; every plan dependency and every data
dependency of the graph respected (so a dW never starts before its inputs exist); one task at a time per
stream, in the plan's order; an iteration no shorter than the plan's critical path.
"""

from collections import defaultdict

import numpy as np
import pytest

from moesim.analysis.critical_path import critical_path_lower_bound
from moesim.api import run_schedule, scenario
from moesim.engine import simulate_plan
from moesim.schedules import registered
from moesim.schedules.lancet import LancetConfig, build, candidates, chunked
from moesim.workload.ops import Axis, OpKind, Phase
from moesim.workload.presets import list_model_presets

# Every preset on one p4de node (8 GPUs); big models cut to a few layers so the suite stays fast,
# with enough layers left to hold dense and MoE blocks.
SHRINK = {"deepseek-v3": 5, "qwen3-235b-a22b": 4, "mixtral-8x7b": 4, "deepseek-v2-lite": 4}
# Skewed routing: padded capacity (the Lancet models) and dropless (ranks uneven, every rank played).
SKEWED = {
    "gpt2-s-moe+zipf": ("gpt2-s-moe", {"training.routing.kind": "zipf", "training.routing.alpha": 1.2}),
    "mixtral+zipf": ("mixtral-8x7b", {"model.num_layers": 2, "training.routing.kind": "zipf",
                                      "training.routing.alpha": 1.2}),
}
CASES = {name: (name, {"model.num_layers": SHRINK[name]} if name in SHRINK else {})
         for name in list_model_presets()} | SKEWED
# Schedules and their ablations.
VARIANTS = [(name, {}) for name in registered()] + [
    ("lancet", {"dw_scheduling": False}), ("lancet", {"partition": False})]


@pytest.fixture(scope="module", params=sorted(CASES))
def scn(request):
    preset, overrides = CASES[request.param]
    return scenario(preset, "p4de.24xlarge", 1, overrides)


def _run(scn, schedule, settings):
    from dataclasses import replace

    return run_schedule(replace(scn, schedule_settings=settings), schedule)


MOE_ROLES = {"dispatch", "expert_fc1", "expert_act", "expert_fc2", "combine"}


def _kept_share(graph, op):
    """Per rank, the share of a padded MoE op that kept tokens fill: Lancet's partitioned all-to-all-v
    moves only kept tokens. The dispatch follows what a rank sends to other ranks, the combine what
    it received from other ranks, its experts' compute everything it received. 1 where the capacity
    is filled, and without a capacity (dropless)."""
    routing = graph.facts.routing_of(op.layer)
    if routing.capacity is None:
        return np.ones(graph.num_ranks)
    kept, capacity, per_rank = routing.kept, routing.capacity, graph.facts.experts_per_rank
    share = np.empty(graph.num_ranks)
    for group in graph.by_name(f"L{op.layer}.dispatch").comm.groups:
        for position, rank in enumerate(group):
            mine = np.zeros(kept.shape[1], dtype=bool)
            mine[position * per_rank:(position + 1) * per_rank] = True
            others = [r for r in group if r != rank]
            if op.role == "dispatch":
                share[rank] = kept[rank, ~mine].sum() / (capacity * (~mine).sum())
            elif op.role == "combine":
                share[rank] = kept[others][:, mine].sum() / (capacity * per_rank * len(others))
            else:
                share[rank] = kept[list(group)][:, mine].sum() / (capacity * per_rank * len(group))
    return share


@pytest.mark.parametrize(("schedule", "settings"), VARIANTS, ids=lambda v: str(v) if v else "default")
def test_schedule_invariants(scn, schedule, settings):
    result = _run(scn, schedule, settings)
    _assert_invariants(result.plan, result.timeline, scn.cost)


# Batch-1 models cut along the sequence (attention causally); gpt2-s-moe at batch 1 puts attention in ranges.
SEQUENCE_CASES = {
    "mixtral-8x7b": ("mixtral-8x7b", "p4de.24xlarge", 1, {"model.num_layers": 4}),
    "deepseek-v3": ("deepseek-v3", "p4de.24xlarge", 1, {"model.num_layers": 5}),
    "gpt2-s-moe+batch1": ("gpt2-s-moe", "p3dn.24xlarge", 2, {"model.num_layers": 4, "training.batch_per_gpu": 1}),
}


@pytest.mark.parametrize("case", sorted(SEQUENCE_CASES))
def test_every_lancet_candidate_of_a_sequence_cut_keeps_the_invariants(case):
    # Every plan Lancet judges, not only the one it keeps: each op once across its parts, FLOPs and bytes
    # summing (a causal attention's parts do (2p + 1) / k^2 of it each), dependencies kept.
    scn = scenario(*SEQUENCE_CASES[case])
    config = LancetConfig()
    options = candidates(scn.graph, scn.cost, config)
    options += chunked(options, 2)
    cut = [o for o in options if o.partitions is not None]
    assert cut and all(r.axis is Axis.SEQUENCE for o in cut for r in o.partitions.ranges)
    for option in options:
        plan = build(option, config, scn.cost)
        _assert_invariants(plan, simulate_plan(plan, scn.cost), scn.cost)
    if case == "gpt2-s-moe+batch1":
        assert any(scn.graph.ops[o].kind is OpKind.ATTENTION for r in cut[0].partitions.ranges for o in r.ops)


def _assert_invariants(plan, timeline, cost):
    graph = plan.graph
    spans_by_rank = defaultdict(list)
    for span in timeline.spans:
        spans_by_rank[span.rank].append(span)
    tasks_of_op = defaultdict(list)
    for task in plan.tasks:
        tasks_of_op[task.op].append(task)

    for rank, spans in spans_by_rank.items():
        by_task = {s.task: s for s in spans}
        # each task executed exactly once, every op covered
        assert sorted(by_task) == list(range(len(plan.tasks)))
        assert set(tasks_of_op) == set(range(len(graph.ops)))
        # plan dependencies respected
        for s in spans:
            assert all(by_task[dep].end <= s.start + 1e-12 for dep in plan.tasks[s.task].deps), s.name
        # graph (data) dependencies respected: part p waits for part p of a dep split the same way,
        # otherwise for every part of it — a dW never starts before its inputs exist
        for op in graph.ops:
            for task in tasks_of_op[op.id]:
                for dep in op.deps:
                    dep_tasks = tasks_of_op[dep]
                    same_split = task.parts > 1 and len(dep_tasks) == task.parts
                    needed = [dep_tasks[task.part]] if same_split else dep_tasks
                    latest = max(by_task[t.id].end for t in needed)
                    assert latest <= by_task[task.id].start + 1e-12, f"{op.name} before {graph.ops[dep].name}"
        # one task at a time per stream, in the plan's order
        for stream, order in plan.streams.items():
            on_stream = sorted((s for s in spans if s.stream is stream), key=lambda s: (s.start, s.end))
            assert [s.task for s in on_stream] == list(order)
            assert all(a.end <= b.start + 1e-12 for a, b in zip(on_stream, on_stream[1:], strict=False))
        # parts add up to the op: FLOPs of compute, bytes sent of collectives
        for op in graph.ops:
            parts = [by_task[t.id] for t in tasks_of_op[op.id]]
            whole = sum(by_task[t.id].flops if not op.kind.is_collective else 0 for t in tasks_of_op[op.id])
            # Lancet's partitions (parts cut along an axis, not Tutel's capacity chunks) move only kept tokens
            split_moe = (len(parts) > 1 and op.phase is Phase.FORWARD and op.role in MOE_ROLES
                         and all(t.axis is not None for t in tasks_of_op[op.id]))
            expected_share = _kept_share(graph, op)[rank] if split_moe else 1.0
            if op.kind.is_collective:
                got = sum(s.bytes for s in parts)
                reference = _whole_bytes(op, rank, graph)
            else:
                got, reference = whole, op.flops_on(rank)
            assert got == pytest.approx(reference * expected_share, rel=1e-9, abs=1e-6), op.name
        assert timeline.makespan >= critical_path_lower_bound(plan, cost, rank) * (1 - 1e-9)


def _whole_bytes(op, rank, graph):
    """Bytes ``rank`` sends in ``op`` unpartitioned: off-diagonal row of the traffic (all-to-all),
    ring volume otherwise."""
    comm = op.comm
    group = comm.group_of(rank)
    members = comm.groups[group]
    if op.kind is OpKind.ALL_TO_ALL:
        row = comm.traffic[group, members.index(rank)]
        return float(row.sum() - row[members.index(rank)])
    n = len(members)
    traversals = 2 if op.kind is OpKind.ALL_REDUCE else 1
    return traversals * (n - 1) / n * comm.bytes


def test_sequential_never_overlaps_an_all_to_all(scn):
    timeline = run_schedule(scn, "sequential").timeline
    compute = [s for s in timeline.spans if not s.kind.is_collective]
    a2a = [s for s in timeline.spans if s.kind is OpKind.ALL_TO_ALL]
    assert a2a, "every preset has MoE layers"
    for comm in a2a:
        assert not any(c.start < comm.end - 1e-12 and comm.start < c.end - 1e-12 for c in compute), comm.name
