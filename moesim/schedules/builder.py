"""PlanBuilder: the bookkeeping every policy needs to turn ops into stream-ordered tasks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from moesim.plan import ExecutionPlan, StreamKind, Task
from moesim.workload.ops import Op, OpGraph, OpKind


def default_stream(op: Op) -> StreamKind:
    """MoE all-to-alls go to the comm stream, gradient all-reduce to its own, the rest is compute."""
    if op.kind is OpKind.ALL_TO_ALL:
        return StreamKind.COMM
    if op.kind.is_collective:
        return StreamKind.DP_COMM
    return StreamKind.COMPUTE


class PlanBuilder:
    """Appends tasks to streams in the order they are added; remembers which tasks make up each op.

    ``done(op_id)`` is the set of tasks that must finish before the op counts as finished (all its
    parts), which is what a consumer of the whole op depends on.
    """

    def __init__(self, graph: OpGraph, schedule: str) -> None:
        self.graph = graph
        self.schedule = schedule
        self._tasks: list[Task] = []
        self._streams: dict[StreamKind, list[int]] = {kind: [] for kind in StreamKind}
        self._parts: dict[int, list[int]] = {}

    def add(
        self,
        op: Op,
        *,
        stream: StreamKind | None = None,
        deps: Iterable[int] = (),
        part: int = 0,
        parts: int = 1,
        fraction: float = 1.0,
        traffic: np.ndarray | None = None,
    ) -> int:
        task_id = len(self._tasks)
        kind = stream if stream is not None else default_stream(op)
        unique_deps = tuple(sorted(set(deps)))
        self._tasks.append(Task(task_id, op.id, kind, unique_deps, part, parts, fraction, traffic))
        self._streams[kind].append(task_id)
        self._parts.setdefault(op.id, []).append(task_id)
        return task_id

    def add_whole(self, op: Op, *, stream: StreamKind | None = None, extra_deps: Iterable[int] = ()) -> int:
        """Add ``op`` unpartitioned, depending on all parts of each op it depends on."""
        return self.add(op, stream=stream, deps=[*self.deps_of(op), *extra_deps])

    def deps_of(self, op: Op) -> list[int]:
        return [task for dep in op.deps for task in self.done(dep)]

    def done(self, op_id: int) -> list[int]:
        assert op_id in self._parts, f"op {self.graph.ops[op_id].name} is not planned yet"
        return self._parts[op_id]

    def last_on(self, stream: StreamKind) -> int | None:
        order = self._streams[stream]
        return order[-1] if order else None

    def build(self, knobs: Mapping[str, object] | None = None) -> ExecutionPlan:
        streams = {kind: tuple(order) for kind, order in self._streams.items() if order}
        return ExecutionPlan(self.graph, self.schedule, tuple(self._tasks), streams, dict(knobs or {}))
