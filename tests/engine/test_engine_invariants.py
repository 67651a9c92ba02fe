"""Invariants on a mid-sized MoE-like plan: every task once, streams serial, deps and groups respected."""

from collections import defaultdict

import pytest

from moesim.plan import StreamKind
from moesim.workload.ops import OpKind

RANKS, EP, LAYERS = 16, 4, 6
NVLINK, NIC = 300.0, 25.0


def moe_story(story, skew: bool):
    """Per layer: 4 kernels, dispatch, experts, combine, unpermute; a gradient all-reduce per layer.

    Resources: rank r's NVLink is r, node n's NIC (8 ranks per node) is RANKS + n.
    """
    s = story(num_ranks=RANKS, capacities=[NVLINK] * RANKS + [NIC] * (RANKS // 8), slowdown=0.2)
    groups = tuple(tuple(range(g, g + EP)) for g in range(0, RANKS, EP))
    volumes = [{r: 12.0 for r in group} | {RANKS + group[0] // 8: 3.0} for group in groups]
    grads = {r: 4.0 for r in range(RANKS)} | {RANKS + n: 6.0 for n in range(RANKS // 8)}
    expert = tuple(0.05 * (1 + (r % 3) / 2) for r in range(RANKS)) if skew else 0.05
    prev = None
    for layer in range(LAYERS):
        for k in range(4):
            prev = s.compute(f"L{layer}.k{k}", 0.01 * (1 + k % 2), deps=[] if prev is None else [prev])
        d = s.collective(f"L{layer}.dispatch", groups=groups, deps=[prev], latency=0.001, volumes=volumes)
        e = s.compute(f"L{layer}.expert", expert, deps=[d],
                      rank_scale=tuple(1 + (r % 3) / 2 for r in range(RANKS)) if skew else None)
        c = s.collective(f"L{layer}.combine", groups=groups, deps=[e], latency=0.001, volumes=volumes)
        prev = s.compute(f"L{layer}.unpermute", 0.01, deps=[c])
        s.collective(f"L{layer}.grads", groups=(tuple(range(RANKS)),), kind=OpKind.ALL_REDUCE,
                     stream=StreamKind.DP_COMM, deps=[prev], latency=0.002, volumes=[grads])
    return s


def test_full_simulation_keeps_every_invariant(story):
    s = moe_story(story, skew=True)
    plan = s.plan()
    timeline = s.run()
    assert timeline.meta["symmetric"] is False
    spans = {(span.rank, span.task): span for span in timeline.spans}
    assert len(spans) == len(timeline.spans) == RANKS * len(plan.tasks)
    for rank in range(RANKS):
        for kind, order in plan.streams.items():
            ends = [spans[rank, tid] for tid in order]
            assert all(a.end <= b.start + 1e-12 for a, b in zip(ends, ends[1:], strict=False)), (rank, kind)
        for task in plan.tasks:
            for dep in task.deps:
                assert spans[rank, dep].end <= spans[rank, task.id].start + 1e-12
    meetings = defaultdict(set)
    for span in timeline.spans:
        if span.kind.is_collective:
            op = plan.graph.ops[span.op]
            meetings[span.task, op.comm.group_of(span.rank)].add((span.start, span.end))
    assert all(len(times) == 1 for times in meetings.values())


def test_skew_slows_the_iteration_and_each_group_leaves_combine_together(story):
    timeline = moe_story(story, skew=True).run()
    even = moe_story(story, skew=False).run()
    assert timeline.makespan > even.makespan
    combine_ends = {span.rank: span.end for span in timeline.spans if span.name == "L0.combine"}
    # Group (0..3) holds ranks with scale 1, 1.5, 2, 1: all leave combine together.
    assert len({combine_ends[r] for r in range(EP)}) == 1


def test_symmetric_plan_simulated_once_matches_every_rank(story):
    symmetric = moe_story(story, skew=False).run()
    full = moe_story(story, skew=False).run(symmetric=False)
    assert symmetric.meta == {"symmetric": True, "simulated_tasks": len(symmetric.spans)}
    for rank in (0, 7, RANKS - 1):
        ours = [(s.task, s.start, s.end) for s in full.of_rank(rank)]
        assert [s.task for s in symmetric.spans] == [task for task, _, _ in ours]
        assert [s.end for s in symmetric.spans] == pytest.approx([end for _, _, end in ours], abs=1e-12)


def test_a_thousand_task_symmetric_plan_plays_every_task_once(story):
    s = story(num_ranks=64, capacities=[10.0], slowdown=0.1)
    prev = None
    for layer in range(100):
        for k in range(8):
            prev = s.compute(f"L{layer}.k{k}", 0.001, deps=[] if prev is None else [prev])
        prev = s.collective(f"L{layer}.a2a", groups=(tuple(range(64)),), deps=[prev], volumes=[{0: 0.01}])
        s.collective(f"L{layer}.grads", stream=StreamKind.DP_COMM, groups=(tuple(range(64)),), deps=[prev],
                     volumes=[{0: 0.005}])
    plan = s.plan()
    timeline = s.run()
    assert len(plan.tasks) == 1000 and sorted(span.task for span in timeline.spans) == list(range(1000))
