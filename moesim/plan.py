"""ExecutionPlan: what a schedule hands to the engine (and to the validation harness).

The plan is SPMD, like the training program it describes: one program that every rank runs.
It names the streams (CUDA streams on a GPU) and, for each, the ordered list of tasks it runs; a
task is an op or one part of a partitioned op, with explicit dependencies on other tasks (the
CUDA event model). A task starts when its stream has finished the task before it and every task
it depends on has finished; a collective task additionally waits for every member of its group
(the engine's rendezvous).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np

from moesim.workload.ops import A2AAlgorithm, Axis, Op, OpGraph, uniform_traffic


class StreamKind(StrEnum):
    COMPUTE = "compute"  # kernels
    COMM = "comm"        # MoE all-to-all
    DP_COMM = "dp_comm"  # data-parallel gradient all-reduce buckets


STREAM_ORDER: tuple[StreamKind, ...] = tuple(StreamKind)  # spans starting together sort in this order


class GradSync(StrEnum):
    """How a plan issues its gradient buckets' all-reduces (``schedules/grad_sync.py``)."""

    DDP = "ddp"
    PRIORITY = "priority"
    PACKED = "packed"


@dataclass(frozen=True, slots=True)
class DecisionTable:
    """A table of a plan's decisions for people: a title, rows, and (key, header) columns."""

    title: str
    rows: list[dict[str, object]]
    columns: list[tuple[str, str]]


class Decisions(Protocol):
    """What a policy decided for one plan, as a typed value that renders itself: ``to_json`` for
    programs (``--json``'s ``knobs``), ``summary`` for a table cell, ``tables`` for ``moesim run``."""

    def to_json(self) -> dict[str, object]: ...

    def summary(self) -> str: ...

    def tables(self) -> list[DecisionTable]: ...


@dataclass(frozen=True, slots=True)
class BaseDecisions:
    """The decision every plan carries: how its gradient buckets travel (all a plan of a policy without
    knobs of its own, or one built by hand, records)."""

    grad_sync: GradSync = GradSync.DDP

    def to_json(self) -> dict[str, object]:
        return {"grad_sync": self.grad_sync.value}

    def summary(self) -> str:
        return "-" if self.grad_sync is GradSync.DDP else f"grad_sync={self.grad_sync.value}"

    def tables(self) -> list[DecisionTable]:
        return []


@dataclass(frozen=True, slots=True, eq=False)
class Task:
    """One unit of work on one stream.

    ``fraction`` is the share of the op's FLOPs and bytes this part carries (parts of one op sum to
    1); ``rank_fraction`` overrides it per rank where parts are uneven across ranks (irregular
    partitions of skewed routing). A rank's parts sum to 1, except for Lancet's partitioned expert
    ops, whose all-to-all-v parts carry only kept tokens: with capacity slack they sum to less.
    ``traffic`` overrides the op's all-to-all byte matrix for this part (same shape), for schedules
    whose parts are irregular (Lancet's capacity passing). ``algorithm`` chooses how an all-to-all
    moves its bytes. ``axis`` says along which dimension a part cuts its op where that changes the
    kernel's shape (a sequence part of an attention runs fewer query rows; None: the token dimension).
    """

    id: int
    op: int
    stream: StreamKind
    deps: tuple[int, ...] = ()
    part: int = 0
    parts: int = 1
    fraction: float = 1.0
    traffic: np.ndarray | None = None
    rank_fraction: tuple[float, ...] | None = None
    algorithm: A2AAlgorithm = A2AAlgorithm.LINEAR
    axis: Axis | None = None

    def fraction_on(self, rank: int) -> float:
        return self.fraction if self.rank_fraction is None else self.rank_fraction[rank]

    @property
    def label(self) -> str:
        return f"task {self.id}" if self.parts == 1 else f"task {self.id} (part {self.part + 1}/{self.parts})"


@dataclass(frozen=True, slots=True, eq=False)
class ExecutionPlan:
    """Tasks indexed by id (``tasks[i].id == i``), and each stream's order as task ids.

    ``priority`` gives the network priority class of each stream's collectives: on a resource they
    share, a lower class is served first (strict priority) and a higher one gets what is left; a
    stream not named is class 0.
    """

    graph: OpGraph
    schedule: str
    tasks: tuple[Task, ...]
    streams: Mapping[StreamKind, tuple[int, ...]]
    decisions: Decisions = field(default_factory=BaseDecisions)
    priority: Mapping[StreamKind, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert all(task.id == index for index, task in enumerate(self.tasks)), "task ids must be their index"
        placed = sorted(tid for order in self.streams.values() for tid in order)
        assert placed == list(range(len(self.tasks))), "every task must be on exactly one stream, once"

    @property
    def rank_symmetric(self) -> bool:
        """Every rank does the same work: the graph is symmetric and no part is uneven across ranks."""
        if not self.graph.rank_symmetric:
            return False
        matrices = {}  # parts of different ops share traffic arrays: look at each once
        for task in self.tasks:
            if task.rank_fraction is not None and len(set(task.rank_fraction)) > 1:
                return False
            if task.traffic is not None:
                matrices[id(task.traffic)] = task.traffic
        return all(uniform_traffic(traffic) for traffic in matrices.values())

    def op_of(self, task: Task) -> Op:
        return self.graph.ops[task.op]

    def priority_of(self, task: Task) -> int:
        return self.priority.get(task.stream, 0)

    def stream_of(self, kind: StreamKind) -> Sequence[Task]:
        return [self.tasks[tid] for tid in self.streams.get(kind, ())]


def topological_order(plan: ExecutionPlan) -> list[int]:
    """Task ids in an order that respects each stream's order and every dependency, the smallest id first
    among those ready. Shorter than the plan when they form a cycle: the tasks left out wait on it."""
    successors: list[list[int]] = [[] for _ in plan.tasks]
    waiting = [0] * len(plan.tasks)
    for order in plan.streams.values():
        for before, after in zip(order, order[1:], strict=False):
            successors[before].append(after)
            waiting[after] += 1
    for task in plan.tasks:
        for dep in task.deps:
            successors[dep].append(task.id)
            waiting[task.id] += 1
    ready = [tid for tid, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    result: list[int] = []
    while ready:
        tid = heapq.heappop(ready)
        result.append(tid)
        for nxt in successors[tid]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, nxt)
    return result


def list_schedule(plan: ExecutionPlan, seconds: Sequence[float]) -> tuple[list[float], list[float]]:
    """(start, end) of every task (by id) when each stream runs its tasks in order, each as soon as its
    stream is free and its dependencies are done, taking ``seconds[id]``: nothing shared, nothing waits
    for anything else. The plan must not deadlock (asserted)."""
    order = topological_order(plan)
    assert len(order) == len(plan.tasks), "the plan's stream orders and dependencies must form a DAG"
    previous: dict[int, int] = {}
    for stream in plan.streams.values():
        previous.update(zip(stream[1:], stream, strict=False))
    start, end = [0.0] * len(plan.tasks), [0.0] * len(plan.tasks)
    for tid in order:
        ready = max((end[dep] for dep in plan.tasks[tid].deps), default=0.0)
        start[tid] = max(ready, end[previous[tid]]) if tid in previous else ready
        end[tid] = start[tid] + seconds[tid]
    return start, end
