"""Iteration metrics of a Timeline: busy time, exposed communication, overlap, per-GPU work.

Works on predicted and measured timelines alike. A span counts as *compute* when it is a
non-collective op on the compute stream; every other span (a collective anywhere, anything on a
communication stream) counts as *communication*. For the usual plans (collectives on ``comm`` /
``dp_comm``, kernels on ``compute``) that is exactly "compute stream" vs "communication streams";
the kind check keeps a collective that a plan puts on the compute stream from passing as compute.

Exposed communication of a rank is the measure of the time when some communication span of that
rank is in flight and its compute stream is idle (the paper's non-overlapped communication).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from moesim.errors import MoesimError
from moesim.plan import StreamKind
from moesim.timeline import Span, Timeline
from moesim.workload.ops import OpKind


@dataclass(frozen=True, slots=True)
class RankMetrics:
    """One simulated rank; all times in seconds, unions of spans (overlaps counted once)."""

    rank: int
    iteration_time_s: float  # end of this rank's last span
    compute_busy_s: float
    comm_busy_s: float
    a2a_busy_s: float
    exposed_comm_s: float
    exposed_a2a_s: float
    overlap_ratio: float     # 1 - exposed_comm / comm_busy; 1.0 without communication
    flops: float             # sum over compute spans
    a2a_bytes: float         # sum of the bytes this rank's all-to-alls send


@dataclass(frozen=True, slots=True)
class Metrics:
    """Whole-iteration metrics. Busy, exposed and share figures are the slowest rank's."""

    iteration_time_s: float
    num_gpus: int
    per_rank: tuple[RankMetrics, ...]
    slowest_rank: int
    compute_busy_s: float
    comm_busy_s: float
    a2a_time_s: float
    exposed_comm_s: float
    exposed_a2a_s: float
    overlap_ratio: float
    a2a_share: float
    exposed_comm_share: float
    flops_per_gpu: float      # mean over all GPUs, each simulated rank weighted by the ranks it stands for
    a2a_bytes_per_gpu: float
    schedule: str = ""
    source: str = "predicted"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the scalar metrics at the top, ``per_rank`` as a list of objects."""
        scalars = {name: value for name, value in asdict(self).items() if name != "per_rank"}
        return {**scalars, "per_rank": [asdict(rank) for rank in self.per_rank]}


def compute_metrics(timeline: Timeline) -> Metrics:
    """Metrics of ``timeline``; every span's rank must be a key of ``timeline.represents``."""
    ranks = _simulated_ranks(timeline)
    by_rank = _spans_by_rank(timeline, ranks)
    per_rank = tuple(rank_metrics(rank, by_rank[rank]) for rank in ranks)
    slowest = max(per_rank, key=lambda m: (m.iteration_time_s, -m.rank))
    weights = np.array([len(timeline.represents[m.rank]) for m in per_rank], dtype=float)
    iteration = timeline.makespan
    return Metrics(
        iteration_time_s=iteration,
        num_gpus=timeline.num_ranks,
        per_rank=per_rank,
        slowest_rank=slowest.rank,
        compute_busy_s=slowest.compute_busy_s,
        comm_busy_s=slowest.comm_busy_s,
        a2a_time_s=slowest.a2a_busy_s,
        exposed_comm_s=slowest.exposed_comm_s,
        exposed_a2a_s=slowest.exposed_a2a_s,
        overlap_ratio=slowest.overlap_ratio,
        a2a_share=_share(slowest.a2a_busy_s, iteration),
        exposed_comm_share=_share(slowest.exposed_comm_s, iteration),
        flops_per_gpu=_weighted_mean([m.flops for m in per_rank], weights),
        a2a_bytes_per_gpu=_weighted_mean([m.a2a_bytes for m in per_rank], weights),
        schedule=timeline.schedule,
        source=timeline.source,
    )


def rank_metrics(rank: int, spans: Iterable[Span]) -> RankMetrics:
    """Metrics of one rank from its spans (spans of other ranks must not be passed)."""
    compute, comm, a2a = [], [], []
    for span in spans:
        if is_compute(span):
            compute.append(span)
        else:
            comm.append(span)
        if span.kind is OpKind.ALL_TO_ALL:
            a2a.append(span)
    compute_u, comm_u, a2a_u = _union_of(compute), _union_of(comm), _union_of(a2a)
    comm_busy = _measure(comm_u)
    exposed = _measure_without(comm_u, compute_u)
    return RankMetrics(
        rank=rank,
        iteration_time_s=max((s.end for s in (*compute, *comm)), default=0.0),
        compute_busy_s=_measure(compute_u),
        comm_busy_s=comm_busy,
        a2a_busy_s=_measure(a2a_u),
        exposed_comm_s=exposed,
        exposed_a2a_s=_measure_without(a2a_u, compute_u),
        overlap_ratio=1.0 - exposed / comm_busy if comm_busy > 0 else 1.0,
        flops=float(sum(s.flops for s in compute)),
        a2a_bytes=float(sum(s.bytes for s in a2a)),
    )


def is_compute(span: Span) -> bool:
    """A kernel on the compute stream; everything else occupies the rank's communication."""
    return span.stream is StreamKind.COMPUTE and not span.kind.is_collective


def _simulated_ranks(timeline: Timeline) -> list[int]:
    ranks = list(timeline.ranks)
    if not ranks:
        raise MoesimError("timeline.represents: empty; map each simulated rank to the ranks it stands for")
    return ranks


def _spans_by_rank(timeline: Timeline, ranks: list[int]) -> dict[int, list[Span]]:
    grouped: dict[int, list[Span]] = {rank: [] for rank in ranks}
    for span in timeline.spans:
        bucket = grouped.get(span.rank)
        if bucket is None:
            raise MoesimError(f"timeline.spans: rank {span.rank} has spans but is not in timeline.represents "
                              f"(simulated ranks: {', '.join(map(str, ranks))})")
        bucket.append(span)
    return grouped


Intervals = tuple[np.ndarray, np.ndarray]  # sorted, disjoint [start, end) pairs


def _union_of(spans: list[Span]) -> Intervals:
    starts = np.fromiter((s.start for s in spans), dtype=float, count=len(spans))
    ends = np.fromiter((s.end for s in spans), dtype=float, count=len(spans))
    return union(starts, ends)


def union(starts: np.ndarray, ends: np.ndarray) -> Intervals:
    """Sort-and-sweep: the disjoint, sorted intervals covering exactly the given ones."""
    if starts.size == 0:
        return np.empty(0), np.empty(0)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    # An interval opens a new group when it starts after everything before it has ended.
    first = np.flatnonzero(np.concatenate(([True], starts[1:] > reach[:-1])))
    last = np.concatenate((first[1:] - 1, [starts.size - 1]))
    return starts[first], reach[last]


def _measure(intervals: Intervals) -> float:
    starts, ends = intervals
    return float(np.sum(ends - starts))


def _measure_without(keep: Intervals, remove: Intervals) -> float:
    """Measure of ``keep`` minus ``remove``, over the elementary segments between all their endpoints."""
    if keep[0].size == 0:
        return 0.0
    points = np.unique(np.concatenate((*keep, *remove)))
    mids = (points[:-1] + points[1:]) / 2
    inside = _covers(keep, mids) & ~_covers(remove, mids)
    return float(np.sum(np.diff(points)[inside]))


def _covers(intervals: Intervals, x: np.ndarray) -> np.ndarray:
    starts, ends = intervals
    if starts.size == 0:
        return np.zeros(x.shape, dtype=bool)
    index = np.searchsorted(starts, x, side="right") - 1
    return (index >= 0) & (x < ends[np.maximum(index, 0)])


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _weighted_mean(values: list[float], weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float(np.dot(values, weights)) / total if total > 0 else 0.0
