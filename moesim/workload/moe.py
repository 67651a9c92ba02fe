"""Per-MoE-layer sizes derived from routing: buffer rows, expert rows per rank, all-to-all traffic.

Traffic arrays are shared wherever layers move the same bytes (every padded layer, every uniform
layer), and combine's traffic is a transposed view of dispatch's, so a 256-GPU graph stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.workload.config import Workload
from moesim.workload.ops import CommSpec
from moesim.workload.routing import LayerRouting, dispatch_rows


@dataclass(frozen=True, slots=True, eq=False)
class MoEPlan:
    """What one MoE layer moves and computes on the mean rank.

    ``sent_rows``: rows a rank puts in its dispatch buffer (E * C padded, T * top_k dropless).
    ``received_rows``: mean rows a rank's experts process; rank r processes
    ``received_rows * rank_scale[r]`` (``rank_scale`` None when every rank is equal).
    ``dispatch`` carries ``traffic[g, a, b]`` bytes member a -> member b; ``combine`` the transpose.
    Their ``bytes`` is what the mean rank sends (itself included); ``traffic`` has every rank's share.
    """

    sent_rows: float
    received_rows: float
    rank_scale: tuple[float, ...] | None
    dispatch: CommSpec
    combine: CommSpec


def moe_plans(workload: Workload, routing: tuple[LayerRouting, ...]) -> dict[int, MoEPlan]:
    """``MoEPlan`` by global layer index, sharing plans between layers with identical routing."""
    row_bytes = workload.model.hidden * workload.training.dtype.bytes
    shared: dict[object, MoEPlan] = {}
    plans = {}
    for layer_routing in routing:
        # padded layers all move capacity-sized buffers; uniform dropless layers share one counts array
        key: object = "padded" if layer_routing.capacity is not None else id(layer_routing.kept)
        if key not in shared:
            shared[key] = _plan(workload, layer_routing, row_bytes)
        plans[layer_routing.layer] = shared[key]
    return plans


def _plan(workload: Workload, routing: LayerRouting, row_bytes: int) -> MoEPlan:
    rows = dispatch_rows(workload, routing)
    traffic = rows.astype(np.float64) * row_bytes
    transposed = traffic.transpose(0, 2, 1)
    received = rows.sum(axis=1).reshape(workload.num_gpus)
    mean = float(received.mean())
    scale = None
    if not np.all(received == received[0]):
        scale = tuple(float(r) / mean for r in received)
    sent = float(rows.sum(axis=2).mean())
    per_rank = float(traffic.sum(axis=2).mean())
    dispatch = CommSpec(groups=workload.ep_groups, bytes=per_rank, traffic=traffic)
    combine = CommSpec(groups=workload.ep_groups, bytes=per_rank, traffic=transposed)
    return MoEPlan(sent, mean, scale, dispatch, combine)
