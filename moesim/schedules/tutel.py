"""`tutel`: Tutel's adaptive pipelining of each MoE layer (Tutel paper, App. A; docs/sources.md §2).

Each MoE layer's dispatch all-to-all, expert compute and combine all-to-all are split into ``degree``
chunks along the capacity dimension. The all-to-alls run on the comm stream and the experts on the
compute stream, so chunk c's experts overlap chunk c+1's dispatch and chunk c-1's combine. The
backward pass is autograd over the chunked forward: the same split between ``combine.dx`` and
``dispatch.dx``. Everything else (router, permute, shared experts, attention ...) stays whole, in
program order; gradient all-reduce buckets are issued as ``schedule.grad_sync`` says, as in every schedule.

``degree="auto"`` plans every degree in {1, 2, 4, 8} the capacity allows, simulates each with the
engine and keeps the fastest (ties go to the smaller degree), as Tutel searches its overlap degree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from moesim.errors import MoesimError
from moesim.hardware.interface import CostModel
from moesim.plan import Decisions, DecisionTable, ExecutionPlan, GradSync
from moesim.schedules.builder import Part, PlanBuilder
from moesim.schedules.grad_sync import arrange_grad_sync
from moesim.schedules.judge import fastest
from moesim.schedules.registry import Schedule, ScheduleConfig
from moesim.workload.ops import A2AAlgorithm, Axis, Op, OpGraph, OpKind, Phase

DEGREES = (1, 2, 4, 8)
_BACKWARD = frozenset({Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT})


class TutelConfig(ScheduleConfig):
    """``degree``: chunks per MoE layer, or ``"auto"`` to search {1, 2, 4, 8}. ``a2a``: how every MoE
    all-to-all moves its bytes (linear, or Tutel's hierarchical 2DH); the gradient all-reduce is
    unaffected."""

    degree: Literal[1, 2, 4, 8, "auto"] = "auto"
    a2a: A2AAlgorithm = A2AAlgorithm.LINEAR


@dataclass(frozen=True, slots=True)
class TutelDecisions:
    """The degree a plan chunks its MoE regions in, how its all-to-alls move, how its buckets travel, and
    the engine's iteration time of each degree where the degree was searched."""

    degree: int
    a2a: A2AAlgorithm
    grad_sync: GradSync
    degree_search: tuple[tuple[int, float], ...] = ()

    def to_json(self) -> dict[str, object]:
        result: dict[str, object] = {"degree": self.degree, "a2a": self.a2a.value, "grad_sync": self.grad_sync.value}
        if self.degree_search:
            result["degree_search"] = [{"degree": d, "iteration_s": s} for d, s in self.degree_search]
        return result

    def summary(self) -> str:
        sync = "" if self.grad_sync is GradSync.DDP else f", grad_sync={self.grad_sync.value}"
        return f"degree={self.degree}, a2a={self.a2a.value}{sync}"

    def tables(self) -> list[DecisionTable]:
        """The degree search, when the degree was searched."""
        if not self.degree_search:
            return []
        rows: list[dict[str, object]] = [{"degree": d, "iteration_ms": f"{s * 1e3:.2f}",
                                          "chosen": "<-" if d == self.degree else ""} for d, s in self.degree_search]
        return [DecisionTable("Tutel degree search (each degree simulated by the engine)", rows,
                              [("degree", "degree"), ("iteration_ms", "iteration ms"), ("chosen", "chosen")])]


@dataclass(frozen=True, slots=True)
class Region:
    """One pipelined span: the first all-to-all, the ops between that depend on it, the second one."""

    first: Op
    middle: tuple[Op, ...]
    second: Op

    @property
    def ops(self) -> tuple[Op, ...]:
        return (self.first, *self.middle, self.second)

    def issue_order(self, degree: int) -> list[tuple[Op, int]]:
        """Every chunk of the first all-to-all, then per chunk its middle ops and the second all-to-all:
        the comm stream reads d1 .. dd c1 .. cd and the compute stream e1 .. ed."""
        order = [(self.first, chunk) for chunk in range(degree)]
        for chunk in range(degree):
            order.extend((op, chunk) for op in (*self.middle, self.second))
        return order


def plan(graph: OpGraph, cost: CostModel, config: TutelConfig) -> ExecutionPlan:
    """Plan ``graph`` with ``config.degree`` chunks per MoE region, or search the degree.

    Raises MoesimError when an explicit degree exceeds the capacity (token slots per expert), and
    propagates the cost model's MoesimError when 2DH cannot run on the expert-parallel groups.
    """
    regions = find_regions(graph)
    capacity = capacity_of(graph)

    def planned(degree: int, search: tuple[tuple[int, float], ...] = ()) -> ExecutionPlan:
        decisions = TutelDecisions(degree, config.a2a, config.grad_sync, search)
        return arrange_grad_sync(build_plan(graph, regions, degree, capacity, config.a2a, decisions),
                                 config.grad_sync, cost)

    if config.degree != "auto":
        return planned(_checked_degree(config.degree, capacity))
    candidates = [degree for degree in DEGREES if capacity is None or degree <= capacity]
    plans = [planned(degree) for degree in candidates]
    best, seconds = fastest(plans, cost)
    search = tuple(zip(candidates, seconds, strict=True))
    return replace(plans[best], decisions=TutelDecisions(candidates[best], config.a2a, config.grad_sync, search))


def find_regions(graph: OpGraph) -> list[Region]:
    """The pipelined regions of ``graph``, in program order.

    For each MoE layer and each pass (forward, backward), the layer's all-to-alls of that pass are
    taken in pairs in program order; a region is a pair plus the ops of that layer and pass between
    them that depend, directly or not, on the first. Ops between that do not (shared experts) are not
    part of it. A region with an op that cannot be split along the capacity axis is left whole.
    """
    regions = []
    for layer in graph.moe_layers:
        for phases in (frozenset({Phase.FORWARD}), _BACKWARD):
            a2a = [op for op in graph.in_layer(layer) if op.kind is OpKind.ALL_TO_ALL and op.phase in phases]
            for first, second in zip(a2a[0::2], a2a[1::2], strict=False):
                region = _region_between(graph, first, second, phases)
                if region is not None:
                    regions.append(region)
    return sorted(regions, key=lambda region: region.first.id)


def build_plan(
    graph: OpGraph,
    regions: Sequence[Region],
    degree: int,
    capacity: int | None,
    a2a: A2AAlgorithm,
    decisions: Decisions,
) -> ExecutionPlan:
    """The plan for one degree; ``degree`` must already be allowed by ``capacity`` (see ``Chunker``)."""
    builder = PlanBuilder(graph, SCHEDULE.name)
    chunker = Chunker(builder, regions, degree, capacity, a2a)
    for op in graph.ops:
        chunker.feed(op)
    chunker.close()
    return builder.build(decisions)


class Chunker:
    """Feeds a plan builder ops in program order, issuing each of ``regions`` in ``degree`` chunks.

    Ops outside regions are added whole as they come. A region is issued when program order reaches its
    second all-to-all; ops in its span that do not depend on it (shared experts) go before it, so they
    can fill the first dispatch chunk's time, and ops that do go after it. Other policies may add ops of
    their own between ``feed`` calls while no region is open (``idle``).
    """

    def __init__(self, builder: PlanBuilder, regions: Sequence[Region], degree: int, capacity: int | None,
                 a2a: A2AAlgorithm) -> None:
        self.builder, self.degree, self.a2a = builder, degree, a2a
        self.fractions = chunk_fractions(capacity, degree)
        self.starting = {region.first.id: region for region in regions}
        self.open_region: Region | None = None
        self.waiting: set[int] = set()  # the open region's ops and the held ops that depend on them
        self.held: list[Op] = []

    @property
    def idle(self) -> bool:
        return self.open_region is None

    def feed(self, op: Op) -> None:
        builder, open_region = self.builder, self.open_region
        if open_region is None and op.id in self.starting:
            self.open_region = self.starting[op.id]
            self.waiting = {member.id for member in self.open_region.ops}
        elif open_region is not None and op is open_region.second:
            fractions = self.fractions
            builder.add_region(open_region.issue_order(self.degree), self.degree,
                               lambda _op, chunk: Part(fractions[chunk]), algorithm=self.a2a)
            for later in self.held:
                _add_whole(builder, later, self.a2a)
            self.open_region, self.waiting, self.held = None, set(), []
        elif op.id in self.waiting:
            return  # issued with its region
        elif any(dep in self.waiting for dep in op.deps):
            self.held.append(op)
            self.waiting.add(op.id)
        else:
            _add_whole(builder, op, self.a2a)

    def close(self) -> None:
        assert self.open_region is None, "a region's second all-to-all was never reached"


def chunk_fractions(capacity: int | None, degree: int) -> tuple[float, ...]:
    """Each chunk's share: ``capacity`` token slots split into ``degree`` near-equal whole numbers
    (the larger chunks first), each divided by ``capacity``; ``1 / degree`` each when dropless
    (``capacity`` None), where no fixed slot count exists to split."""
    if capacity is None:
        return (1.0 / degree,) * degree
    assert 1 <= degree <= capacity, "the degree must not exceed the capacity"
    base, extra = divmod(capacity, degree)
    return tuple((base + (1 if chunk < extra else 0)) / capacity for chunk in range(degree))


def _region_between(graph: OpGraph, first: Op, second: Op, phases: frozenset[Phase]) -> Region | None:
    reached = {first.id}
    middle = []
    for op in graph.ops[first.id + 1:second.id]:
        if op.layer == first.layer and op.phase in phases and any(dep in reached for dep in op.deps):
            reached.add(op.id)
            middle.append(op)
    assert any(dep in reached for dep in second.deps), f"{second.name} does not depend on {first.name}"
    ops = (first, *middle, second)
    if any(Axis.CAPACITY not in op.axes for op in ops):
        return None
    return Region(first, tuple(middle), second)


def _add_whole(builder: PlanBuilder, op: Op, a2a: A2AAlgorithm) -> None:
    builder.add_whole(op, algorithm=a2a if op.kind is OpKind.ALL_TO_ALL else A2AAlgorithm.LINEAR)


def capacity_of(graph: OpGraph) -> int | None:
    """Token slots per expert (None: dropless)."""
    return graph.facts.capacity if graph.facts is not None else None


def _checked_degree(degree: int, capacity: int | None) -> int:
    if capacity is not None and degree > capacity:
        allowed = ", ".join(str(d) for d in DEGREES if d <= capacity)
        raise MoesimError(f"schedule.degree: {degree} chunks exceed the capacity of {capacity} token slots "
                          f"per expert; choose one of {allowed} or auto")
    return degree


SCHEDULE = Schedule(
    name="tutel",
    description="Tutel: dispatch, experts and combine pipelined in chunks along the capacity (degree searched)",
    config=TutelConfig,
    plan=plan,
    order=1,
)
