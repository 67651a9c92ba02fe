"""Where an iteration's time goes, per part: a predicted timeline's parts and their comparison with measured ones."""

from dataclasses import replace

import pytest

from moesim.api import run_schedule, scenario
from moesim.plan import StreamKind
from moesim.validation.breakdown import IDLE, part_of, rank_parts, timeline_parts
from moesim.validation.report import compare_parts

SMALL = {"model.num_layers": 2, "training.batch_per_gpu": 2}


@pytest.fixture(scope="module")
def tutel():
    scn = scenario("tiny-moe-a", "cpu-loopback", 1, SMALL)
    return run_schedule(replace(scn, schedule_settings={"degree": 2}), "tutel")


def test_a_timelines_parts_are_its_compute_by_role_and_phase_and_the_rest(tutel) -> None:
    plan, timeline = tutel.plan, tutel.timeline
    parts = timeline_parts(plan, timeline)
    compute = [s for s in timeline.spans if s.stream is StreamKind.COMPUTE]
    ranks = sorted({s.rank for s in timeline.spans})
    assert set(parts) - {IDLE} == {part_of(plan.op_of(plan.tasks[s.task])) for s in compute}
    # each rank's parts add up to the iteration; the parts are means over the timeline's ranks
    assert sum(parts.values()) == pytest.approx(timeline.makespan, rel=1e-12)
    busy = sum(s.end - s.start for s in compute) / len(ranks)
    assert parts[IDLE] == pytest.approx(timeline.makespan - busy, rel=1e-12)
    # Tutel splits the expert matmuls: every part of expert_fc1's forward counts in one key
    fc1 = [s for s in compute if plan.op_of(plan.tasks[s.task]).role == "expert_fc1" and s.phase.value == "forward"]
    assert len(fc1) > len({s.op for s in fc1})  # more tasks than ops: the op was split
    assert parts["expert_fc1:forward"] == pytest.approx(sum(s.end - s.start for s in fc1) / len(ranks), rel=1e-12)


def test_rank_parts_count_compute_tasks_only(tutel) -> None:
    plan = tutel.plan
    comm = next(t.id for t in plan.tasks if t.stream is not StreamKind.COMPUTE)
    first = next(t for t in plan.tasks if t.stream is StreamKind.COMPUTE)
    parts = rank_parts(plan, [(first.id, 0.002), (comm, 0.5)], iteration_s=0.010)
    assert parts == {part_of(plan.op_of(first)): 0.002, IDLE: pytest.approx(0.008)}


def test_parts_are_compared_largest_difference_first() -> None:
    predicted = {"a:forward": 1.0, "b:forward": 2.0, IDLE: 0.5}
    measured = {"a:forward": (1.1, 1.2, 1.0), "b:forward": (1.5, 1.4, 1.6), "c:forward": (0.05,)}
    assert compare_parts(predicted, measured) == (
        ("b:forward", 2.0, 1.5), (IDLE, 0.5, 0.0), ("a:forward", 1.0, 1.1), ("c:forward", 0.0, 0.05))
    assert compare_parts(predicted, {}) == ()  # a measured file from before parts were kept
