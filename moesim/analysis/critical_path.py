"""A lower bound on the iteration time of a plan: its critical path with every task alone on the machine.

Each task gets its uncontended duration (compute with no interference; a collective with the network
to itself: latency plus its heaviest resource's volume over that resource's capacity), edges are the
plan's dependencies plus each stream's order. Contention, interference and rendezvous can only add to
this, so a simulated iteration shorter than the bound is a bug.
"""

from __future__ import annotations

from collections import deque

from moesim.hardware.interface import CostModel
from moesim.plan import ExecutionPlan, Task


def uncontended_duration(plan: ExecutionPlan, cost: CostModel, task: Task, rank: int = 0) -> float:
    op = plan.op_of(task)
    if not op.kind.is_collective:
        return cost.compute_time(op, task, rank)
    assert op.comm is not None
    return cost.collective_demand(op, task, [op.comm.group_of(rank)]).uncontended_s(cost.capacities)


def critical_path_lower_bound(plan: ExecutionPlan, cost: CostModel, rank: int = 0) -> float:
    """Longest path, in seconds, through the plan's tasks as run by ``rank``."""
    successors: list[list[int]] = [[] for _ in plan.tasks]
    indegree = [0] * len(plan.tasks)
    for task in plan.tasks:
        for dep in task.deps:
            successors[dep].append(task.id)
            indegree[task.id] += 1
    for order in plan.streams.values():
        for before, after in zip(order, order[1:], strict=False):
            successors[before].append(after)
            indegree[after] += 1

    finish = [0.0] * len(plan.tasks)
    start = [0.0] * len(plan.tasks)
    ready = deque(t.id for t in plan.tasks if indegree[t.id] == 0)
    visited = 0
    while ready:
        tid = ready.popleft()
        visited += 1
        finish[tid] = start[tid] + uncontended_duration(plan, cost, plan.tasks[tid], rank)
        for nxt in successors[tid]:
            start[nxt] = max(start[nxt], finish[tid])
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    assert visited == len(plan.tasks), "the plan's dependencies and stream orders form a cycle"
    return max(finish, default=0.0)
