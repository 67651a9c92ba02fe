"""A plan's times by list scheduling, for decisions inside a policy (the engine judges the result).

Each stream runs its tasks in order; a task starts once its stream is free and its dependencies are
done, and takes its time alone: compute at full speed on its slowest rank, a collective over all its
groups on an idle network. Nothing is shared and nothing interferes, so this is a fast, optimistic
view of the plan, the kind Lancet's own passes reason with.
"""

from __future__ import annotations

from collections.abc import Sequence

from moesim.hardware.interface import CostModel
from moesim.plan import ExecutionPlan, Task
from moesim.workload.ops import Op


def task_seconds(plan: ExecutionPlan, cost: CostModel) -> list[float]:
    """Seconds of every task alone (indexed by task id)."""
    return [seconds_alone(plan.op_of(task), task, cost, plan.graph.num_ranks) for task in plan.tasks]


def seconds_alone(op: Op, task: Task, cost: CostModel, num_ranks: int) -> float:
    """``task`` (a part of ``op``) alone: a compute task on its slowest rank, a collective over every
    group of the op on an idle network."""
    if op.kind.is_collective:
        assert op.comm is not None
        return cost.collective_demand(op, task, range(len(op.comm.groups))).uncontended_s(cost.capacities)
    alike = op.rank_scale is None and task.rank_fraction is None
    return max(cost.compute_time(op, task, rank) for rank in (range(1) if alike else range(num_ranks)))


def list_schedule(plan: ExecutionPlan, seconds: Sequence[float]) -> tuple[list[float], list[float]]:
    """(start, end) of every task (indexed by task id), each task taking ``seconds[id]``.

    The plan must not deadlock (stream orders and dependencies form a DAG; asserted).
    """
    count = len(plan.tasks)
    successors: list[list[int]] = [[] for _ in range(count)]
    waiting = [len(task.deps) for task in plan.tasks]
    for task in plan.tasks:
        for dep in task.deps:
            successors[dep].append(task.id)
    for order in plan.streams.values():
        for before, after in zip(order, order[1:], strict=False):
            successors[before].append(after)
            waiting[after] += 1
    start = [0.0] * count
    end = [0.0] * count
    ready = [tid for tid in range(count) if waiting[tid] == 0]
    done = 0
    while ready:
        tid = ready.pop()
        end[tid] = start[tid] + seconds[tid]
        done += 1
        for later in successors[tid]:
            start[later] = max(start[later], end[tid])
            waiting[later] -= 1
            if waiting[later] == 0:
                ready.append(later)
    assert done == count, "the plan's stream orders and dependencies must form a DAG"
    return start, end
