"""Tiny plans and a fake cost model for engine stories with hand-computed times.

A ``Story`` builds one op and one task per call (op id == task id), places the task on a stream in
call order, and carries a ``FakeCost`` whose compute times, network demands, capacities and
interference factor the test sets explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pytest

from moesim.engine import simulate_plan
from moesim.hardware.interface import CollectiveDemand
from moesim.plan import ExecutionPlan, StreamKind, Task
from moesim.timeline import Timeline
from moesim.workload.ops import CommSpec, Op, OpGraph, OpKind, Phase

COMPUTE, COMM, DP_COMM = StreamKind.COMPUTE, StreamKind.COMM, StreamKind.DP_COMM


class FakeHost:
    """Host delays the test sets (all 0 by default); ``cpu[name]``: seconds of compute collective ``name``
    takes when it starts, scaled by the task's fraction."""

    def __init__(self) -> None:
        self.comm_latency_under_compute = 0.0
        self.compute_wait_under_comm = 0.0
        self.stream_handoff = 0.0
        self.rendezvous_skew = 0.0
        self.rendezvous_skew_cap = float("inf")
        self.cpu: dict[str, float] = {}

    def collective_cpu(self, op: Op, task: Task) -> float:
        return self.cpu.get(op.name, 0.0) * task.fraction


class FakeCost:
    """Compute seconds per op name (one number, or one per rank); per-group demands per op name.

    ``demands[name] = (latency_s, [ {resource: bytes} for each group ])``; a demand over several
    groups adds their volumes per resource. Both scale with the task's fraction. ``host`` holds the
    host delays.
    """

    def __init__(self, num_ranks: int, capacities: Sequence[float], slowdown: float) -> None:
        self.num_ranks = num_ranks
        self.capacities = np.asarray(capacities, dtype=np.float64)
        self.compute_slowdown = slowdown
        self.comm_slowdown = 0.0
        self.host = FakeHost()
        self.seconds: dict[str, float | tuple[float, ...]] = {}
        self.demands: dict[str, tuple[float, list[dict[int, float]]]] = {}
        self.next_stage: dict[str, tuple[float, dict[int, float]]] = {}  # name -> a second stage
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def resource_name(self, resource: int) -> str:
        return f"link{resource}"

    def collective_time(self, op: Op, task: Task, groups: Sequence[int]) -> float:
        return self.collective_demand(op, task, groups).uncontended_s(self.capacities)

    def compute_time(self, op: Op, task: Task, rank: int) -> float:
        seconds = self.seconds[op.name]
        per_rank = seconds[rank] if isinstance(seconds, tuple) else seconds
        return per_rank * task.fraction

    def collective_demand(self, op: Op, task: Task, groups: Sequence[int]) -> CollectiveDemand:
        self.calls.append((op.name, tuple(groups)))
        latency, per_group = self.demands.get(op.name, (0.0, []))
        merged: dict[int, float] = {}
        for group in groups:
            for resource, volume in (per_group[group] if per_group else {}).items():
                merged[resource] = merged.get(resource, 0.0) + volume * task.fraction
        then = None
        if op.name in self.next_stage:
            then_latency, then_volume = self.next_stage[op.name]
            then = _demand(then_latency, then_volume, None)
        return _demand(latency, merged, then)


def _demand(latency: float, volume: Mapping[int, float], then: CollectiveDemand | None) -> CollectiveDemand:
    ids = sorted(volume)
    return CollectiveDemand(latency_s=latency, resources=np.array(ids, dtype=np.int64),
                            volume=np.array([volume[i] for i in ids], dtype=np.float64), then=then)


class Story:
    """Builder of a one-off plan plus its cost model."""

    def __init__(self, num_ranks: int = 1, capacities: Sequence[float] = (), slowdown: float = 0.0) -> None:
        self.num_ranks = num_ranks
        self.cost = FakeCost(num_ranks, capacities, slowdown)
        self.ops: list[Op] = []
        self.tasks: list[Task] = []
        self.streams: dict[StreamKind, list[int]] = {}
        self.priority: dict[StreamKind, int] = {}  # the plan's network priority class per stream

    def compute(
        self,
        name: str,
        seconds: float | tuple[float, ...],
        *,
        stream: StreamKind = COMPUTE,
        deps: Sequence[int] = (),
        flops: float = 0.0,
        mem_bytes: float = 0.0,
        rank_scale: tuple[float, ...] | None = None,
        fraction: float = 1.0,
        phase: Phase = Phase.FORWARD,
        layer: int | None = 0,
    ) -> int:
        self.cost.seconds[name] = seconds
        op = Op(id=len(self.ops), name=name, role=name, kind=OpKind.MATMUL, phase=phase, layer=layer,
                flops=flops, mem_bytes=mem_bytes, rank_scale=rank_scale)
        return self._add(op, stream, deps, fraction, None)

    def collective(
        self,
        name: str,
        *,
        groups: tuple[tuple[int, ...], ...] = ((0,),),
        kind: OpKind = OpKind.ALL_TO_ALL,
        stream: StreamKind = COMM,
        deps: Sequence[int] = (),
        latency: float = 0.0,
        volumes: Sequence[Mapping[int, float]] = (),
        payload: float = 0.0,
        traffic: np.ndarray | None = None,
        task_traffic: np.ndarray | None = None,
        fraction: float = 1.0,
    ) -> int:
        """``volumes[g]`` is group g's demand ``{resource: bytes}``; one mapping serves every group."""
        per_group = [dict(v) for v in volumes]
        if len(per_group) == 1:
            per_group = per_group * len(groups)
        self.cost.demands[name] = (latency, per_group)
        phase = Phase.GRAD_SYNC if kind is OpKind.ALL_REDUCE else Phase.FORWARD
        op = Op(id=len(self.ops), name=name, role=name, kind=kind, phase=phase, layer=0,
                comm=CommSpec(groups=groups, bytes=payload, traffic=traffic))
        return self._add(op, stream, deps, fraction, task_traffic)

    def _add(self, op: Op, stream: StreamKind, deps: Sequence[int], fraction: float,
             traffic: np.ndarray | None) -> int:
        self.ops.append(op)
        task = Task(id=op.id, op=op.id, stream=stream, deps=tuple(deps), fraction=fraction, traffic=traffic)
        self.tasks.append(task)
        self.streams.setdefault(stream, []).append(task.id)
        return task.id

    def plan(self) -> ExecutionPlan:
        graph = OpGraph(ops=tuple(self.ops), num_ranks=self.num_ranks, num_layers=1, moe_layers=(0,))
        streams = {kind: tuple(order) for kind, order in self.streams.items()}
        return ExecutionPlan(graph=graph, schedule="story", tasks=tuple(self.tasks), streams=streams,
                             priority=dict(self.priority))

    def run(self, symmetric: bool | None = None) -> Timeline:
        return simulate_plan(self.plan(), self.cost, symmetric=symmetric)


def span_times(timeline: Timeline) -> dict[tuple[int, str], tuple[float, float]]:
    """``{(rank, op name): (start, end)}`` of every span."""
    return {(s.rank, s.name): (s.start, s.end) for s in timeline.spans}


def check_times(timeline: Timeline, expected: Mapping[tuple[int, str] | str, tuple[float, float]]) -> None:
    """Every span's (start, end) equals ``expected`` (keys ``(rank, name)``, or ``name`` for rank 0)."""
    want = {(key if isinstance(key, tuple) else (0, key)): value for key, value in expected.items()}
    got = span_times(timeline)
    assert set(got) == set(want)
    for key, (start, end) in want.items():
        assert got[key] == (pytest.approx(start, abs=1e-12), pytest.approx(end, abs=1e-12)), key


@pytest.fixture
def story() -> type[Story]:
    return Story


@pytest.fixture(name="assert_times")
def assert_times_fixture() -> Callable[..., None]:
    return check_times
