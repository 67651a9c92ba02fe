"""Lancet's two-resource list scheduler: the pipelined time of one op range cut into k batch parts.

This is the cost function of Lancet's forward-pass DP (its ``PhasedScheduleGenerator``), written anew:
two resources, ``compute`` and ``comm`` (the MoE all-to-alls), each running one op part at a time; no
interference and no bandwidth sharing, as in Lancet's own cost model. The full engine later judges
the plan built from the result.

Rule. Part p of an op is *ready* once part p of every op of the range it depends on has finished
(dependencies outside the range count as done at t = 0). Whenever a resource is free it looks at its
current part: if that part has a ready op on this resource it starts the earliest one in program
order; otherwise the pointer moves cyclically to the next part that has one. So a resource stays
with one part (partition-major) and switches only when that part is blocked. If no part has a ready
op the pointer stays where it is and the resource waits for the next completion. All completions at
one instant are applied before any resource chooses, so ties never depend on event order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from moesim.plan import StreamKind

RESOURCES = (StreamKind.COMPUTE, StreamKind.COMM)  # also the tie-break order of the emission order

PartKey = tuple[int, int]  # (op id, part index)


@dataclass(frozen=True, slots=True)
class RangeOp:
    """One op of a range: its id, the ids of the range's ops it depends on, the resource it runs on."""

    id: int
    deps: tuple[int, ...]
    stream: StreamKind


@dataclass(frozen=True, slots=True)
class PipelineSchedule:
    """When each (op id, part) runs, and an emission order for the plan.

    ``order`` sorts the parts by (start, resource, program order, part), repaired into a topological
    order where zero-length parts tie with their dependants; each resource's subsequence is the order
    in which that resource ran its parts, up to such ties.
    """

    parts: int
    start_s: Mapping[PartKey, float]
    end_s: Mapping[PartKey, float]
    order: tuple[PartKey, ...]

    @property
    def makespan_s(self) -> float:
        """Time from 0 to the end of the last part (0 for an empty range)."""
        return max(self.end_s.values(), default=0.0)


def pipeline_schedule(ops: Sequence[RangeOp], parts: int, duration: Callable[[int, int], float]) -> PipelineSchedule:
    """Schedule ``ops`` (given in program order; every dep id is an earlier op of ``ops``) split into
    ``parts`` parts; ``duration(op id, part)`` is a part's time in seconds on its resource.

    Each part of an op starts at max(end of its deps' same-part parts, its resource free), choosing
    among ready parts by the rule of the module docstring.
    """
    assert parts >= 1, "a range has at least one part"
    assert all(op.stream in RESOURCES for op in ops), "ops run on compute or comm"
    position = {op.id: index for index, op in enumerate(ops)}
    assert all(position[dep] < position[op.id] for op in ops for dep in op.deps), "deps must be earlier range ops"
    dependents: list[list[int]] = [[] for _ in ops]
    for index, op in enumerate(ops):
        for dep in set(op.deps):
            dependents[position[dep]].append(index)
    waiting = [[len(set(op.deps))] * parts for op in ops]
    ready: dict[StreamKind, list[list[int]]] = {stream: [[] for _ in range(parts)] for stream in RESOURCES}
    for index, op in enumerate(ops):
        if not op.deps:
            for part in range(parts):
                ready[op.stream][part].append(index)  # ascending index: already a heap
    pointer = dict.fromkeys(RESOURCES, 0)
    busy = dict.fromkeys(RESOURCES, False)
    events: list[tuple[float, int, int, int]] = []  # (end, issue sequence, op index, part)
    start: dict[PartKey, float] = {}
    end: dict[PartKey, float] = {}
    now = 0.0
    while True:
        for stream in RESOURCES:
            if busy[stream]:
                continue
            chosen = _next_part(ready[stream], pointer[stream])
            if chosen is None:
                continue
            pointer[stream] = chosen
            index = heapq.heappop(ready[stream][chosen])
            key = (ops[index].id, chosen)
            start[key], end[key] = now, now + duration(*key)
            heapq.heappush(events, (end[key], len(start), index, chosen))
            busy[stream] = True
        if not events:
            break
        now = events[0][0]
        while events and events[0][0] == now:
            _, _, index, part = heapq.heappop(events)
            busy[ops[index].stream] = False
            for later in dependents[index]:
                waiting[later][part] -= 1
                if waiting[later][part] == 0:
                    heapq.heappush(ready[ops[later].stream][part], later)
    assert len(start) == len(ops) * parts, "every part of every op is scheduled"
    return PipelineSchedule(parts, start, end, emission_order(ops, parts, start))


def _next_part(queues: list[list[int]], current: int) -> int | None:
    """The first part, cyclically from ``current``, with a ready op; None when none has one."""
    count = len(queues)
    for step in range(count):
        part = (current + step) % count
        if queues[part]:
            return part
    return None


def emission_order(ops: Sequence[RangeOp], parts: int, start: Mapping[PartKey, float]) -> tuple[PartKey, ...]:
    """All (op id, part) by (start, resource, program order, part), as a topological order.

    Kahn's algorithm that always emits the smallest available key: it returns the plain sorted order
    whenever that order is already topological (every dependency has positive length).
    """
    position = {op.id: index for index, op in enumerate(ops)}
    rank = {stream: index for index, stream in enumerate(RESOURCES)}

    def key(index: int, part: int) -> tuple[float, int, int, int]:
        return (start[ops[index].id, part], rank[ops[index].stream], index, part)

    dependents: list[list[int]] = [[] for _ in ops]
    for index, op in enumerate(ops):
        for dep in set(op.deps):
            dependents[position[dep]].append(index)
    waiting = [[len(set(op.deps))] * parts for op in ops]
    available = [key(index, part) for index, op in enumerate(ops) if not op.deps for part in range(parts)]
    heapq.heapify(available)
    order: list[PartKey] = []
    while available:
        _, _, index, part = heapq.heappop(available)
        order.append((ops[index].id, part))
        for later in dependents[index]:
            waiting[later][part] -= 1
            if waiting[later][part] == 0:
                heapq.heappush(available, key(later, part))
    assert len(order) == len(ops) * parts, "the range's dependencies form a DAG"
    return tuple(order)
