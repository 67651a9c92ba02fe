"""What the op graph of a built workload knows beyond its ops: the facts schedules, analyses and the CLI read.

A frozen value on ``OpGraph.facts`` (graphs built by hand, such as calibration's synthetic plans, have
none). Enums stay enums; derived figures are properties, not stored copies.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.workload.buckets import BucketSpec
from moesim.workload.config import GateKind, OptimizerKind
from moesim.workload.routing import LayerRouting


@dataclass(frozen=True, slots=True)
class ParamCounts:
    """Parameter elements one rank holds: dense (replicated on every rank) and its own experts'."""

    dense: int
    expert_per_rank: int

    @property
    def total(self) -> int:
        return self.dense + self.expert_per_rank


@dataclass(frozen=True, slots=True, eq=False)
class GraphFacts:
    """The workload behind a built graph (``build_graph``)."""

    model: str                      # the model's name
    preset: str | None              # the preset it came from, if any
    tokens_per_gpu: int
    batch_per_gpu: int
    seq_len: int
    hidden: int
    capacity: int | None            # token slots per expert; None: dropless
    num_experts: int
    experts_per_rank: int
    ep_size: int
    dp_size: int
    expert_dp_size: int
    gate: GateKind
    optimizer: OptimizerKind
    params: ParamCounts
    grad_bytes: int                 # bytes per gradient element
    grad_bucket_bytes: float        # DDP's bucket cap
    buckets: BucketSpec | None      # how gradients are bucketed (None: nothing is synchronised)
    routing: tuple[LayerRouting, ...]  # one per MoE layer, in layer order

    @property
    def param_bytes(self) -> ParamCounts:
        """The gradient bytes of ``params`` (in the gradient dtype)."""
        return ParamCounts(self.params.dense * self.grad_bytes, self.params.expert_per_rank * self.grad_bytes)

    def routing_of(self, layer: int) -> LayerRouting:
        """The routing of MoE layer ``layer`` (KeyError if the layer is not an MoE layer)."""
        for layer_routing in self.routing:
            if layer_routing.layer == layer:
                return layer_routing
        raise KeyError(f"no routing for layer {layer}: not an MoE layer")
