"""Fixtures: a tiny cluster with round numbers, and builders for ops and tasks, so expected costs are
hand-checkable. Each fixture returns the builder function."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from moesim.hardware import ClusterSpec, CostParams, GPUSpec, IntraNodeFabric, NetworkSpec, NodeSpec
from moesim.plan import StreamKind, Task
from moesim.workload.ops import CommSpec, Op, OpKind, Phase


def _tiny_cluster(num_nodes: int = 2, **cost: float) -> ClusterSpec:
    """``num_nodes`` nodes of 2 GPUs; 100 GB/s intra per direction; 2 NICs of 80 Gbit/s (10 GB/s) each;
    intra latency 2 us, network latency 10 us; all efficiencies 1 unless ``cost`` overrides them."""
    params = {
        "matmul_efficiency": 1.0,
        "matmul_half_efficiency_us": 0.0,
        "attention_efficiency": 1.0,
        "other_compute_efficiency": 1.0,
        "hbm_efficiency": 1.0,
        "launch_overhead_us": 0.0,
        "intra_bandwidth_efficiency": 1.0,
        "inter_bandwidth_efficiency": 1.0,
        "collective_base_latency_us": 0.0,
        "all_to_all_peer_latency_us": 0.0,
        "compute_slowdown_under_comm": 0.0,
    }
    params.update(cost)
    gpu = GPUSpec(
        name="toy", peak_tflops={"fp32": 10.0, "fp16": 100.0}, hbm_gib=16, hbm_gb_per_s=1000, sm_count=10
    )
    node = NodeSpec(
        name="toy-node",
        gpu=gpu,
        gpus_per_node=2,
        intra=IntraNodeFabric(topology="nvswitch", bandwidth_gb_per_s=100, latency_us=2.0),
        network=NetworkSpec(nics_per_node=2, nic_gbps=80, latency_us=10.0),
        cost=CostParams(**params),
    )
    return ClusterSpec(node=node, num_nodes=num_nodes)


def _compute_op(
    kind: OpKind, flops: float, mem_bytes: float, rank_scale: tuple[float, ...] | None = None
) -> Op:
    return Op(
        id=0,
        name=f"x.{kind.value}",
        role=kind.value,
        kind=kind,
        phase=Phase.FORWARD,
        layer=0,
        flops=flops,
        mem_bytes=mem_bytes,
        rank_scale=rank_scale,
    )


def _comm_op(
    kind: OpKind, groups: tuple[tuple[int, ...], ...], nbytes: float, traffic: np.ndarray | None = None
) -> Op:
    return Op(
        id=1,
        name=f"x.{kind.value}",
        role=kind.value,
        kind=kind,
        phase=Phase.FORWARD,
        layer=0,
        comm=CommSpec(groups=groups, bytes=nbytes, traffic=traffic),
    )


def _task(fraction: float = 1.0, traffic: np.ndarray | None = None) -> Task:
    return Task(id=0, op=0, stream=StreamKind.COMPUTE, fraction=fraction, traffic=traffic)


@pytest.fixture
def tiny_cluster() -> Callable[..., ClusterSpec]:
    return _tiny_cluster


@pytest.fixture
def compute_op() -> Callable[..., Op]:
    return _compute_op


@pytest.fixture
def comm_op() -> Callable[..., Op]:
    return _comm_op


@pytest.fixture
def task() -> Callable[..., Task]:
    return _task
