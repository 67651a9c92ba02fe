"""Where an iteration's time goes, per part: a predicted timeline's parts and their comparison with measured ones."""

from dataclasses import replace

import pytest

from moesim.api import run_schedule, scenario
from moesim.plan import StreamKind
from moesim.validation.breakdown import (
    HANDOVER,
    IDLE,
    WAITING,
    collective_calls,
    is_wait,
    part_of,
    rank_parts,
    timeline_parts,
)
from moesim.validation.report import compare_collectives, compare_parts

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
    waits = {part for part in parts if is_wait(part)}
    assert set(parts) - {IDLE} - waits == {part_of(plan.op_of(plan.tasks[s.task])) for s in compute}
    # Tutel's expert chunks wait for their dispatch, the unpermute for the combine
    assert {WAITING + "dispatch:forward", WAITING + "combine:forward", HANDOVER} <= waits
    # each rank's parts add up to the iteration; the parts are means over the timeline's ranks
    assert sum(parts.values()) == pytest.approx(timeline.makespan, rel=1e-12)
    busy = sum(s.end - s.start for s in compute) / len(ranks)
    waited = sum(parts[part] for part in waits)
    assert waited > 0 and parts[IDLE] == pytest.approx(timeline.makespan - busy - waited, rel=1e-9, abs=1e-12)
    # Tutel splits the expert matmuls: every part of expert_fc1's forward counts in one key
    fc1 = [s for s in compute if plan.op_of(plan.tasks[s.task]).role == "expert_fc1" and s.phase.value == "forward"]
    assert len(fc1) > len({s.op for s in fc1})  # more tasks than ops: the op was split
    assert parts["expert_fc1:forward"] == pytest.approx(sum(s.end - s.start for s in fc1) / len(ranks), rel=1e-12)


def test_rank_parts_count_compute_tasks_only(tutel) -> None:
    plan = tutel.plan
    comm = next(t.id for t in plan.tasks if t.stream is not StreamKind.COMPUTE)
    first = next(t for t in plan.tasks if t.stream is StreamKind.COMPUTE)
    parts = rank_parts(plan, {first.id: (0.0, 0.002), comm: (0.0, 0.5)}, iteration_s=0.010)
    assert parts == {part_of(plan.op_of(first)): 0.002, HANDOVER: 0.0, IDLE: pytest.approx(0.008)}


def test_a_wait_for_another_stream_counts_up_to_that_tasks_end_then_the_hand_over(tutel) -> None:
    """The first compute task that depends on a collective: its predecessor ends at 1.0 ms, the collective
    at 2.5 ms, the task starts at 2.6 ms: 1.5 ms waiting for the collective, 0.1 ms hand-over. A gap with no
    late dependency (the predecessor's own) stays in IDLE."""
    plan = tutel.plan
    order = plan.streams[StreamKind.COMPUTE]
    position, consumer = next((i, t) for i, t in enumerate(order) if i > 0 and any(
        plan.tasks[d].stream is not StreamKind.COMPUTE for d in plan.tasks[t].deps))
    previous = order[position - 1]
    awaited = next(d for d in plan.tasks[consumer].deps if plan.tasks[d].stream is not StreamKind.COMPUTE)
    ms = 1e-3
    times = {previous: (0.0, 1.0 * ms), awaited: (0.5 * ms, 2.5 * ms), consumer: (2.6 * ms, 3.0 * ms)}
    parts = rank_parts(plan, times, iteration_s=4.0 * ms)
    waited = WAITING + part_of(plan.op_of(plan.tasks[awaited]))
    assert parts[waited] == pytest.approx(1.5 * ms) and parts[HANDOVER] == pytest.approx(0.1 * ms)
    assert parts[IDLE] == pytest.approx(4.0 * ms - 1.0 * ms - 0.4 * ms - 1.6 * ms)
    # the collective ended before the predecessor did: no wait, the gap is bookkeeping
    hidden = rank_parts(plan, {**times, awaited: (0.1 * ms, 0.9 * ms)}, iteration_s=4.0 * ms)
    assert waited not in hidden and hidden[HANDOVER] == 0.0
    assert hidden[IDLE] == pytest.approx(4.0 * ms - 1.4 * ms)


def test_parts_are_compared_largest_difference_first() -> None:
    predicted = {"a:forward": 1.0, "b:forward": 2.0, IDLE: 0.5}
    measured = {"a:forward": (1.1, 1.2, 1.0), "b:forward": (1.5, 1.4, 1.6), "c:forward": (0.05,)}
    assert compare_parts(predicted, measured) == (
        ("b:forward", 2.0, 1.5), (IDLE, 0.5, 0.0), ("a:forward", 1.0, 1.1), ("c:forward", 0.0, 0.05))
    assert compare_parts(predicted, {}) == ()  # a measured file from before parts were kept


def test_a_measured_file_without_waits_compares_them_inside_idle() -> None:
    predicted = {"a:forward": 1.0, WAITING + "dispatch:forward": 0.3, HANDOVER: 0.1, IDLE: 0.2}
    old = {"a:forward": (1.0,), IDLE: (0.7,)}
    assert compare_parts(predicted, old) == ((IDLE, pytest.approx(0.6), 0.7), ("a:forward", 1.0, 1.0))
    new = {"a:forward": (1.0,), WAITING + "dispatch:forward": (0.5,), HANDOVER: (0.1,), IDLE: (0.2,)}
    assert compare_parts(predicted, new)[0] == (WAITING + "dispatch:forward", 0.3, 0.5)


def test_collective_calls_run_from_the_rendezvous_on_one_clock(tutel) -> None:
    """Two ranks, one clock: rank 1 reaches the first dispatch 0.3 ms after rank 0, both end at 1.0 ms: each
    call ran 0.7 ms from the rendezvous; on clocks of their own each counts from its own start."""
    plan = tutel.plan
    dispatch = next(t for t in plan.tasks if plan.op_of(t).kind.is_collective and plan.op_of(t).role == "dispatch")
    grad = next(t for t in plan.tasks if plan.op_of(t).role == "grad_sync")
    ms = 1e-3
    rank0 = {dispatch.id: (0.0, 1.0 * ms), grad.id: (5.0 * ms, 9.0 * ms)}
    rank1 = {dispatch.id: (0.3 * ms, 1.0 * ms), grad.id: (5.5 * ms, 9.0 * ms)}
    shared = collective_calls(plan, [rank0, rank1], from_rendezvous=True)
    assert shared == {"dispatch:forward": [pytest.approx(0.7 * ms)] * 2,
                      "grad_sync:grad_sync": [pytest.approx(3.5 * ms)] * 2}
    own = collective_calls(plan, [rank0, rank1], from_rendezvous=False)
    assert own["dispatch:forward"] == [pytest.approx(1.0 * ms), pytest.approx(0.7 * ms)]
    # a rank without times for a call is left out: the other's call runs from its own start
    assert collective_calls(plan, [rank0, {}], from_rendezvous=True)["dispatch:forward"] == [pytest.approx(1.0 * ms)]


def test_collective_calls_are_compared_most_measured_time_first(tutel) -> None:
    """The predicted mean call of each part from the timeline, beside the measured calls' count, mean,
    median and 90th percentile (nearest rank); a part the prediction lacks is predicted 0."""
    plan, timeline = tutel.plan, tutel.timeline
    dispatches = [s.duration for s in timeline.spans if s.kind.is_collective
                  and part_of(plan.graph.ops[s.op]) == "dispatch:forward"]
    measured = {"dispatch:forward": [0.001 * k for k in range(1, 11)], "combine:forward": [0.02, 0.02],
                "made:up": [0.5], "empty:forward": []}
    compared = compare_collectives(plan, timeline, measured)
    assert [c.part for c in compared] == ["made:up", "dispatch:forward", "combine:forward"]
    (made_up, dispatch, _) = compared
    assert made_up.predicted_mean_s == 0.0 and made_up.measured_p90_s == 0.5
    assert dispatches and dispatch.predicted_mean_s == pytest.approx(sum(dispatches) / len(dispatches))
    assert (dispatch.measured_calls, dispatch.measured_mean_s, dispatch.measured_median_s, dispatch.measured_p90_s) \
        == (10, pytest.approx(0.0055), pytest.approx(0.0055), pytest.approx(0.009))
    assert compare_collectives(plan, timeline, {}) == ()  # a measured file from before the calls were kept
