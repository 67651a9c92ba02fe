"""Where an iteration's time goes, per part: the compute of each op role and phase, what the compute stream
waits for when it waits for another stream (each collective's role and phase, then the hand-over after it
ended), and the rest of the time a rank does not compute (bookkeeping between tasks, before its first and
after its last task), mean over ranks. The validation report sets the measured parts (median over
iterations) beside the predicted ones, so a prediction error can be traced to the ops that make it, and
every collective call's time by part (``collective_calls``) beside the predicted mean call.

Parts are keyed ``role:phase`` (``expert_fc1:backward_weight``), waits ``waiting for role:phase``: the layers
of an op and the parts a schedule splits it into add up. This module imports neither torch nor simpy: the
executor, the worker and the report all use it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from moesim.plan import ExecutionPlan, StreamKind
from moesim.timeline import Timeline
from moesim.workload.ops import Op

IDLE = "not computing"
HANDOVER = "hand-over"
WAITING = "waiting for "


def part_of(op: Op) -> str:
    """The part an op's compute counts in: its role (its kind for a synthetic op) and phase."""
    return f"{op.role.value if op.role is not None else op.kind.value}:{op.phase.value}"


def rank_parts(plan: ExecutionPlan, times: Mapping[int, tuple[float, float]], iteration_s: float) -> dict[str, float]:
    """One rank's parts in one iteration, from its tasks' ``(start, end)`` (task id -> seconds on one clock):
    each compute task's time summed by part; where a compute task starts after the previous one ended
    because a task of another stream it depends on had not ended, the gap up to that task's end (the last
    to end, if several) as ``WAITING`` its part and the rest as ``HANDOVER``; and the rest of the iteration
    (``iteration_s``, the slowest rank's end) as ``IDLE``."""
    parts: dict[str, float] = defaultdict(float)
    parts[HANDOVER] = 0.0  # always present: a file with parts but no hand-over is from before waits were kept
    previous_end: float | None = None
    for task_id in plan.streams.get(StreamKind.COMPUTE, ()):
        if task_id not in times:
            continue
        start, end = times[task_id]
        task = plan.tasks[task_id]
        parts[part_of(plan.op_of(task))] += end - start
        if previous_end is not None and start > previous_end:
            late = [dep for dep in task.deps if plan.tasks[dep].stream is not StreamKind.COMPUTE
                    and dep in times and times[dep][1] > previous_end]
            if late:
                awaited = max(late, key=lambda dep: times[dep][1])
                until = min(times[awaited][1], start)
                parts[WAITING + part_of(plan.op_of(plan.tasks[awaited]))] += until - previous_end
                parts[HANDOVER] += start - until
        previous_end = end
    parts[IDLE] = max(0.0, iteration_s - sum(parts.values()))
    return dict(parts)


def at_rendezvous(plan: ExecutionPlan,
                  times: Sequence[Mapping[int, tuple[float, float]]]) -> list[dict[int, tuple[float, float]]]:
    """Every rank's ``(start, end)`` by task id (one clock), with each collective started at its group's
    rendezvous, the last member's start, as the engine starts it: waiting for a peer is then idle time on
    the stream, not communication. A rank without a task's times (outside the plan) is left out of it."""
    adjusted = [dict(row) for row in times]
    for task in plan.tasks:
        op = plan.op_of(task)
        if not op.kind.is_collective or op.comm is None:
            continue
        for group in op.comm.groups:
            members = [rank for rank in group if rank < len(times) and task.id in times[rank]]
            meeting = max((times[rank][task.id][0] for rank in members), default=0.0)
            for rank in members:
                start, end = times[rank][task.id]
                adjusted[rank][task.id] = (min(max(start, meeting), end), end)
    return adjusted


def collective_calls(plan: ExecutionPlan, times: Sequence[Mapping[int, tuple[float, float]]], *,
                     from_rendezvous: bool) -> dict[str, list[float]]:
    """Every collective call of one iteration, by part (its role and phase): how long it ran on each member
    (``times[rank]``: task id -> ``(start, end)``), in task order then rank order. With ``from_rendezvous``
    (every rank's times on one clock) a call runs from its group's rendezvous (``at_rendezvous``) to its
    end, as the engine counts it; otherwise from the rank's own start, its wait for the peers included. A
    rank without a task's times (outside the plan) is left out."""
    timed = at_rendezvous(plan, times) if from_rendezvous else times
    calls: dict[str, list[float]] = defaultdict(list)
    for task in plan.tasks:
        op = plan.op_of(task)
        if not op.kind.is_collective or op.comm is None:
            continue
        for group in op.comm.groups:
            for rank in group:
                if rank < len(timed) and task.id in timed[rank]:
                    start, end = timed[rank][task.id]
                    calls[part_of(op)].append(end - start)
    return dict(calls)


def joined(runs: Iterable[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """Each key's values of every mapping of ``runs`` one after the other, in the order of ``runs``
    (sorted keys): the collective calls of several iterations or runs as one."""
    values: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for key, seconds in run.items():
            values[key].extend(seconds)
    return {key: values[key] for key in sorted(values)}


def is_wait(part: str) -> bool:
    """Whether ``part`` is time the compute stream waited for another stream (a wait or a hand-over)."""
    return part == HANDOVER or part.startswith(WAITING)


def mean_over_ranks(per_rank: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each part over ranks (a part a rank lacks counts 0 there)."""
    keys = sorted({key for parts in per_rank for key in parts})
    return {key: sum(parts.get(key, 0.0) for parts in per_rank) / len(per_rank) for key in keys}


def timeline_parts(plan: ExecutionPlan, timeline: Timeline) -> dict[str, float]:
    """A timeline's parts (a predicted one: its ranks as the timeline represents them), mean over ranks."""
    end = timeline.makespan
    by_rank: dict[int, dict[int, tuple[float, float]]] = defaultdict(dict)
    for span in timeline.spans:
        by_rank[span.rank][span.task] = (span.start, span.end)
    return mean_over_ranks([rank_parts(plan, times, end) for _, times in sorted(by_rank.items())])
