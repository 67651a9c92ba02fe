"""What each executed task did: FLOPs and bytes recorded on its span, and collective membership.

Compute spans carry the op's per-rank FLOPs and HBM bytes times the task's fraction. Collective
spans carry the bytes the rank sends to other ranks: an all-to-all's off-diagonal row sum, a ring
all-reduce's ``2 (n-1)/n`` of the payload, an all-gather's or reduce-scatter's ``(n-1)/n``.
"""

from __future__ import annotations

from collections.abc import Iterable

from moesim.plan import STREAM_ORDER, ExecutionPlan, Task
from moesim.timeline import Span
from moesim.workload.ops import Op, OpKind


class Membership:
    """Where each rank sits in each collective op: ``(group index, position in the group)``.

    Built lazily per groups tuple (ops of one plan share them; the plan keeps them alive) and owned by
    one simulation (no shared cache).
    """

    def __init__(self) -> None:
        self._by_groups: dict[int, dict[int, tuple[int, int]]] = {}

    def of(self, op: Op, rank: int) -> tuple[int, int] | None:
        """``(group index, member index)`` of ``rank`` in collective ``op``, or None if in no group."""
        assert op.comm is not None, f"{op.name} is a collective without a CommSpec"
        places = self._by_groups.get(id(op.comm.groups))
        if places is None:
            places = {
                member: (index, position)
                for index, group in enumerate(op.comm.groups)
                for position, member in enumerate(group)
            }
            self._by_groups[id(op.comm.groups)] = places
        return places.get(rank)


def compute_flops(op: Op, task: Task, rank: int) -> float:
    return op.flops_on(rank) * task.fraction_on(rank)


def compute_bytes(op: Op, task: Task, rank: int) -> float:
    return op.mem_bytes_on(rank) * task.fraction_on(rank)


def sent_bytes(op: Op, task: Task, place: tuple[int, int] | None) -> float:
    """Bytes the member at ``place`` sends to other ranks in collective ``task`` (0 outside any group)."""
    if place is None:
        return 0.0
    assert op.comm is not None, f"{op.name} is a collective without a CommSpec"
    group, member = place
    size = len(op.comm.groups[group])
    payload = op.comm.bytes * task.fraction
    if op.kind is OpKind.ALL_TO_ALL:
        if task.traffic is not None:
            row = task.traffic[group, member]
        elif op.comm.traffic is not None:
            row = op.comm.traffic[group, member] * task.fraction
        else:
            return payload * (size - 1) / size
        return float(row.sum() - row[member])
    if op.kind is OpKind.ALL_REDUCE:
        return 2.0 * (size - 1) / size * payload
    return (size - 1) / size * payload


def spans(plan: ExecutionPlan, records: Iterable[tuple[int, float, int, float]]) -> tuple[Span, ...]:
    """The spans of ``records`` (``(rank, start, task id, end)``, one per executed task and rank) with their
    FLOPs and bytes, sorted by (rank, start, stream order, task, end): the engine's and the harness's."""
    membership = Membership()
    keyed = sorted((rank, start, STREAM_ORDER.index(plan.tasks[tid].stream), tid, end)
                   for rank, start, tid, end in records)
    result = []
    for rank, start, _, tid, end in keyed:
        task = plan.tasks[tid]
        op = plan.op_of(task)
        if op.kind.is_collective:
            flops, sent = 0.0, sent_bytes(op, task, membership.of(op, rank))
        else:
            flops, sent = compute_flops(op, task, rank), compute_bytes(op, task, rank)
        result.append(Span(rank=rank, stream=task.stream, task=tid, op=op.id, name=op.name, kind=op.kind,
                           phase=op.phase, layer=op.layer, start=start, end=end, flops=flops, bytes=sent))
    return tuple(result)
