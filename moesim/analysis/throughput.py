"""Throughput and cost of a simulated iteration: tokens/s, TFLOP/s per GPU, MFU, GPU-hours and dollars.

``tokens_per_s`` counts the tokens every GPU takes in per iteration (``tokens_per_gpu`` x GPUs: sequence x
micro-batch of each data-parallel rank) over the iteration time. ``tflops_per_gpu`` is the graph's FLOPs
per GPU (every compute op the plan ran, backward included; moesim recomputes no activation, so these are
the model's FLOPs) over the iteration time; ``mfu`` that over the GPU's dense peak in the training dtype.
Cost needs a price per node-hour (``hardware.node.price_per_hour``, US dollars); without one it is None.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from moesim.analysis.metrics import Metrics
from moesim.dtypes import DType
from moesim.errors import MoesimError
from moesim.hardware.specs import ClusterSpec

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Throughput:
    """One iteration's rates; the cost fields are None when the node has no price."""

    tokens_per_s: float
    tflops_per_gpu: float
    mfu: float                              # tflops_per_gpu / the dense peak in the training dtype
    gpu_hours_per_million_tokens: float
    price_per_node_hour: float | None       # US dollars
    usd_per_million_tokens: float | None
    num_gpus: int
    gpus_per_node: int

    def train_seconds(self, tokens: float) -> float:
        """Wall-clock seconds to train ``tokens`` tokens at this rate."""
        return _positive(tokens) / self.tokens_per_s

    def train_gpu_hours(self, tokens: float) -> float:
        return self.train_seconds(tokens) * self.num_gpus / SECONDS_PER_HOUR

    def train_usd(self, tokens: float) -> float | None:
        """Dollars to train ``tokens`` tokens on the whole cluster; None without a price."""
        if self.price_per_node_hour is None:
            return None
        return self.train_gpu_hours(tokens) / self.gpus_per_node * self.price_per_node_hour

    def to_dict(self) -> dict[str, object]:
        return {key: value for key, value in asdict(self).items() if key not in ("num_gpus", "gpus_per_node")}


def throughput(metrics: Metrics, tokens_per_gpu: int, cluster: ClusterSpec, dtype: DType) -> Throughput:
    """The rates of an iteration of ``metrics`` in which each GPU takes in ``tokens_per_gpu`` tokens."""
    iteration = metrics.iteration_time_s
    if iteration <= 0:
        raise MoesimError("throughput: the iteration took no time; nothing to divide by")
    tokens_per_s = tokens_per_gpu * metrics.num_gpus / iteration
    flops_per_s = metrics.flops_per_gpu / iteration
    node = cluster.node
    gpu_hours = 1e6 / tokens_per_s * metrics.num_gpus / SECONDS_PER_HOUR
    price = node.price_per_hour
    return Throughput(
        tokens_per_s=tokens_per_s,
        tflops_per_gpu=flops_per_s / 1e12,
        mfu=flops_per_s / node.gpu.peak_flops(dtype),
        gpu_hours_per_million_tokens=gpu_hours,
        price_per_node_hour=price,
        usd_per_million_tokens=None if price is None else gpu_hours / node.gpus_per_node * price,
        num_gpus=metrics.num_gpus,
        gpus_per_node=node.gpus_per_node,
    )


def _positive(tokens: float) -> float:
    if isinstance(tokens, bool) or not isinstance(tokens, int | float) or not math.isfinite(tokens) or tokens <= 0:
        raise MoesimError(f"tokens: a positive, finite number of tokens, got {tokens!r}")
    return float(tokens)
