"""Timeline: spans of executed tasks. Predicted (engine) and measured (harness) share this schema.

Under rank symmetry the engine simulates one representative rank per class of identical ranks;
``represents[r]`` lists the ranks that simulated rank ``r`` stands for, so per-rank metrics can be
expanded to every rank without simulating each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from moesim.plan import StreamKind
from moesim.workload.ops import OpKind, Phase


@dataclass(frozen=True, slots=True)
class Span:
    rank: int
    stream: StreamKind
    task: int
    op: int
    name: str
    kind: OpKind
    phase: Phase
    layer: int | None
    start: float  # seconds from the iteration start
    end: float
    flops: float
    bytes: float  # HBM bytes for compute, bytes this rank sends for collectives

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True, eq=False)
class Timeline:
    spans: tuple[Span, ...]
    num_ranks: int                                # ranks in the job
    represents: Mapping[int, tuple[int, ...]]     # simulated rank -> the ranks it stands for
    task_deps: tuple[tuple[int, ...], ...]        # plan's dependencies, by task id (flow arrows)
    schedule: str = ""
    source: str = "predicted"                     # "predicted" or "measured"
    meta: Mapping[str, object] = field(default_factory=dict)

    @property
    def makespan(self) -> float:
        return max((s.end for s in self.spans), default=0.0)

    @property
    def ranks(self) -> Sequence[int]:
        return sorted(self.represents)

    def of_rank(self, rank: int) -> list[Span]:
        return [s for s in self.spans if s.rank == rank]
