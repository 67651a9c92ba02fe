"""A lower bound on the iteration time of a plan: its critical path with every task alone on the machine.

Each task gets its uncontended duration (compute with no interference; a collective with the network
to itself: latency plus its heaviest resource's volume over that resource's capacity), edges are the
plan's dependencies plus each stream's order. Contention, interference and rendezvous can only add to
this, so a simulated iteration shorter than the bound is a bug.
"""

from __future__ import annotations

from moesim.hardware.interface import CostModel
from moesim.plan import ExecutionPlan, Task, list_schedule


def uncontended_duration(plan: ExecutionPlan, cost: CostModel, task: Task, rank: int = 0) -> float:
    op = plan.op_of(task)
    if not op.kind.is_collective:
        return cost.compute_time(op, task, rank)
    assert op.comm is not None
    return cost.collective_time(op, task, [op.comm.group_of(rank)])


def critical_path_lower_bound(plan: ExecutionPlan, cost: CostModel, rank: int = 0) -> float:
    """Longest path, in seconds, through the plan's tasks as run by ``rank``."""
    _, end = list_schedule(plan, [uncontended_duration(plan, cost, task, rank) for task in plan.tasks])
    return max(end, default=0.0)
