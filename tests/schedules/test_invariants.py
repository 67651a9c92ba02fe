"""Invariants every registered schedule keeps on every model preset (DESIGN.md, STYLE.md rule 11)."""

from collections import defaultdict

import pytest

from moesim.analysis.critical_path import critical_path_lower_bound
from moesim.api import run_schedule, scenario
from moesim.schedules import registered
from moesim.workload.ops import OpKind
from moesim.workload.presets import list_model_presets

# Every preset on one p4de node (8 GPUs); big models cut to a few layers so the suite stays fast,
# with enough layers left to hold dense and MoE blocks.
SHRINK = {"deepseek-v3": 5, "qwen3-235b-a22b": 4, "mixtral-8x7b": 4, "deepseek-v2-lite": 4}


@pytest.fixture(scope="module", params=sorted(list_model_presets()))
def scn(request):
    overrides = {"model.num_layers": SHRINK[request.param]} if request.param in SHRINK else {}
    return scenario(request.param, "p4de.24xlarge", 1, overrides)


@pytest.mark.parametrize("schedule", sorted(registered()))
def test_schedule_invariants(scn, schedule):
    result = run_schedule(scn, schedule)
    plan, timeline = result.plan, result.timeline
    spans_by_rank = defaultdict(list)
    for span in timeline.spans:
        spans_by_rank[span.rank].append(span)

    for rank, spans in spans_by_rank.items():
        # each task executed exactly once
        assert sorted(s.task for s in spans) == list(range(len(plan.tasks)))
        end_of = {s.task: s.end for s in spans}
        # dependencies respected
        for s in spans:
            assert all(end_of[dep] <= s.start + 1e-12 for dep in plan.tasks[s.task].deps), s.name
        # one task at a time per stream, in the plan's order
        for stream, order in plan.streams.items():
            on_stream = sorted((s for s in spans if s.stream is stream), key=lambda s: s.start)
            assert [s.task for s in on_stream] == list(order)
            assert all(a.end <= b.start + 1e-12 for a, b in zip(on_stream, on_stream[1:], strict=False))
        # each op's parts add up to the whole op
        fractions = defaultdict(float)
        for task in plan.tasks:
            fractions[task.op] += task.fraction
        assert all(abs(f - 1.0) < 1e-9 for f in fractions.values())
        assert set(fractions) == set(range(len(plan.graph.ops)))
        assert timeline.makespan >= critical_path_lower_bound(plan, scn.cost, rank) * (1 - 1e-9)


def test_sequential_never_overlaps_an_all_to_all(scn):
    timeline = run_schedule(scn, "sequential").timeline
    compute = [s for s in timeline.spans if not s.kind.is_collective]
    a2a = [s for s in timeline.spans if s.kind is OpKind.ALL_TO_ALL]
    assert a2a, "every preset has MoE layers"
    for comm in a2a:
        assert not any(c.start < comm.end - 1e-12 and comm.start < c.end - 1e-12 for c in compute), comm.name
