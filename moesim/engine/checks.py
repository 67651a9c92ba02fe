"""Checks on a plan and cost model that must pass before simulating; each failure is a MoesimError."""

from __future__ import annotations

from moesim.errors import MoesimError
from moesim.hardware.interface import CostModel
from moesim.plan import ExecutionPlan


def check_plan(plan: ExecutionPlan, cost: CostModel) -> None:
    """Raise MoesimError naming the first task, op or setting the engine cannot play.

    After this, every dependency is a task id of the plan, every task's op exists and every
    collective op has a CommSpec whose groups hold ranks of the job.
    """
    num_ranks = plan.graph.num_ranks
    if cost.num_ranks != num_ranks:
        raise MoesimError(
            f"cost model num_ranks: {cost.num_ranks} but the plan's graph has {num_ranks} ranks; "
            "build both for the same cluster"
        )
    for owner, where, names in ((cost, "cost model", ("compute_slowdown", "comm_slowdown")),
                                (cost.host, "host", ("comm_latency_under_compute", "compute_wait_under_comm",
                                                     "stream_handoff", "rendezvous_skew", "rendezvous_skew_cap"))):
        for name in names:
            if not getattr(owner, name) >= 0:
                raise MoesimError(f"{where} {name}: {getattr(owner, name)}; must be >= 0 (0 = no such delay)")
    num_tasks, num_ops = len(plan.tasks), len(plan.graph.ops)
    for task in plan.tasks:
        if not 0 <= task.op < num_ops:
            raise MoesimError(f"{task.label}: op {task.op} is not an op id of the graph (0..{num_ops - 1})")
        for dep in task.deps:
            if not 0 <= dep < num_tasks:
                raise MoesimError(
                    f"{task.label} ({plan.graph.ops[task.op].name}): deps contains {dep}, "
                    f"not a task id of this plan (0..{num_tasks - 1})"
                )
    checked: set[int] = set()  # ops share groups tuples: check each once
    for op in plan.graph.ops:
        if not op.kind.is_collective:
            continue
        if op.comm is None:
            raise MoesimError(f"op {op.name}: comm must be set for a {op.kind.value} op")
        if id(op.comm.groups) not in checked:
            _check_groups(op.name, op.comm.groups, num_ranks)
            checked.add(id(op.comm.groups))


def _check_groups(name: str, groups: tuple[tuple[int, ...], ...], num_ranks: int) -> None:
    seen: set[int] = set()
    for group in groups:
        for rank in group:
            if not 0 <= rank < num_ranks:
                raise MoesimError(
                    f"op {name}: comm.groups contains rank {rank}, not a rank of the job (0..{num_ranks - 1})"
                )
            if rank in seen:
                raise MoesimError(
                    f"op {name}: rank {rank} appears more than once in comm.groups; "
                    "each rank may be in at most one group, once"
                )
            seen.add(rank)
