"""Synthetic measurements: every time is what ``RooflineCostModel`` predicts on a node with PLANTED
parameters, times ``1 + noise * N(0, 1)`` from a seeded Generator. The ops are built here, by the
FLOP / byte conventions of moesim/workload/blocks.py written out again, not through the calibration
package, so a convention the fit gets wrong shows up as a parameter it fails to recover.

A collective under compute takes what the engine gives it with a member computing throughout: each
stage's latency, plus its transfer (bottleneck volume over capacity, from the cost model's
``CollectiveDemand``) stretched by ``1 + comm_slowdown_under_compute``."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from moesim.calibration.measurements import (
    AttentionSample,
    CollectiveSample,
    CommUnderComputeSample,
    ElementwiseSample,
    Environment,
    InterferenceSample,
    LayernormSample,
    MatmulSample,
    Measurements,
    RendezvousSample,
    StreamHandoffSample,
    WokenUnderCommSample,
)
from moesim.dtypes import DType
from moesim.hardware import ClusterSpec, CostParams, GPUSpec, IntraNodeFabric, NetworkSpec, NodeSpec, RooflineCostModel
from moesim.plan import StreamKind, Task
from moesim.workload.ops import CommSpec, Op, OpKind, Phase

MEASURED_AT = datetime(2025, 3, 14, 9, 26, tzinfo=UTC)

CPU_SHAPES = {
    # the last matmul is a GEMV: on the memory roof, which the fit must recognise and leave out
    "matmul": [(64, 64, 64), (128, 128, 128), (256, 256, 256), (384, 384, 384), (512, 512, 512),
               (1024, 1024, 1024), (2048, 256, 512), (1, 4096, 4096)],
    "elementwise": [100, 1_000, 10_000, 100_000, 1_000_000, 4_000_000, 16_000_000],
    "attention": [(1, 4, 128, 64), (2, 8, 256, 64), (1, 8, 512, 64), (2, 8, 512, 64), (1, 16, 1024, 64)],
    "layernorm": [(64, 256), (512, 1024), (2048, 1024), (4096, 4096)],
    "bytes": [1e3, 4e3, 1.6e4, 6.4e4, 2.56e5, 1e6, 4e6, 1.6e7],
    "interference": [((256, 256, 256), OpKind.ALL_TO_ALL, 1e6), ((512, 512, 512), OpKind.ALL_TO_ALL, 4e6),
                     ((256, 256, 256), OpKind.ALL_REDUCE, 1e6)],
    "comm_under_compute": [1e6, 4e6, 1.6e7],  # the larger half of "bytes", both kinds, every group size
    "compute_loops": [(256, 256, 256), (512, 512, 512)],  # 0.7 and 5.4 ms kernels: the same wait under both
}
GPU_SHAPES = {
    "matmul": [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096),
               (8192, 8192, 8192), (16384, 1024, 4096), (1, 8192, 8192)],
    "elementwise": [10_000, 100_000, 1_000_000, 10_000_000, 64_000_000, 256_000_000],
    "attention": [(8, 16, 1024, 64), (4, 16, 2048, 128), (16, 32, 512, 64), (2, 32, 4096, 128)],
    "layernorm": [(4096, 1024), (16384, 4096), (65536, 8192)],
    "bytes": [4e3, 6.4e4, 1e6, 1.6e7, 6.4e7, 2.56e8],
    "interference": [((4096, 4096, 4096), OpKind.ALL_TO_ALL, 6.4e7), ((8192, 8192, 8192), OpKind.ALL_TO_ALL, 2.56e8)],
    "comm_under_compute": [1.6e7, 6.4e7, 2.56e8],
    "compute_loops": [(8192, 8192, 8192)],
}


def _planted_cpu(world: int = 2, **cost: float) -> NodeSpec:
    """A CPU rank with round planted numbers: 50 GFLOP/s, 6 GB/s, loopback 1.5 GB/s for rings and 0.8 of
    that for all-to-alls. The per-peer latency equals cpu-loopback's (10 us)."""
    params = dict(matmul_efficiency=1.0, matmul_half_efficiency_us=30.0, attention_efficiency=0.4,
                  other_compute_efficiency=0.03, hbm_efficiency=1.0, launch_overhead_us=8.0,
                  intra_bandwidth_efficiency=1.0, inter_bandwidth_efficiency=1.0, collective_base_latency_us=40.0,
                  all_to_all_base_latency_us=25.0, all_to_all_bandwidth_ratio=0.8,
                  all_to_all_peer_latency_us=10.0, compute_slowdown_under_comm=0.0, comm_cpu_us=250.0,
                  comm_cpu_us_per_mib=400.0,
                  comm_slowdown_under_compute=0.6, comm_latency_under_compute_us=2000.0,
                  matmul_half_efficiency_dim=48.0, stream_handoff_us=50.0, rendezvous_skew=0.04,
                  rendezvous_skew_cap_us=500.0, attention_half_efficiency_seq=40.0, compute_wait_under_comm_us=700.0)
    params.update(cost)
    return NodeSpec(
        name="planted-cpu",
        gpu=GPUSpec(name="cpu-rank", device="cpu", peak_tflops={"fp32": 0.05}, hbm_gib=8, hbm_gb_per_s=6.0),
        gpus_per_node=world,
        intra=IntraNodeFabric(topology="loopback", bandwidth_gb_per_s=1.5, latency_us=15.0),
        network=NetworkSpec(nics_per_node=1, nic_gbps=10, latency_us=50),
        cost=CostParams(**params),
    )


def _planted_gpu(base: NodeSpec, **cost: float) -> NodeSpec:
    """``base`` (a datasheet GPU node) with planted efficiencies, latencies and slowdown."""
    params = dict(matmul_efficiency=0.62, matmul_half_efficiency_us=12.0, attention_efficiency=0.41,
                  hbm_efficiency=0.83, launch_overhead_us=5.0, intra_bandwidth_efficiency=0.71,
                  collective_base_latency_us=9.0, all_to_all_base_latency_us=6.0, all_to_all_bandwidth_ratio=1.15,
                  all_to_all_peer_latency_us=0.8, compute_slowdown_under_comm=0.18,
                  comm_slowdown_under_compute=0.12)
    params.update(cost)
    return base.model_copy(update={"cost": base.cost.model_copy(update=params),
                                   "intra": base.intra.model_copy(update={"latency_us": 4.0})})


def _op(kind: OpKind, flops: float = 0.0, mem_bytes: float = 0.0, comm: CommSpec | None = None,
        dims: dict[str, int] | None = None) -> Op:
    return Op(id=0, name="planted", role=None, kind=kind, phase=Phase.FORWARD, layer=None, flops=flops,
              mem_bytes=mem_bytes, comm=comm, dims=dims or {})


def _synthesize(node: NodeSpec, *, world: int, dtype: DType, shapes: dict, noise: float = 0.0, seed: int = 0,
               group_sizes: tuple[int, ...] | None = None, ranks_per_host: int | None = None) -> Measurements:
    """Measurements of ``node`` as the cost model predicts them, optionally noisy; all-reduces run as rings, as
    ``moesim calibrate`` runs them (NCCL_ALGO=Ring)."""
    rng = np.random.default_rng(seed)
    swept = node.model_copy(update={"cost": node.cost.model_copy(update={"all_reduce_algorithm": "ring"})})
    model = RooflineCostModel(ClusterSpec(node=swept, num_nodes=max(1, world // node.gpus_per_node)), dtype)
    compute_task, comm_task = Task(id=0, op=0, stream=StreamKind.COMPUTE), Task(id=0, op=0, stream=StreamKind.COMM)
    b = dtype.bytes

    def noisy(seconds: float) -> float:
        return seconds * max(0.5, 1.0 + noise * rng.standard_normal())

    def compute(kind: OpKind, flops: float, mem_bytes: float, dims: dict[str, int] | None = None) -> float:
        return model.compute_time(_op(kind, flops, mem_bytes, dims=dims), compute_task, rank=0)

    def matmul_time(m: int, n: int, k: int) -> float:
        return compute(OpKind.MATMUL, 2 * m * n * k, (m * k + k * n + m * n) * b, {"m": m, "n": n, "k": k})

    matmul = [MatmulSample(m=m, n=n, k=k, dtype=dtype, seconds=noisy(matmul_time(m, n, k)))
              for m, n, k in shapes["matmul"]]
    elementwise = [ElementwiseSample(numel=e, dtype=dtype, seconds=noisy(compute(OpKind.ELEMENTWISE, e, 3 * e * b)))
                   for e in shapes["elementwise"]]
    attention = [AttentionSample(batch=B, heads=H, seq=S, head_dim=d, dtype=dtype,
                                 seconds=noisy(compute(OpKind.ATTENTION, 4 * B * S * S * H * d, 4 * B * S * H * d * b,
                                                       {"b": B, "heads": H, "s": S, "head_dim": d})))
                 for B, H, S, d in shapes["attention"]]
    layernorm = [LayernormSample(tokens=t, hidden=h, dtype=dtype,
                                 seconds=noisy(compute(OpKind.LAYERNORM, 5 * t * h, 2 * t * h * b)))
                 for t, h in shapes["layernorm"]]
    def under_compute(op: Op) -> tuple[float, float]:
        """The engine's rule: each stage waits for a core, then its transfer is stretched. Returns the
        collective's time and the part of it that ran (not waiting for a core)."""
        assert op.comm is not None
        stages = model.collective_demand(op, comm_task, range(len(op.comm.groups))).stages()
        stretch = 1.0 + node.cost.comm_slowdown_under_compute
        wait = node.cost.comm_latency_under_compute_s
        running = sum(stage.latency_s + stretch * float(np.max(stage.volume / model.capacities[stage.resources]))
                      for stage in stages)
        return running + wait * len(stages), running

    collectives, comm_under_compute = [], []
    for g in group_sizes or (world,):
        groups = tuple(tuple(range(s, s + g)) for s in range(0, world, g))
        for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
            for size in shapes["bytes"]:
                seconds = model.collective_time(_op(kind, comm=CommSpec(groups=groups, bytes=size)), comm_task)
                collectives.append(CollectiveSample(kind=kind, group_size=g, bytes_per_rank=size,
                                                    seconds=noisy(seconds)))
            for size in shapes["comm_under_compute"]:
                op = _op(kind, comm=CommSpec(groups=groups, bytes=size))
                for m, n, k in shapes["compute_loops"]:
                    kernel_s, (flight, running) = matmul_time(m, n, k), under_compute(op)
                    # the calling thread's loop: whole kernels until the collective ends, each slowed by
                    # 1 + s while it runs (not while it waits for a core), and the collective's work on the
                    # cores (comm_cpu) taken once: c kernels take c K + s T + cpu, the first c that reach
                    # past the collective's end
                    stolen = node.cost.compute_slowdown_under_comm * running + node.cost.comm_cpu_s(size)
                    kernels = max(1, math.ceil((flight - stolen) / kernel_s))
                    window = kernels * kernel_s + stolen
                    comm_under_compute.append(CommUnderComputeSample(
                        kind=kind, group_size=g, bytes_per_rank=size, m=m, n=n, k=k, dtype=dtype,
                        seconds_alone=noisy(model.collective_time(op, comm_task)),
                        seconds_with_compute=noisy(flight), kernel_seconds=kernel_s,
                        compute_window_seconds=noisy(window), compute_kernels=float(kernels)))
    interference = []
    everyone = (tuple(range(world)),)
    for (m, n, k), kind, size in shapes["interference"]:
        alone = matmul_time(m, n, k)
        # back-to-back collectives: the matmul runs 1 + s slower and loses comm_cpu once per collective
        loop = model.collective_time(_op(kind, comm=CommSpec(groups=everyone, bytes=size)), comm_task)
        slowdown = 1.0 + node.cost.compute_slowdown_under_comm + node.cost.comm_cpu_s(size) / loop
        interference.append(InterferenceSample(m=m, n=n, k=k, dtype=dtype, kind=kind, bytes_per_rank=size,
                                               seconds_alone=noisy(alone), seconds_with_comm=noisy(alone * slowdown)))
    env = Environment(torch="2.13.0+synthetic", backend="gloo" if node.gpu.device == "cpu" else "nccl",
                      device=node.gpu.device, world_size=world, ranks_per_host=ranks_per_host or world,
                      devices=("planted",))
    handoff = StreamHandoffSample(rounds=64, seconds=noisy(node.cost.stream_handoff_s)) if world > 1 else None
    # the woken add: the hand-over, then the planted wait, under a busy collective of 3 ms
    wait = node.cost.stream_handoff_s + min(node.cost.compute_wait_under_comm_s, 3e-3)
    woken = WokenUnderCommSample(rounds=64, busy_bytes=4e6, seconds=noisy(wait),
                                 collective_seconds=3e-3) if world > 1 else None
    # a collective after T seconds of compute: 0.3 ms of its own, plus the planted share of T up to the cap
    # (0.04 x 0.3 ms stays in the first sample: the fit measures from it)
    skew, cap, first = node.cost.rendezvous_skew, node.cost.rendezvous_skew_cap_s, 3e-4
    rendezvous = tuple(RendezvousSample(segment=n, segment_seconds=t,
                                        wait_seconds=noisy(3e-4 + skew * first + min(skew * (t - first), cap)))
                       for n, t in ((1, first), (8, 4e-3), (24, 8.5e-3), (64, 2.2e-2), (96, 3.3e-2))
                       ) if world > 1 else ()
    return Measurements(measured_at=MEASURED_AT, environment=env, warmup=1, repeats=5, matmul=tuple(matmul),
                        stream_handoff=handoff, woken_under_comm=woken, rendezvous=rendezvous,
                        elementwise=tuple(elementwise), attention=tuple(attention), layernorm=tuple(layernorm),
                        collectives=tuple(collectives), interference=tuple(interference),
                        comm_under_compute=tuple(comm_under_compute))


@pytest.fixture
def planted_cpu():
    return _planted_cpu


@pytest.fixture
def planted_gpu():
    return _planted_gpu


@pytest.fixture
def synthesize():
    return _synthesize


@pytest.fixture
def cpu_shapes():
    return {key: list(value) for key, value in CPU_SHAPES.items()}


@pytest.fixture
def gpu_shapes():
    return {key: list(value) for key, value in GPU_SHAPES.items()}


@pytest.fixture
def cpu_measurements():
    """Noise-free measurements of ``planted_cpu(world=4)`` with all-to-alls at group sizes 2 and 4."""
    return _synthesize(_planted_cpu(world=4), world=4, dtype=DType.FP32, shapes=CPU_SHAPES, group_sizes=(2, 4))
