"""RooflineCostModel: the CostModel the engine uses (moesim/hardware/interface.py).

Compute: ``max(flops / (peak * eff(kind, phase, size, shape)), mem_bytes / (hbm * hbm_efficiency * mem_eff(kind,
phase))) + launch``.
Communication: alpha-beta per collective algorithm (``collectives.py``); the alpha is the returned
latency, the beta is left to the engine's flow model sharing each resource's capacity. The all-to-all has
its own base alpha and bandwidth (``all_to_all_base_latency``, ``all_to_all_bandwidth_ratio``): its volume
is written as the bytes that take as long at the rings' rate, ``bytes / ratio``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from moesim.errors import MoesimError
from moesim.hardware import collectives
from moesim.hardware.interface import CollectiveDemand, Task
from moesim.hardware.resources import ResourceMap
from moesim.hardware.specs import ClusterSpec, CostParams, DType
from moesim.workload.ops import A2AAlgorithm, CommSpec, Op, OpKind, Phase

_TENSOR_KINDS = frozenset({OpKind.MATMUL, OpKind.ATTENTION})
_RING_TRAVERSALS = {OpKind.ALL_REDUCE: 2, OpKind.ALL_GATHER: 1, OpKind.REDUCE_SCATTER: 1}
_CACHE_LIMIT = 1 << 16


@dataclass(frozen=True, slots=True)
class SpecHostCosts:
    """The host delays a node's ``CostParams`` state (``HostCosts``; zero on GPU presets)."""

    params: CostParams

    @property
    def stream_handoff(self) -> float:
        return self.params.stream_handoff_s

    @property
    def compute_wait_under_comm(self) -> float:
        return self.params.compute_wait_under_comm_s

    @property
    def comm_latency_under_compute(self) -> float:
        return self.params.comm_latency_under_compute_s

    @property
    def rendezvous_skew(self) -> float:
        return self.params.rendezvous_skew

    @property
    def rendezvous_skew_cap(self) -> float:
        return self.params.rendezvous_skew_cap_s

    def collective_cpu(self, op: Op, task: Task) -> float:
        assert op.comm is not None
        return self.params.comm_cpu_s(op.comm.bytes * task.fraction)


class RooflineCostModel:
    """Costs of one cluster training in ``dtype``; build one per simulation.

    Peaks: matmul and attention run at the dtype's dense peak (FP32 uses the FP32 peak even where
    the part has TF32: PyTorch does not use TF32 for matmul by default); the other, memory-bound
    kinds run on the vector units, so their FLOP roof is the FP32 peak (never above the dtype's).

    Size term: a matmul or attention whose ideal time at peak is ``t = flops / peak`` reaches
    efficiency ``eff_max * t / (t + t_half)``, so it takes ``(t + t_half) / eff_max``. Shape term: a
    matmul whose dimensions' harmonic mean is ``d`` takes ``1 + d_half / d`` times that (``d_half`` =
    ``matmul_half_efficiency_dim``, 0 = off); attention over sequences of ``s`` tokens takes
    ``1 + s_half / s`` times it (``attention_half_efficiency_seq``, 0 = off).
    """

    def __init__(self, cluster: ClusterSpec, dtype: DType) -> None:
        gpu, params = cluster.node.gpu, cluster.cost
        if dtype not in gpu.peak_tflops:
            have = ", ".join(d.value for d in gpu.peak_tflops)
            raise MoesimError(f"dtype: {gpu.name} has no {dtype.value} peak; it has {have}")
        self._cluster = cluster
        self._dtype = dtype
        self._params = params
        self._resources = ResourceMap.of(cluster)
        self._tensor_peak = gpu.peak_flops(dtype)
        vector_peak = gpu.peak_flops(DType.FP32) if DType.FP32 in gpu.peak_tflops else self._tensor_peak
        self._vector_peak = min(self._tensor_peak, vector_peak)
        self._hbm = gpu.hbm_bytes_per_s * params.hbm_efficiency
        self._launch = params.launch_overhead_s
        default_causal = 1.0 if gpu.device == "cpu" else 0.5
        self._causal_work = default_causal if params.causal_attention_work is None else params.causal_attention_work
        self._kind_flops = kind_table(params.kind_efficiency)
        self._kind_memory = kind_table(params.kind_memory_efficiency)
        self._cache: dict[tuple[object, ...], tuple[CommSpec, np.ndarray | None, CollectiveDemand]] = {}

    @property
    def cluster(self) -> ClusterSpec:
        return self._cluster

    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def resources(self) -> ResourceMap:
        return self._resources

    @property
    def num_ranks(self) -> int:
        return self._resources.num_ranks

    @property
    def capacities(self) -> np.ndarray:
        return self._resources.capacities

    @property
    def compute_slowdown(self) -> float:
        return self._params.compute_slowdown_under_comm

    @property
    def comm_slowdown(self) -> float:
        return self._params.comm_slowdown_under_compute

    @property
    def host(self) -> SpecHostCosts:
        return SpecHostCosts(self._params)

    def resource_name(self, resource: int) -> str:
        return self._resources.name(resource)

    def compute_time(self, op: Op, task: Task, rank: int) -> float:
        """Seconds ``task`` (its ``fraction`` of compute ``op``) takes on ``rank`` with no interference."""
        assert not op.kind.is_collective, f"{op.name} is a collective: cost it with collective_demand"
        if op.measured_s is not None:  # a traced op, on the device it ran on
            return op.measured_s[rank] * task.fraction_on(rank)
        flops = op.flops_on(rank) * task.fraction_on(rank)
        mem_bytes = op.mem_bytes_on(rank) * task.fraction_on(rank)
        params = self._params
        if op.kind in _TENSOR_KINDS:
            if op.kind is OpKind.ATTENTION and op.dims.get("causal"):
                flops *= self._causal_work  # the masked half a causal kernel may skip
            flop_time = self._flop_time(op.kind, flops)
            if params.matmul_half_efficiency_dim and op.kind is OpKind.MATMUL:
                flop_time *= 1.0 + params.matmul_half_efficiency_dim / matmul_shape_dim(op, task, rank)
            elif params.attention_half_efficiency_seq and op.kind is OpKind.ATTENTION and op.dims.get("s"):
                flop_time *= 1.0 + params.attention_half_efficiency_seq / op.dims["s"]
            return max(flop_time, mem_bytes / self._hbm) + self._launch
        flop_efficiency = _by_kind(self._kind_flops, op, params.other_compute_efficiency)
        memory_efficiency = _by_kind(self._kind_memory, op, 1.0)
        return max(flops / (self._vector_peak * flop_efficiency),
                   mem_bytes / (self._hbm * memory_efficiency)) + self._launch

    def collective_demand(self, op: Op, task: Task, groups: Sequence[int]) -> CollectiveDemand:
        """One coflow for ``op.comm.groups[i] for i in groups``; see ``collectives`` for each algorithm.

        Cached per (kind, groups, algorithm, what sets the bytes: the task's own traffic, else the comm spec
        and the fraction): specs and plans are immutable (ops rebuilt with new ids keep their CommSpec; parts
        of several ops may share a traffic array), and the cache holds the spec and traffic so their ids
        stay unique while cached.
        """
        assert op.kind.is_collective and op.comm is not None, f"{op.name} is not a collective"
        source = (id(op.comm), task.fraction) if task.traffic is None else (id(op.comm.groups), id(task.traffic))
        key = (op.kind, *source, tuple(groups), task.traffic is None, task.algorithm)
        hit = self._cache.get(key)
        if hit is not None:
            return hit[2]
        demand = self._demand(op, task, groups)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (op.comm, task.traffic, demand)  # keeps the ids in the key alive
        return demand

    def collective_time(self, op: Op, task: Task, groups: Sequence[int] | None = None) -> float:
        """Seconds the collective takes alone on an idle network: latency plus its bottleneck
        resource's volume over capacity (what a list scheduler inside a policy may use)."""
        assert op.comm is not None, f"{op.name} is not a collective"
        chosen = range(len(op.comm.groups)) if groups is None else groups
        return self.collective_demand(op, task, chosen).uncontended_s(self.capacities)

    def _flop_time(self, kind: OpKind, flops: float) -> float:
        if flops <= 0:
            return 0.0
        params = self._params
        eff_max = params.matmul_efficiency if kind is OpKind.MATMUL else params.attention_efficiency
        return (flops / self._tensor_peak + params.matmul_half_efficiency_s) / eff_max

    def _demand(self, op: Op, task: Task, groups: Sequence[int]) -> CollectiveDemand:
        assert op.comm is not None
        members = [op.comm.groups[i] for i in groups]
        params, res = self._params, self._resources
        if op.kind is OpKind.ALL_TO_ALL and task.algorithm is A2AAlgorithm.HIERARCHICAL:
            first, second = collectives.hierarchical_stages(members, self._traffic(op, task, groups), res)
            intra, inter = collectives.hierarchical_latencies(
                members, res, params.all_to_all_base_latency_s, params.all_to_all_peer_latency_s
            )
            ratio = params.all_to_all_bandwidth_ratio
            inter_stage = _demand_of(collectives.linear_all_to_all(members, second, res) / ratio, inter)
            return replace(_demand_of(collectives.linear_all_to_all(members, first, res) / ratio, intra),
                           then=inter_stage)
        if op.kind is OpKind.ALL_TO_ALL:
            volume = collectives.linear_all_to_all(members, self._traffic(op, task, groups), res)
            volume /= params.all_to_all_bandwidth_ratio
            latency = collectives.all_to_all_latency(
                members, res, params.all_to_all_base_latency_s, params.all_to_all_peer_latency_s
            )
        elif op.kind is OpKind.ALL_REDUCE:
            return self._all_reduce(op, task, members)[1]
        else:
            traversals = _RING_TRAVERSALS[op.kind]
            volume = collectives.ring(members, op.comm.bytes * task.fraction, traversals, res)
            latency = collectives.ring_latency(members, traversals, res, params.collective_base_latency_s)
        return _demand_of(volume, latency)

    def all_reduce_algorithm(self, op: Op, task: Task, groups: Sequence[int]) -> str:
        """"ring" or "tree": what ``cost.all_reduce_algorithm`` forces, else the faster alone (NCCL's tuner
        picks by its own time model the same way)."""
        assert op.comm is not None
        return self._all_reduce(op, task, [op.comm.groups[i] for i in groups])[0]

    def _all_reduce(self, op: Op, task: Task, members: Sequence[Sequence[int]]) -> tuple[str, CollectiveDemand]:
        """The algorithm (``all_reduce_algorithm``) and its demand; ``CostParams.all_reduce_algorithm`` has
        the tree's model."""
        demands = self._all_reduce_demands(op, task, members)
        forced = self._params.all_reduce_algorithm
        name = forced if forced != "auto" else min(
            demands, key=lambda n: (demands[n].uncontended_s(self.capacities), n))
        return name, demands[name]

    def _all_reduce_demands(self, op: Op, task: Task, members: Sequence[Sequence[int]]) -> dict[str, CollectiveDemand]:
        """The ring's and the tree's demand."""
        assert op.comm is not None
        params, res = self._params, self._resources
        payload = op.comm.bytes * task.fraction
        ring = _demand_of(collectives.ring(members, payload, 2, res),
                          collectives.ring_latency(members, 2, res, params.collective_base_latency_s))
        n = max(len(group) for group in members)
        if n < 2:
            return {"ring": ring, "tree": ring}
        # 2 x payload per rank against the ring's 2 (n - 1) / n, at the tree's share of the ring's rate
        tree_volume = collectives.ring(members, payload * n / (n - 1) / params.tree_bandwidth_factor, 2, res)
        tree = _demand_of(tree_volume, collectives.tree_latency(members, res, params.collective_base_latency_s))
        return {"ring": ring, "tree": tree}

    @staticmethod
    def _traffic(op: Op, task: Task, groups: Sequence[int]) -> list[np.ndarray]:
        """Each group's byte matrix: the task's own, else the op's scaled by the task's fraction,
        else uniform (every member sends ``bytes / g`` to each member, itself included)."""
        assert op.comm is not None
        if task.traffic is not None:
            return [task.traffic[i] for i in groups]
        if op.comm.traffic is not None:
            return [op.comm.traffic[i] * task.fraction for i in groups]
        sizes = [len(op.comm.groups[i]) for i in groups]
        return [np.full((g, g), op.comm.bytes * task.fraction / g) for g in sizes]


KindKey = tuple[OpKind, Phase | None]


def kind_table(entries: Mapping[str, float]) -> dict[KindKey, float]:
    """A spec's per-kind efficiencies (``"router:forward"``, ``"loss"``; validated by ``CostParams``) keyed by
    their enums: ``(OpKind.ROUTER, Phase.FORWARD)``, ``(OpKind.LOSS, None)``."""
    table: dict[KindKey, float] = {}
    for key, value in entries.items():
        kind, _, phase = key.partition(":")
        table[OpKind(kind), Phase(phase) if phase else None] = value
    return table


def _by_kind(table: Mapping[KindKey, float], op: Op, default: float) -> float:
    """The entry of the op's kind and phase, else of its kind, else ``default``."""
    found = table.get((op.kind, op.phase))
    return table.get((op.kind, None), default) if found is None else found


def matmul_shape_dim(op: Op, task: Task, rank: int) -> float:
    """The harmonic mean of a matmul task's m, n, k on ``rank``: the token dimension (k of a weight gradient,
    m otherwise) scaled by the task's share of the op, as the harness shapes its kernel. ``3 / (1/m + 1/n +
    1/k)`` is 1.5x the FLOP per operand element (``2 m n k / (m k + k n + m n)``), so a shape term over it
    charges each element of the operands a fixed time: a part of a matmul split along the tokens re-reads
    the whole weight. Inf when the op does not carry its dims (no shape term then)."""
    dims = op.dims
    if not all(name in dims for name in ("m", "n", "k")):
        return float("inf")
    scale = op.rank_scale[rank] if op.rank_scale is not None else 1.0
    token = "k" if op.phase is Phase.BACKWARD_WEIGHT else "m"
    sizes = [dims[name] * (task.fraction_on(rank) * scale if name == token else 1.0) for name in ("m", "n", "k")]
    return 3.0 / sum(1.0 / max(1.0, size) for size in sizes)


def _demand_of(volume: np.ndarray, latency_s: float) -> CollectiveDemand:
    """A one-stage demand from a per-resource volume vector (only the resources it loads)."""
    used = np.flatnonzero(volume > 0)
    return CollectiveDemand(latency_s=latency_s, resources=used.astype(np.int64), volume=volume[used])
