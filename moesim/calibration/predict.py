"""What the simulator's own cost model predicts for each measured sample.

The fit's one-parameter searches and the fit report both go through ``RooflineCostModel`` (never a
copy of its formulas), so a fitted spec is judged by exactly the arithmetic the engine will use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from moesim import units
from moesim.calibration.measurements import (
    AttentionSample,
    CollectiveSample,
    CommUnderComputeSample,
    ElementwiseSample,
    InterferenceSample,
    KernelSample,
    LayernormSample,
    MatmulSample,
)
from moesim.dtypes import DType
from moesim.hardware.cost import RooflineCostModel, matmul_shape_dim
from moesim.hardware.specs import ClusterSpec, NodeSpec
from moesim.plan import StreamKind, Task
from moesim.workload.ops import CommSpec, Op, OpKind, Phase

ComputeSample = MatmulSample | ElementwiseSample | AttentionSample | LayernormSample | KernelSample
AnyCollectiveSample = CollectiveSample | CommUnderComputeSample

_COMPUTE_TASK = Task(id=0, op=0, stream=StreamKind.COMPUTE)
_COMM_TASK = Task(id=0, op=0, stream=StreamKind.COMM)


def cluster_for(node: NodeSpec, world_size: int) -> ClusterSpec:
    """Enough copies of ``node`` to hold ``world_size`` ranks."""
    return ClusterSpec(node=node, num_nodes=max(1, math.ceil(world_size / node.gpus_per_node)))


def compute_op(sample: ComputeSample) -> Op:
    """The op the cost model sees for a compute sample: its kind, phase, FLOP, bytes and (a matmul's or an
    attention's) dims, whole: a sample is the op's entire kernel, so the token dimension is not scaled."""
    kind = sample.kind
    if isinstance(sample, MatmulSample):
        dims = {"m": sample.m, "n": sample.n, "k": sample.k}
    elif isinstance(sample, AttentionSample):
        dims = {"b": sample.batch, "heads": sample.heads, "s": sample.seq, "head_dim": sample.head_dim}
    else:
        dims = dict(sample.dims) if isinstance(sample, KernelSample) else {}
    phase = sample.phase if isinstance(sample, KernelSample) else Phase.FORWARD
    return Op(id=0, name=f"microbench.{kind.value}", role=None, kind=kind, phase=phase,
              layer=None, flops=sample.flops, mem_bytes=sample.mem_bytes, dims=dims)


def shape_dim(sample: ComputeSample) -> float:
    """The harmonic mean of a matmul sample's m, n, k, as the cost model's shape term reads it (inf without
    dims)."""
    return matmul_shape_dim(compute_op(sample), _COMPUTE_TASK, rank=0)


def with_cost(node: NodeSpec, **updates: object) -> NodeSpec:
    """``node`` with those cost parameters changed (a trial value of a fit, a roof at efficiency 1, ...)."""
    return node.model_copy(update={"cost": node.cost.model_copy(update=updates)})


def kernel_node(node: NodeSpec, bookkeeping_s: float) -> NodeSpec:
    """``node`` as it should predict a sweep sample: a sample times the kernel call alone, so the
    executor's per-task bookkeeping, which ``launch_overhead_us`` includes, is taken out (never below 0)."""
    if bookkeeping_s <= 0:
        return node
    return with_cost(node, launch_overhead_us=max(0.0, node.cost.launch_overhead_us - units.to_us(bookkeeping_s)))


def collective_groups(group_size: int, world_size: int) -> tuple[tuple[int, ...], ...]:
    """The groups of consecutive ranks that ran a collective of ``group_size`` together."""
    return tuple(tuple(range(start, start + group_size)) for start in range(0, world_size, group_size)
                 if start + group_size <= world_size)


def collective_op(sample: AnyCollectiveSample, world_size: int) -> Op:
    return _collective_op(sample.kind, sample.bytes_per_rank, sample.group_size, world_size)


def _collective_op(kind: OpKind, bytes_per_rank: float, group_size: int, world_size: int) -> Op:
    comm = CommSpec(groups=collective_groups(group_size, world_size), bytes=bytes_per_rank)
    return Op(id=0, name=f"microbench.{kind.value}", role=None, kind=kind, phase=Phase.FORWARD, layer=None,
              comm=comm)


def _comm_model(node: NodeSpec, world_size: int) -> RooflineCostModel:
    """The cost model of ``world_size`` ranks of ``node`` (its first dtype: collectives do not read it), its
    all-reduces rings as the calibration sweep runs them (``NCCL_ALGO=Ring``)."""
    ring = node.model_copy(update={"cost": node.cost.model_copy(update={"all_reduce_algorithm": "ring"})})
    return RooflineCostModel(cluster_for(ring, world_size), next(iter(node.gpu.peak_tflops)))


def predict_compute(samples: Sequence[ComputeSample], node: NodeSpec) -> np.ndarray:
    """Predicted seconds of each compute sample on one rank of ``node``."""
    cluster = cluster_for(node, 1)
    models: dict[DType, RooflineCostModel] = {}
    times = []
    for sample in samples:
        model = models.get(sample.dtype) or models.setdefault(sample.dtype, RooflineCostModel(cluster, sample.dtype))
        times.append(model.compute_time(compute_op(sample), _COMPUTE_TASK, rank=0))
    return np.array(times, dtype=np.float64)


def predict_collectives(samples: Sequence[CollectiveSample], node: NodeSpec, world_size: int) -> np.ndarray:
    """Predicted seconds of each collective sample on an idle network of ``world_size`` ranks."""
    if not samples:
        return np.zeros(0)
    model = _comm_model(node, world_size)
    return np.array([model.collective_time(collective_op(s, world_size), _COMM_TASK) for s in samples])


def bandwidth_shares(samples: Sequence[AnyCollectiveSample], node: NodeSpec, world_size: int) -> np.ndarray:
    """Of each collective's predicted time on an idle network, the share that is transfer (bottleneck
    volume over capacity, every stage), not latency: what the engine stretches by
    ``1 + comm_slowdown_under_compute`` while a member rank computes. 0 for a collective with no bytes."""
    if not samples:
        return np.zeros(0)
    model = _comm_model(node, world_size)
    shares = []
    for sample in samples:
        op = collective_op(sample, world_size)
        assert op.comm is not None
        demand = model.collective_demand(op, _COMM_TASK, range(len(op.comm.groups)))
        total = demand.uncontended_s(model.capacities)
        latency = sum(stage.latency_s for stage in demand.stages())
        shares.append((total - latency) / total if total > 0 else 0.0)
    return np.array(shares, dtype=np.float64)


def predict_interference(samples: Sequence[InterferenceSample], node: NodeSpec, world_size: int) -> np.ndarray:
    """Predicted ``seconds_with_comm / seconds_alone`` of each sample: a matmul under back-to-back
    collectives over every rank runs ``1 + s`` times slower (``compute_slowdown_under_comm``), and each
    collective takes ``comm_cpu`` of its compute, once per collective time ``T`` on an idle network:
    ``1 + s + cpu / T``."""
    if not samples:
        return np.zeros(0)
    model = _comm_model(node, world_size)
    ratios = []
    for sample in samples:
        seconds = model.collective_time(_collective_op(sample.kind, sample.bytes_per_rank, world_size, world_size),
                                        _COMM_TASK)
        work = node.cost.comm_cpu_s(sample.bytes_per_rank) / seconds if seconds > 0 else 0.0
        ratios.append(1.0 + node.cost.compute_slowdown_under_comm + work)
    return np.array(ratios, dtype=np.float64)


def predict_comm_under_compute(samples: Sequence[CommUnderComputeSample], node: NodeSpec,
                               world_size: int) -> np.ndarray:
    """Predicted ``seconds_with_compute / seconds_alone`` of each sample: with compute running on every
    member throughout, the collective first waits ``z`` (``comm_latency_under_compute``) and its
    transfer share ``f`` runs ``1 + y`` times slower (``y`` = ``comm_slowdown_under_compute``), so the
    measured time alone ``t`` grows to ``t + z + y * f * t``."""
    alone = np.array([s.seconds_alone for s in samples], dtype=np.float64)
    cost = node.cost
    return 1.0 + cost.comm_latency_under_compute_s / alone + cost.comm_slowdown_under_compute * bandwidth_shares(
        samples, node, world_size)
