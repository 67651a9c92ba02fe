"""What a real run recorded, carried by a ``Workload`` traced from it (``Workload.recorded``).

A traced workload (``moesim.workload.traced``) is a model run for real: its routing replaces the routing
model (``moesim.workload.routing.route``) and, on the device it ran on, its measured op times replace the
cost model's compute times (``moesim.workload.builder.build_graph``). ``Workload`` checks a record
against the model and training configuration it comes with.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

_RECORD = ConfigDict(frozen=True, extra="forbid")


class RecordedRouting(BaseModel):
    """One MoE layer's routing in the traced step: ``counts[s][e]`` token-to-expert assignments rank ``s``
    made to expert ``e`` before capacity, ``kept[s][e]`` after dropping (equal to counts when dropless)."""

    model_config = _RECORD

    layer: NonNegativeInt
    counts: tuple[tuple[NonNegativeInt, ...], ...]
    kept: tuple[tuple[NonNegativeInt, ...], ...]
    capacity: PositiveInt | None


class RecordedRank(BaseModel):
    """One rank's traced step: its length, the measured seconds of each op of moesim's graph it ran
    (by op name, ``L2.qkv.dw``), and what no op covered (framework work outside the graph)."""

    model_config = _RECORD

    rank: NonNegativeInt
    step_s: PositiveFloat
    op_seconds: dict[str, NonNegativeFloat]
    unattributed_s: NonNegativeFloat = 0.0


class RecordedRun(BaseModel):
    """The run a traced workload comes from: on ``world_size`` ranks of device ``device`` (a moesim GPU
    name such as ``cpu-rank`` or ``H100-SXM5-80GB``), the routing per MoE layer and each rank's op times."""

    model_config = _RECORD

    device: str
    world_size: PositiveInt
    routing: tuple[RecordedRouting, ...]
    ranks: tuple[RecordedRank, ...]

    def op_seconds(self, name: str) -> tuple[float, ...] | None:
        """Measured seconds of op ``name`` on every rank, or None when a rank did not record it."""
        times = tuple(rank.op_seconds.get(name) for rank in self.ranks)
        if any(t is None for t in times):
            return None
        return tuple(float(t) for t in times if t is not None)

    def mismatch(self, *, num_gpus: int, num_experts: int, moe_layers: tuple[int, ...], assignments: int,
                 capacity: int | None) -> tuple[tuple[str | int, ...], str] | None:
        """Where this record contradicts the workload it comes with (a field's location and what is wrong),
        or None. ``assignments`` is what each rank routes per MoE layer (tokens x top_k)."""
        if self.world_size != num_gpus:
            return ("world_size",), (f"traced on {self.world_size} ranks; a traced workload runs on exactly that "
                                     f"many GPUs (got {num_gpus}: choose --nodes and hardware to match)")
        if sorted(rank.rank for rank in self.ranks) != list(range(num_gpus)):
            return ("ranks",), f"one entry per rank 0..{num_gpus - 1} expected"
        layers = tuple(r.layer for r in self.routing)
        if layers != moe_layers:
            return ("routing",), f"layers {list(layers)} recorded; the model's MoE layers are {list(moe_layers)}"
        for index, layer in enumerate(self.routing):
            for field, rows in (("counts", layer.counts), ("kept", layer.kept)):
                if len(rows) != num_gpus or any(len(row) != num_experts for row in rows):
                    return ("routing", index, field), f"{num_gpus} rows of {num_experts} experts expected"
            if layer.capacity != capacity:
                return (("routing", index, "capacity"),
                        f"{layer.capacity} recorded; the training config gives {capacity}")
            for rank, (counts, kept) in enumerate(zip(layer.counts, layer.kept, strict=True)):
                if sum(counts) != assignments:
                    return (("routing", index, "counts", rank),
                            f"rank {rank} routes {sum(counts)} assignments; tokens x top_k = {assignments}")
                if any(k > c or (capacity is not None and k > capacity) for k, c in zip(kept, counts, strict=True)):
                    return ("routing", index, "kept", rank), "kept exceeds the counts or the capacity"
                if capacity is None and kept != counts:
                    return ("routing", index, "kept", rank), "a dropless run keeps every assignment"
        return None
