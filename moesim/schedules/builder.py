"""PlanBuilder: the bookkeeping every policy needs to turn ops into stream-ordered tasks."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from moesim.plan import Decisions, ExecutionPlan, StreamKind, Task
from moesim.workload.ops import A2AAlgorithm, Axis, Op, OpGraph, OpKind


def default_stream(op: Op) -> StreamKind:
    """MoE all-to-alls go to the comm stream, gradient all-reduce to its own, the rest is compute."""
    if op.kind is OpKind.ALL_TO_ALL:
        return StreamKind.COMM
    if op.kind.is_collective:
        return StreamKind.DP_COMM
    return StreamKind.COMPUTE


@dataclass(frozen=True, slots=True)
class Part:
    """The share of an op one part carries (see ``Task``)."""

    fraction: float
    rank_fraction: tuple[float, ...] | None = None
    traffic: np.ndarray | None = None
    axis: Axis | None = None


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
        rank_fraction: tuple[float, ...] | None = None,
        algorithm: A2AAlgorithm = A2AAlgorithm.LINEAR,
        axis: Axis | None = None,
    ) -> int:
        task_id = len(self._tasks)
        kind = stream if stream is not None else default_stream(op)
        unique_deps = tuple(sorted(set(deps)))
        if op.kind is not OpKind.ALL_TO_ALL:
            algorithm = A2AAlgorithm.LINEAR  # the choice concerns all-to-alls only
        self._tasks.append(
            Task(task_id, op.id, kind, unique_deps, part, parts, fraction, traffic, rank_fraction, algorithm, axis)
        )
        self._streams[kind].append(task_id)
        self._parts.setdefault(op.id, []).append(task_id)
        return task_id

    def add_whole(
        self,
        op: Op,
        *,
        stream: StreamKind | None = None,
        extra_deps: Iterable[int] = (),
        algorithm: A2AAlgorithm = A2AAlgorithm.LINEAR,
    ) -> int:
        """Add ``op`` unpartitioned, depending on all parts of each op it depends on."""
        return self.add(op, stream=stream, deps=[*self.deps_of(op), *extra_deps], algorithm=algorithm)

    def add_region(
        self,
        order: Sequence[tuple[Op, int]],
        parts: int,
        part_of: Callable[[Op, int], Part],
        *,
        extra_deps: Mapping[tuple[int, int], Iterable[int]] | None = None,
        algorithm: A2AAlgorithm = A2AAlgorithm.LINEAR,
        causal: Collection[int] = (),
    ) -> dict[tuple[int, int], int]:
        """Add a region of ops split into ``parts`` parts, in ``order`` (pairs of op and part index).

        Part p of an op depends on part p of each op it depends on inside the region (parts 0..p for
        the ops in ``causal``, by op id), and on every part of each dependency outside it; an op
        outside the region that depends on a region op later waits for all its parts (``done``).
        ``order`` fixes each stream's order, so the caller decides the pipelining (Tutel's chunks,
        Lancet's stage-major order). Returns the task id of each (op id, part).
        """
        inside = {op.id for op, _ in order}
        placed: dict[tuple[int, int], int] = {}
        extra = extra_deps or {}
        for op, index in order:
            deps: list[int] = list(extra.get((op.id, index), ()))
            read = range(index + 1) if op.id in causal else (index,)
            for dep in op.deps:
                if dep in inside:
                    assert all((dep, p) in placed for p in read), \
                        f"{op.name} part {index} comes before a part it depends on"
                    deps.extend(placed[dep, p] for p in read)
                else:
                    deps.extend(self.done(dep))
            spec = part_of(op, index)
            placed[op.id, index] = self.add(
                op, deps=deps, part=index, parts=parts,
                fraction=spec.fraction, traffic=spec.traffic, rank_fraction=spec.rank_fraction,
                algorithm=algorithm, axis=spec.axis,
            )
        assert len(placed) == len(inside) * parts, "every op of a region needs each of its parts once"
        return placed

    def deps_of(self, op: Op) -> list[int]:
        return [task for dep in op.deps for task in self.done(dep)]

    def done(self, op_id: int) -> list[int]:
        assert op_id in self._parts, f"op {self.graph.ops[op_id].name} is not planned yet"
        return self._parts[op_id]

    def last_on(self, stream: StreamKind) -> int | None:
        order = self._streams[stream]
        return order[-1] if order else None

    def build(self, decisions: Decisions) -> ExecutionPlan:
        streams = {kind: tuple(order) for kind, order in self._streams.items() if order}
        return ExecutionPlan(self.graph, self.schedule, tuple(self._tasks), streams, decisions)
