"""What the lancet policy decided for a plan, as a typed value: ranges, dW placement, the plans judged.

``LancetDecisions`` renders itself as the JSON of ``--json`` (``knobs``), one summary line and the tables
``moesim run`` prints. It is built from the planning passes' own values (``of_option``) and completed
with what the engine judged (``judged``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace

from moesim.plan import DecisionTable, GradSync
from moesim.schedules.lancet_dw import DWPlacement
from moesim.schedules.lancet_partition import PartitionPlan
from moesim.workload.ops import Axis, OpGraph


@dataclass(frozen=True, slots=True)
class RangeChoice:
    """One partitioned forward range: its MoE layer, first and last op, size, parts and the axis they cut,
    and its list-scheduled time in parts and whole."""

    layer: int
    first: str
    last: str
    ops: int
    k: int
    axis: Axis
    pipelined_s: float
    unpartitioned_s: float


@dataclass(frozen=True, slots=True)
class Placement:
    """The compute run right after one backward all-to-all's launch: what the pass kept, and how many ops
    Lancet's own greedy had put there (forced ones included)."""

    all_to_all: str
    a2a_s: float
    covered_s: float
    placed: tuple[str, ...]
    lancet_placed: int


@dataclass(frozen=True, slots=True)
class Judged:
    """One plan the engine played: its name, iteration time, k per partitioned layer (``2 x30, 4 x2``),
    dW ops moved and Tutel chunks (None: none)."""

    candidate: str
    iteration_s: float
    k: str
    dw_moved: int
    chunks: int | None


@dataclass(frozen=True, slots=True)
class LancetDecisions:
    """The kept plan's decisions; ``ranges`` is None where partitioning was off, ``dw_placement`` and
    ``dw_clock_s`` (the dW pass's estimates of the iteration, program order and moved) where dW scheduling
    was off or moved nothing."""

    dw_scheduling: bool
    partition: bool
    grad_sync: GradSync
    ranges: tuple[RangeChoice, ...] | None = None
    dw_placement: tuple[Placement, ...] | None = None
    dw_clock_s: tuple[float, float] | None = None
    tutel_chunks: int | None = None
    judged: tuple[Judged, ...] = ()
    kept: str = ""

    @classmethod
    def of_option(cls, graph: OpGraph, partition: bool, dw_scheduling: bool, grad_sync: GradSync,
                  placement: DWPlacement | None, partitions: PartitionPlan | None,
                  tutel_chunks: int | None) -> LancetDecisions:
        """The decisions of one plan Lancet may return (before the engine judged it)."""
        name = {op.id: op.name for op in graph.ops}
        ranges = None
        if partition:
            ranges = tuple(RangeChoice(r.layer, name[r.ops[0]], name[r.ops[-1]], len(r.ops), r.parts, r.axis,
                                       r.cost_s, r.unpartitioned_s)
                           for r in (partitions.ranges if partitions is not None else ()))
        placed = None
        if placement is not None:
            placed = tuple(Placement(name[a2a], placement.a2a_s[a2a], placement.covered_s[a2a],
                                     tuple(name[op_id] for op_id in ops), placement.proposed[a2a])
                           for a2a, ops in placement.after.items() if ops or placement.proposed[a2a])
        return cls(dw_scheduling, partition, grad_sync, ranges, placed,
                   placement.estimated_s if placement is not None else None, tutel_chunks)

    def with_judgement(self, judged: tuple[Judged, ...], kept: str) -> LancetDecisions:
        return replace(self, judged=judged, kept=kept)

    def to_json(self) -> dict[str, object]:
        result: dict[str, object] = {"dw_scheduling": self.dw_scheduling, "partition": self.partition,
                                     "grad_sync": self.grad_sync.value}
        if self.ranges is not None:
            result["ranges"] = [{**asdict(r), "axis": r.axis.value} for r in self.ranges]
        if self.dw_placement is not None:
            result["dw_placement"] = [{**asdict(p), "placed": list(p.placed)} for p in self.dw_placement]
        if self.dw_clock_s is not None:
            result["dw_clock_s"] = {"program_order": self.dw_clock_s[0], "moved": self.dw_clock_s[1]}
        if self.tutel_chunks is not None:
            result["tutel_chunks"] = self.tutel_chunks
        if self.judged:
            result["judged"] = [asdict(j) for j in self.judged]
            result["kept"] = self.kept
        return result

    def summary(self) -> str:
        parts = []
        if self.ranges:
            cuts = ", ".join(f"k={k} on {n}" for k, n in sorted(Counter(r.k for r in self.ranges).items()))
            axes = "/".join(sorted({r.axis.value for r in self.ranges}))
            parts.append(f"{cuts} MoE layers ({axes})")
        else:
            parts.append("no partition")
        if self.dw_placement is not None:
            moved = sum(len(p.placed) for p in self.dw_placement)
            parts.append(f"{moved} dW moved under {sum(bool(p.placed) for p in self.dw_placement)} a2a")
        elif not self.dw_scheduling:
            parts.append("no dW scheduling")
        if self.grad_sync is not GradSync.DDP:
            parts.append(f"grad_sync={self.grad_sync.value}")
        if self.judged and self.kept != self.judged[0].candidate:
            parts.append(f"kept {self.kept}")
        return "; ".join(parts)

    def tables(self) -> list[DecisionTable]:
        result = []
        if self.judged:
            rows: list[dict[str, object]] = [
                {"candidate": j.candidate, "iteration_ms": f"{j.iteration_s * 1e3:.2f}", "k": j.k,
                 "moved": j.dw_moved, "chunks": j.chunks or "-", "kept": "<-" if j.candidate == self.kept else ""}
                for j in self.judged]
            result.append(DecisionTable(
                "plans judged by the engine (Lancet keeps the fastest; 'chunks d' are Tutel's plans)", rows,
                [("candidate", "candidate"), ("iteration_ms", "iteration ms"), ("k", "k x MoE layers"),
                 ("moved", "dW moved"), ("chunks", "Tutel chunks"), ("kept", "kept")]))
        if self.ranges is not None:
            rows = [{"layer": r.layer, "range": f"{r.first} .. {r.last}", "ops": r.ops, "k": r.k,
                     "pipelined": f"{r.pipelined_s * 1e3:.2f}", "whole": f"{r.unpartitioned_s * 1e3:.2f}"}
                    for r in self.ranges]
            result.append(DecisionTable(
                "forward partitions (one per MoE layer partitioned; times from the planner's list scheduler, ms)",
                rows, [("layer", "MoE layer"), ("range", "range"), ("ops", "ops"), ("k", "k"),
                       ("pipelined", "pipelined ms"), ("whole", "unpartitioned ms")]))
        if self.dw_placement is not None:
            rows = [{"a2a": p.all_to_all, "a2a_ms": f"{p.a2a_s * 1e3:.2f}", "covered_ms": f"{p.covered_s * 1e3:.2f}",
                     "count": len(p.placed), "lancet": p.lancet_placed,
                     "placed": ", ".join(p.placed[:4]) + (" ..." if len(p.placed) > 4 else "")}
                    for p in self.dw_placement]
            estimate = (f"; the clock's iteration end {self.dw_clock_s[0] * 1e3:.2f} ms in program order, "
                        f"{self.dw_clock_s[1] * 1e3:.2f} ms moved" if self.dw_clock_s is not None else "")
            result.append(DecisionTable(
                "backward dW placement (compute run while each all-to-all is in flight; 'Lancet' counts the ops "
                "Lancet's greedy put there, forced ones included, before the moves that delay gradient sync more "
                f"than they hide were undone{estimate})", rows,
                [("a2a", "all-to-all"), ("a2a_ms", "a2a ms"), ("covered_ms", "placed ms"), ("count", "ops"),
                 ("lancet", "Lancet"), ("placed", "placed ops")]))
        return result


def k_summary(partitions: PartitionPlan | None) -> str:
    """``k x count`` per k over the partitioned MoE layers, e.g. ``2 x30, 4 x2``; ``none``."""
    if partitions is None or not partitions.ranges:
        return "none"
    counts = Counter(r.parts for r in partitions.ranges)
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))
