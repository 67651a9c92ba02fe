"""Lancet's forward pass: which op ranges to cut into how many parts (paper §2.3, §5).

Parts cut the per-GPU batch; where the batch allows no part count (k >= 2 dividing it, at most half of
it, as the public Lancet code requires), they cut each sequence into consecutive token spans instead,
and an attention in the range runs causally over them (part p reads the keys and values of spans 0..p).
Lancet's code reaches the same sequence split for a batch of one through its token axis, but splits
attention by query rows against the whole key/value tensor; a causal split pipelines attention too.

Steps: group the forward ops -> cost every range of at most ``max_len`` groups with the list scheduler
(``lancet_pipeline``), unpartitioned and in each allowed number of parts -> pick the segmentation of
the groups that minimises the summed cost (DP) -> describe each partitioned range as the parts the
plan builder takes (``PlanBuilder.add_region``). This module plans; it defines no ``SCHEDULE``.

Groups are contiguous runs of the forward program order. A group closes once it lasts at least a
threshold in the unpartitioned forward schedule: the time from the end of one MoE layer's combine to
the start of the next one's dispatch, over 5 (about five groups between MoE layers; with a single MoE
layer, the forward time outside its all-to-alls over 5). As in Lancet, each permute and unpermute is a
group of its own, a boundary never falls between a layer's dispatch and its combine, and never where
an op still runs across it. Partitioning can therefore start at a permute: a batch-prioritized router
has no batch or sequence axis, so the ranges holding it stay whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from moesim.errors import MoesimError
from moesim.hardware.interface import CostModel
from moesim.plan import StreamKind, Task
from moesim.schedules.builder import Part
from moesim.schedules.estimate import seconds_alone
from moesim.schedules.lancet_passing import MoEParts, moe_parts
from moesim.schedules.lancet_pipeline import Interference, PipelineSchedule, RangeOp, pipeline_schedule
from moesim.workload.ops import A2AAlgorithm, Axis, Op, OpGraph, OpKind, Phase, Role

GROUPS_BETWEEN_MOE_LAYERS = 5
DEFAULT_MAX_PARTS = 8  # Lancet's rho


@dataclass(frozen=True, slots=True, eq=False)
class PartitionedRange:
    """A range of forward ops cut into ``parts`` batch parts, ready for ``PlanBuilder.add_region``.

    ``order`` holds every (op id, part) once, in a topological order whose per-stream subsequences are
    the list scheduler's; ``part_specs`` gives each one's share (see ``LancetRanges.part_spec``).
    """

    layer: int                      # the MoE layer whose forward all-to-alls it holds
    ops: tuple[int, ...]            # op ids, contiguous in forward program order
    parts: int                      # k >= 2
    order: tuple[tuple[int, int], ...]
    part_specs: Mapping[tuple[int, int], Part]
    cost_s: float                   # pipelined time of the range (list scheduler)
    unpartitioned_s: float          # the same range at k = 1
    groups: tuple[int, int]         # the DP's groups [i, j) the range holds
    axis: Axis                      # the dimension its parts cut
    causal: frozenset[int]          # ops whose part p reads parts 0..p of its inputs (PlanBuilder.add_region)


@dataclass(frozen=True, slots=True, eq=False)
class PartitionPlan:
    """The DP's answer: the ranges to partition (the rest of the forward stays whole) and what it ran over."""

    ranges: tuple[PartitionedRange, ...]   # only partitioned ranges, in program order
    groups: tuple[tuple[int, ...], ...]    # the op groups the DP ran over
    total_s: float                         # dp[last]: the summed cost of the chosen segmentation


def plan_partitions(graph: OpGraph, cost: CostModel, *, max_parts: int = DEFAULT_MAX_PARTS,
                    algorithm: A2AAlgorithm = A2AAlgorithm.LINEAR) -> PartitionPlan:
    """The forward ranges to partition, and into how many parts, minimising the DP's summed cost.

    Each range is costed alone from t = 0 (overlap across range boundaries is ignored, as in Lancet).
    Every allowed k is tried, where Lancet stops at the first k that does not improve: the DP is then
    exact for its own cost function. A range is partitioned only if that beats k = 1 strictly.
    """
    return LancetRanges(graph, cost, max_parts=max_parts, algorithm=algorithm).plan()


def best_segmentation(num_groups: int, max_len: int, range_cost: Callable[[int, int], tuple[float, int]]
                      ) -> tuple[float, list[tuple[int, int, int]]]:
    """The DP alone: segments (i, j, k) covering groups [0, num_groups) with j - i <= max_len minimising the
    sum of range_cost(i, j)[0]; k is range_cost's second value.

    ``dp[j] = min over i in [j - max_len, j) of dp[i] + cost(i, j)``, summed left to right. Ties go to the
    smallest i (the longest last segment), so the result is deterministic. Calls ``range_cost`` once per
    candidate range.
    """
    assert num_groups >= 0 and max_len >= 1, "a segmentation needs num_groups >= 0 and max_len >= 1"
    best = [0.0] * (num_groups + 1)
    choice: list[tuple[int, int] | None] = [None] * (num_groups + 1)
    for end in range(1, num_groups + 1):
        for start in range(max(0, end - max_len), end):
            value, parts = range_cost(start, end)
            total = best[start] + value
            if choice[end] is None or total < best[end]:
                best[end], choice[end] = total, (start, parts)
    segments: list[tuple[int, int, int]] = []
    end = num_groups
    while end > 0:
        picked = choice[end]
        assert picked is not None
        segments.append((picked[0], end, picked[1]))
        end = picked[0]
    return best[num_groups], segments[::-1]


def allowed_parts(size: int, max_parts: int) -> tuple[int, ...]:
    """Part counts k >= 2 that divide ``size`` (the partitioned dimension), at most half of it and at most
    ``max_parts``: the public Lancet code's limit (its GetPartitionParts)."""
    return tuple(k for k in range(2, min(max_parts, size // 2) + 1) if size % k == 0)


def partition_axis(batch: int, seq_len: int, max_parts: int) -> tuple[Axis, tuple[int, ...]]:
    """The dimension Lancet cuts and the part counts it allows: the per-GPU batch where it allows some k,
    else the sequence (a batch of one or two sequences is cut along its tokens)."""
    by_batch = allowed_parts(batch, max_parts)
    return (Axis.BATCH, by_batch) if by_batch else (Axis.SEQUENCE, allowed_parts(seq_len, max_parts))


def causal_fractions(parts: int) -> tuple[float, ...]:
    """Each part's share of a causal attention cut into ``parts`` consecutive query spans: span p attends to
    p earlier spans and half of its own, so it does (2p + 1) / parts^2 of the whole (the shares sum to 1)."""
    return tuple((2 * part + 1) / parts**2 for part in range(parts))


class LancetRanges:
    """Ranges of one graph's forward op groups, costed with the list scheduler over ``cost``.

    Range (i, j) holds groups i..j-1. Part durations and specs depend only on (op, k, part), so they are
    computed once and cached here (one instance per planning; no shared state). Compute parts take the
    slowest rank's time (rank 0's when every rank is alike); an all-to-all part takes its coflow over all
    its groups on an idle network; other collectives count as free (Lancet's DP ignores them; in the
    forward pass no gradient bucket is in flight). The list scheduler applies the cost model's
    interference between compute and all-to-all parts, as the engine does.
    """

    def __init__(self, graph: OpGraph, cost: CostModel, *, max_parts: int = DEFAULT_MAX_PARTS,
                 algorithm: A2AAlgorithm = A2AAlgorithm.LINEAR) -> None:
        if max_parts < 1:
            raise MoesimError(f"max_parts: {max_parts} is not allowed; use an integer >= 1 (1 disables partitioning)")
        self.graph, self.cost, self.algorithm = graph, cost, algorithm
        self.forward = tuple(op for op in graph.ops if op.phase is Phase.FORWARD)
        self.facts = graph.require_facts("Lancet's partitioning")
        self.axis, self.parts_allowed = partition_axis(self.facts.batch_per_gpu, self.facts.seq_len, max_parts)
        self._durations: dict[tuple[int, int, int], float] = {}
        self._specs: dict[tuple[int, int], tuple[Part, ...]] = {}
        self._moe: dict[tuple[object, ...], MoEParts] = {}
        self._ep_groups = {op.layer: op.comm.groups for op in self.forward
                           if op.kind is OpKind.ALL_TO_ALL and op.comm is not None}
        whole = self._schedule(self.forward, 1)
        self.groups = group_forward(self.forward, whole)
        self.max_len = max_range_groups(self.groups, self.graph)

    def plan(self) -> PartitionPlan:
        """The DP's answer over these ranges (see ``plan_partitions``)."""
        total, segments = best_segmentation(len(self.groups), self.max_len, self.best)
        chosen = tuple(self.partitioned_range(i, j, k) for i, j, k in segments if k > 1)
        return PartitionPlan(chosen, self.groups, total)

    def neighbour(self, plan: PartitionPlan, step: int) -> PartitionPlan | None:
        """``plan`` with each range cut into the next smaller (``step`` -1) or larger (+1) allowed number of
        parts, 1 (whole) below the smallest; a range at the largest keeps its k. None if nothing changes."""
        counts = (1, *self.parts_allowed)

        def next_to(r: PartitionedRange) -> int:
            index = counts.index(r.parts) + step
            return counts[index] if 0 <= index < len(counts) else r.parts

        return self.recut(plan, next_to)

    def recut(self, plan: PartitionPlan, parts_of: Callable[[PartitionedRange], int]) -> PartitionPlan | None:
        """``plan``'s ranges cut into ``parts_of(range)`` parts each (1: left whole); None if nothing changes."""
        ranges, total, changed = [], plan.total_s, False
        for r in plan.ranges:
            parts = parts_of(r)
            assert parts == 1 or parts in self.parts_allowed, f"{parts} parts are not allowed here"
            changed |= parts != r.parts
            if parts == 1:
                total += r.unpartitioned_s - r.cost_s
            else:
                recut = r if parts == r.parts else self.partitioned_range(*r.groups, parts)
                total += recut.cost_s - r.cost_s
                ranges.append(recut)
        return PartitionPlan(tuple(ranges), plan.groups, total) if changed else None

    def ops_of(self, i: int, j: int) -> tuple[Op, ...]:
        return tuple(self.graph.ops[op_id] for group in self.groups[i:j] for op_id in group)

    def moe_layer(self, i: int, j: int) -> int | None:
        """The MoE layer whose forward all-to-alls range (i, j) holds, if the range may be partitioned:
        it holds one layer's all-to-alls and every op of it splits along the batch; else None."""
        ops = self.ops_of(i, j)
        layers = {op.layer for op in ops if op.kind is OpKind.ALL_TO_ALL}
        if len(layers) != 1 or any(self.axis not in op.axes for op in ops):
            return None
        return layers.pop()

    def schedule(self, i: int, j: int, parts: int) -> PipelineSchedule:
        """The list schedule of range (i, j) in ``parts`` parts (1: unpartitioned)."""
        assert parts == 1 or (parts in self.parts_allowed and self.moe_layer(i, j) is not None), \
            f"range ({i}, {j}) cannot be cut into {parts} parts"
        return self._schedule(self.ops_of(i, j), parts)

    def cost_at(self, i: int, j: int, parts: int) -> float:
        return self.schedule(i, j, parts).makespan_s

    def best(self, i: int, j: int) -> tuple[float, int]:
        """(cost, k) of range (i, j): the cheapest allowed k, or (unpartitioned, 1) unless a k beats it."""
        best = (self.cost_at(i, j, 1), 1)
        if self.moe_layer(i, j) is not None:
            for parts in self.parts_allowed:
                value = self.cost_at(i, j, parts)
                if value < best[0]:
                    best = (value, parts)
        return best

    def partitioned_range(self, i: int, j: int, parts: int) -> PartitionedRange:
        layer = self.moe_layer(i, j)
        assert layer is not None and parts >= 2, f"range ({i}, {j}) is not partitionable"
        ops = self.ops_of(i, j)
        pipelined = self.schedule(i, j, parts)
        specs = {(op.id, part): self.part_spec(op, parts, part) for op in ops for part in range(parts)}
        return PartitionedRange(layer, tuple(op.id for op in ops), parts, pipelined.order, specs,
                                pipelined.makespan_s, self.cost_at(i, j, 1), (i, j), self.axis,
                                frozenset(op.id for op in ops if self._causal(op)))

    def part_spec(self, op: Op, parts: int, part: int) -> Part:
        """Part ``part`` of ``parts`` of ``op``: ``fraction`` is always 1/k (parts of an op sum to 1).

        A forward all-to-all part carries the traffic of the tokens it keeps (capacity passing). A routed
        expert part carries ``rank_fraction`` = its rank's rows in this part over the rows of the
        unpartitioned op, where that differs from 1/k on some rank: with capacity slack a rank's parts
        sum to less than 1 (only kept tokens move and are computed), with a filled capacity to exactly 1.
        """
        if parts == 1:
            return Part(1.0)
        key = (op.id, parts)
        if key not in self._specs:
            self._specs[key] = self._make_specs(op, parts)
        return self._specs[key][part]

    def _make_specs(self, op: Op, parts: int) -> tuple[Part, ...]:
        share, axis = 1.0 / parts, self.axis
        if op.kind is OpKind.ALL_TO_ALL:
            assert op.role in (Role.DISPATCH, Role.COMBINE), f"{op.name}: a forward all-to-all dispatches or combines"
            moe = self._moe_parts(op, parts)
            traffic = moe.dispatch if op.role is Role.DISPATCH else moe.combine
            return tuple(Part(share, None, matrix, axis) for matrix in traffic)
        if op.expert and not op.kind.is_collective:
            moe = self._moe_parts(op, parts)
            return tuple(Part(share, None if all(math.isclose(s, share, rel_tol=1e-12) for s in shares) else shares,
                              None, axis) for shares in moe.expert_share)
        if self._causal(op):
            return tuple(Part(fraction, None, None, axis) for fraction in causal_fractions(parts))
        return (Part(share, None, None, axis),) * parts

    def _causal(self, op: Op) -> bool:
        """Whether ``op``'s part p reads parts 0..p of its inputs: an attention cut along the sequence."""
        return self.axis is Axis.SEQUENCE and op.kind is OpKind.ATTENTION

    def _moe_parts(self, op: Op, parts: int) -> MoEParts:
        """Cached by the routing's arrays (uniform layers share them, so they share their parts, whose
        traffic arrays then hit the cost model's demand cache) and the expert-parallel groups."""
        assert op.layer is not None
        facts = self.facts
        routing, groups = facts.routing_of(op.layer), self._ep_groups[op.layer]
        key = (id(routing.counts), id(routing.kept), routing.capacity, parts, groups)
        if key not in self._moe:
            self._moe[key] = moe_parts(routing, parts, gate=facts.gate, groups=groups,
                                       experts_per_rank=facts.experts_per_rank,
                                       bytes_per_row=facts.hidden * self.graph.dtype.bytes)
        return self._moe[key]

    def duration(self, op_id: int, parts: int, part: int) -> float:
        """Seconds part ``part`` of ``parts`` of op ``op_id`` takes on its resource."""
        key = (op_id, parts, part)
        if key not in self._durations:
            self._durations[key] = self._measure(self.graph.ops[op_id], parts, part)
        return self._durations[key]

    def _measure(self, op: Op, parts: int, part: int) -> float:
        if op.kind.is_collective and op.kind is not OpKind.ALL_TO_ALL:
            return 0.0
        return seconds_alone(op, self._task(op, parts, part), self.cost, self.graph.num_ranks)

    def _task(self, op: Op, parts: int, part: int) -> Task:
        spec = self.part_spec(op, parts, part)
        algorithm = self.algorithm if op.kind is OpKind.ALL_TO_ALL else A2AAlgorithm.LINEAR
        return Task(0, op.id, stream_of(op), part=part, parts=parts, fraction=spec.fraction, traffic=spec.traffic,
                    rank_fraction=spec.rank_fraction, algorithm=algorithm, axis=spec.axis)

    def _charge(self, op_id: int, part: int, parts: int) -> float:
        op = self.graph.ops[op_id]
        return self.cost.host.collective_cpu(op, self._task(op, parts, part))

    def _schedule(self, ops: Sequence[Op], parts: int) -> PipelineSchedule:
        inside = {op.id for op in ops}
        range_ops = [RangeOp(op.id, tuple(sorted({d for d in op.deps if d in inside})), stream_of(op),
                             self._causal(op)) for op in ops]
        interference = Interference(self.cost.compute_slowdown, self.cost.comm_slowdown,
                                    lambda op_id, part: self._charge(op_id, part, parts))
        return pipeline_schedule(range_ops, parts, lambda op_id, part: self.duration(op_id, parts, part), interference)


def stream_of(op: Op) -> StreamKind:
    """The list scheduler's resource: every collective on comm (only all-to-alls take time), the rest compute."""
    return StreamKind.COMM if op.kind.is_collective else StreamKind.COMPUTE


def group_forward(ops: Sequence[Op], whole: PipelineSchedule) -> tuple[tuple[int, ...], ...]:
    """Contiguous groups of ``ops`` (the forward, in program order) by the rule of the module docstring;
    ``whole`` is their unpartitioned schedule."""
    threshold = group_threshold(ops, whole)
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    last_close = current_end = 0.0
    inside = False  # between a dispatch and its combine
    for index, op in enumerate(ops):
        if op.kind is OpKind.PERMUTE and current and not inside:
            groups.append(tuple(current))
            current, last_close = [], current_end
        current.append(op.id)
        current_end = max(current_end, whole.end_s[op.id, 0])
        if op.kind is OpKind.ALL_TO_ALL:
            inside = not inside
        if inside:
            continue
        next_start = whole.start_s[ops[index + 1].id, 0] if index + 1 < len(ops) else current_end
        long_enough = current_end - last_close >= threshold and next_start >= current_end
        if op.kind is OpKind.PERMUTE or long_enough:
            groups.append(tuple(current))
            current, last_close = [], current_end
    assert not inside, "forward all-to-alls come in dispatch/combine pairs"
    if current:
        groups.append(tuple(current))
    return tuple(groups)


def group_threshold(ops: Sequence[Op], whole: PipelineSchedule) -> float:
    """Seconds a group must last: the gap from the first MoE layer's combine end to the second one's
    dispatch start over 5; with fewer MoE layers, the forward time outside all-to-all spans over 5."""
    a2a = [op.id for op in ops if op.kind is OpKind.ALL_TO_ALL]
    spans = [(whole.start_s[a, 0], whole.end_s[b, 0]) for a, b in zip(a2a[::2], a2a[1::2], strict=True)]
    if len(spans) >= 2:
        return (spans[1][0] - spans[0][1]) / GROUPS_BETWEEN_MOE_LAYERS
    outside = whole.makespan_s - sum(end - start for start, end in spans)
    return outside / GROUPS_BETWEEN_MOE_LAYERS


def max_range_groups(groups: Sequence[Sequence[int]], graph: OpGraph) -> int:
    """Lancet's maxG: the groups strictly between two all-to-all groups, so no range holds two MoE layers.

    Lancet counts between the first two; the minimum over all neighbouring pairs is the same for evenly
    spaced MoE layers and keeps the guarantee when they are not (encoder-decoder stacks). With fewer
    than two all-to-all groups, any length.
    """
    holding = [index for index, group in enumerate(groups)
               if any(graph.ops[op_id].kind is OpKind.ALL_TO_ALL for op_id in group)]
    if len(holding) < 2:
        return max(1, len(groups))
    return max(1, min(b - a - 1 for a, b in zip(holding, holding[1:], strict=False)))
