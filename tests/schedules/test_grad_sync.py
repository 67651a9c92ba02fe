"""``schedule.grad_sync``: how every schedule issues its gradient buckets (ddp, priority, packed)."""

from dataclasses import replace

import numpy as np
import pytest

from moesim.api import run_schedule, scenario
from moesim.errors import MoesimError
from moesim.hardware.interface import CollectiveDemand
from moesim.plan import ExecutionPlan, StreamKind, Task, list_schedule
from moesim.schedules import get_schedule, registered
from moesim.schedules.estimate import task_seconds
from moesim.schedules.grad_sync import GradSync, arrange_grad_sync
from moesim.workload.ops import CommSpec, Op, OpGraph, OpKind, Phase

COMPUTE, COMM, DP_COMM = StreamKind.COMPUTE, StreamKind.COMM, StreamKind.DP_COMM


class Seconds:
    """A cost model that knows only each op's seconds (a collective's as its latency on no link)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.num_ranks = 1
        self.capacities = np.zeros(0)

    def compute_time(self, op, task, rank):
        return self.seconds[op.name] * task.fraction

    def collective_demand(self, op, task, groups):
        empty = np.zeros(0)
        return CollectiveDemand(self.seconds[op.name], empty.astype(np.int64), empty)

    def collective_time(self, op, task, groups):
        return self.collective_demand(op, task, groups).uncontended_s(self.capacities)


def _plan(*specs):
    """(name, kind, stream, deps) in stream order; op id = task id = position."""
    ids = {}
    ops, tasks, streams = [], [], {}
    for name, kind, stream, deps in specs:
        ids[name] = len(ops)
        phase = Phase.GRAD_SYNC if kind is OpKind.ALL_REDUCE else Phase.BACKWARD_WEIGHT
        comm = CommSpec(groups=((0,),), bytes=1.0) if kind.is_collective else None
        ops.append(Op(id=len(ops), name=name, role=name, kind=kind, phase=phase, layer=0,
                      deps=tuple(ids[d] for d in deps), comm=comm))
        tasks.append(Task(id=len(tasks), op=len(tasks), stream=stream, deps=tuple(ids[d] for d in deps)))
        streams.setdefault(stream, []).append(ids[name])
    graph = OpGraph(ops=tuple(ops), num_ranks=1, num_layers=1, moe_layers=(0,))
    return ExecutionPlan(graph, "story", tuple(tasks), {k: tuple(v) for k, v in streams.items()})


MM, A2A, AR = OpKind.MATMUL, OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE


def _story():
    plan = _plan(("f", MM, COMPUTE, ()), ("w1", MM, COMPUTE, ("f",)), ("w2", MM, COMPUTE, ("f",)),
                 ("A1", A2A, COMM, ("f",)), ("g", MM, COMPUTE, ("A1",)), ("h", MM, COMPUTE, ("g",)),
                 ("A2", A2A, COMM, ("h",)), ("b3", AR, DP_COMM, ("w2",)), ("b1", AR, DP_COMM, ("w1",)),
                 ("b2", AR, DP_COMM, ("w2",)))
    cost = Seconds({"f": 1, "w1": 1, "w2": 4, "A1": 1, "g": 1, "h": 1, "A2": 1, "b1": 3, "b2": 1.5, "b3": 5})
    return plan, cost


def test_ddp_issues_buckets_in_the_order_their_gradients_finish():
    plan, cost = _story()
    arranged = arrange_grad_sync(plan, GradSync.DDP, cost)
    # b1 waits for w1 (compute position 1), b3 and b2 for w2 (position 2): b3 keeps its place before b2.
    assert [arranged.op_of(t).name for t in arranged.stream_of(DP_COMM)] == ["b1", "b3", "b2"]
    assert arranged.priority == {}


def test_priority_puts_the_all_to_alls_in_a_higher_class():
    plan, cost = _story()
    arranged = arrange_grad_sync(plan, GradSync.PRIORITY, cost)
    assert arranged.priority == {COMM: 0, DP_COMM: 1}
    assert arranged.streams[DP_COMM] == arrange_grad_sync(plan, GradSync.DDP, cost).streams[DP_COMM]


def test_packed_fills_the_gap_between_all_to_alls_largest_fitting_bucket_first():
    plan, cost = _story()
    # Buckets at no cost: f 0-1, w1 1-2, w2 2-6, g 6-7, h 7-8; A1 1-2, A2 8-9. The gap is [2, 8].
    # Ready: b1 at 2 (3 s), b2 and b3 at 6 (1.5 s, 5 s). From 2: b1 ends 5, b2 7.5, b3 11 -> b1 (the largest
    # that fits); from 5: b2 ends 7.5, b3 11 -> b2; b3 fits nowhere and follows A2.
    packed = arrange_grad_sync(plan, GradSync.PACKED, cost)
    assert DP_COMM not in packed.streams
    assert [packed.op_of(t).name for t in packed.stream_of(COMM)] == ["A1", "b1", "b2", "A2", "b3"]
    assert all(task.stream is COMM for task in packed.tasks if packed.op_of(task).kind is AR)
    start, end = list_schedule(packed, task_seconds(packed, cost))
    assert (start[8], end[8]) == (2, 5) and (start[9], end[9]) == (6, 7.5) and (start[6], end[6]) == (8, 9)


@pytest.mark.parametrize("schedule", sorted(registered()))
def test_packing_never_delays_an_all_to_all_in_the_estimate(schedule):
    scn = scenario("mixtral-8x7b", "dgx-h100", 2, {"model.num_layers": 4})
    packed = run_schedule(replace(scn, schedule_settings={"grad_sync": "packed"}), schedule)
    plan = packed.plan
    buckets = {t.id for t in plan.tasks if plan.op_of(t).kind is OpKind.ALL_REDUCE}
    assert buckets and DP_COMM not in plan.streams and all(plan.tasks[t].stream is COMM for t in buckets)
    seconds = task_seconds(plan, scn.cost)
    start, _ = list_schedule(plan, seconds)
    alone, _ = list_schedule(plan, [0.0 if t in buckets else s for t, s in enumerate(seconds)])
    comm = plan.streams[COMM]
    a2as = [t for t in comm if t not in buckets]
    assert buckets & set(comm[:comm.index(a2as[-1])]), "some bucket fits a gap between all-to-alls"
    assert all(start[a] == pytest.approx(alone[a], abs=1e-12) for a in a2as)
    assert packed.metrics.iteration_time_s > 0


@pytest.mark.parametrize("schedule", sorted(registered()))
def test_every_schedule_takes_the_mode_and_rejects_an_unknown_one(schedule):
    config = get_schedule(schedule).make_config({"grad_sync": "priority"})
    assert config.grad_sync is GradSync.PRIORITY
    with pytest.raises(MoesimError, match="schedule.grad_sync"):
        get_schedule(schedule).make_config({"grad_sync": "fifo"})
