"""Each task's time alone, for decisions inside a policy (the engine judges the result).

Compute at full speed on its slowest rank, a collective over all its groups on an idle network: with
``plan.list_schedule`` a fast, optimistic view of a plan (nothing shared, nothing interferes), the kind
Lancet's own passes reason with.
"""

from __future__ import annotations

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
        return cost.collective_time(op, task, range(len(op.comm.groups)))
    alike = op.rank_scale is None and task.rank_fraction is None
    return max(cost.compute_time(op, task, rank) for rank in (range(1) if alike else range(num_ranks)))
