"""Explaining a plan that cannot finish: which tasks are blocked and what each waits for."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import DeadlockError
from moesim.plan import ExecutionPlan, StreamKind

MAX_LISTED = 10
MAX_RANKS_LISTED = 8


@dataclass(frozen=True, slots=True)
class Blocked:
    """The first unfinished task of one stream of one rank, when no event is left.

    Exactly one of ``dependency`` (an unfinished task it depends on) and ``absent`` (group members
    that never reached its rendezvous) is set.
    """

    rank: int
    stream: StreamKind
    task: int
    dependency: int | None = None
    absent: tuple[int, ...] = ()


def deadlock_error(plan: ExecutionPlan, blocked: list[Blocked]) -> DeadlockError:
    """A DeadlockError whose one-line message names up to ``MAX_LISTED`` blocked tasks.

    ``blocked`` must be in the order the message should list them (rank, then stream).
    """
    heads = {(b.rank, b.task) for b in blocked}
    parts = [_describe(plan, b, heads) for b in blocked[:MAX_LISTED]]
    if len(blocked) > MAX_LISTED:
        parts.append(f"and {len(blocked) - MAX_LISTED} more")
    return DeadlockError(
        f"the plan cannot finish, {len(blocked)} streams are blocked: " + "; ".join(parts)
    )


def _describe(plan: ExecutionPlan, blocked: Blocked, heads: set[tuple[int, int]]) -> str:
    where = f"rank {blocked.rank} {blocked.stream.value}: {_name(plan, blocked.task)} waits for "
    if blocked.dependency is not None:
        state = "blocked" if (blocked.rank, blocked.dependency) in heads else "not started"
        return where + f"{_name(plan, blocked.dependency)} ({state})"
    ranks = ", ".join(str(rank) for rank in blocked.absent[:MAX_RANKS_LISTED])
    if len(blocked.absent) > MAX_RANKS_LISTED:
        ranks += f" and {len(blocked.absent) - MAX_RANKS_LISTED} more"
    noun = "rank" if len(blocked.absent) == 1 else "ranks"
    return where + f"{noun} {ranks} at the rendezvous"


def _name(plan: ExecutionPlan, task_id: int) -> str:
    task = plan.tasks[task_id]
    return f"{task.label} {plan.op_of(task).name}"
