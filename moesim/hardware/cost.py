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
            inter_stage = self._demand_of(collectives.linear_all_to_all(members, second, res) / ratio, inter,
                                          self._message(second), across=True)
            return replace(self._demand_of(collectives.linear_all_to_all(members, first, res) / ratio, intra,
                                           self._message(first), across=False), then=inter_stage)
        if op.kind is OpKind.ALL_TO_ALL:
            traffic = self._traffic(op, task, groups)
            volume = collectives.linear_all_to_all(members, traffic, res)
            volume /= params.all_to_all_bandwidth_ratio
            latency = collectives.all_to_all_latency(
                members, res, params.all_to_all_base_latency_s, params.all_to_all_peer_latency_s
            )
            return self._demand_of(volume, latency, self._message(traffic), self._across(members))
        if op.kind is OpKind.ALL_REDUCE:
            return self._all_reduce(op, task, members)[1]
        traversals = _RING_TRAVERSALS[op.kind]
        payload = op.comm.bytes * task.fraction
        volume = collectives.ring(members, payload, traversals, res)
        latency = collectives.ring_latency(members, traversals, res, params.collective_base_latency_s)
        return self._demand_of(volume, latency, payload / max(len(group) for group in members), self._across(members))

    def all_reduce_algorithm(self, op: Op, task: Task, groups: Sequence[int]) -> str:
        """"ring", "tree", "nvls" or "nvls_tree": what ``cost.all_reduce_algorithm`` forces, else the fastest
        alone (NCCL's tuner picks by its own time model the same way)."""
        return self.all_reduce_choice(op, task, groups)[0]

    def all_reduce_choice(self, op: Op, task: Task, groups: Sequence[int]) -> tuple[str, CollectiveDemand]:
        """The algorithm ``all_reduce_algorithm`` names and its demand, priced once."""
        assert op.comm is not None
        return self._all_reduce(op, task, [op.comm.groups[i] for i in groups])

    def _all_reduce(self, op: Op, task: Task, members: Sequence[Sequence[int]]) -> tuple[str, CollectiveDemand]:
        """The algorithm (``all_reduce_algorithm``) and its demand; ``CostParams.all_reduce_algorithm`` has
        the tree's model."""
        demands = self._all_reduce_demands(op, task, members)
        forced: str = self._params.all_reduce_algorithm
        if forced == "nvls" and "nvls_tree" in demands:
            forced = "nvls_tree"
        name = forced if forced in demands else min(
            demands, key=lambda n: (demands[n].uncontended_s(self.capacities), n))
        return name, demands[name]

    def _all_reduce_demands(self, op: Op, task: Task, members: Sequence[Sequence[int]]) -> dict[str, CollectiveDemand]:
        """The ring's and the tree's demand and, where the fabric has NVLS, NVLS's (each group on one node) or
        NVLSTree's (a group across nodes)."""
        assert op.comm is not None
        params, res = self._params, self._resources
        payload = op.comm.bytes * task.fraction
        n = max(len(group) for group in members)
        message, across = payload / n, self._across(members)
        ring = self._demand_of(collectives.ring(members, payload, 2, res),
                               collectives.ring_latency(members, 2, res, params.collective_base_latency_s), message,
                               across)
        if n < 2:
            return {"ring": ring, "tree": ring}
        tree_volume = collectives.tree(members, payload / params.tree_bandwidth_factor, res)
        tree_latency = collectives.tree_latency(members, res, params.collective_base_latency_s)
        tree = self._demand_of(tree_volume, tree_latency, message, across)
        if not self._cluster.node.intra.nvls:
            return {"ring": ring, "tree": tree}
        nvls_volume = collectives.nvls(members, payload / params.nvls_bandwidth_factor, res)
        if not across:
            return {"ring": ring, "tree": tree,
                    "nvls": self._demand_of(nvls_volume, params.collective_base_latency_s + 2 * res.intra_latency_s,
                                            message, across)}
        nvls_volume[2 * res.num_ranks:] = tree_volume[2 * res.num_ranks:]  # NVLSTree: the tree between nodes
        return {"ring": ring, "tree": tree, "nvls_tree": self._demand_of(nvls_volume, tree_latency, message, across)}

    def _across(self, members: Sequence[Sequence[int]]) -> bool:
        """Whether a group spans nodes."""
        node = self._resources.node
        return any(len(group) > 1 and bool(np.any(node[list(group)] != node[group[0]])) for group in members)

    def _message(self, traffic: Sequence[np.ndarray]) -> float:
        """An all-to-all's mean message where the small-message term needs it (0 otherwise: not computed)."""
        params = self._params
        return _mean_message(traffic) if params.half_rate_kib(False) or params.half_rate_kib(True) else 0.0

    def _demand_of(self, volume: np.ndarray, latency_s: float, message: float, across: bool) -> CollectiveDemand:
        """A one-stage demand from a per-resource volume vector (only the resources it loads), the volume
        stretched by the small-message term (``CostParams.collective_half_rate_kib``, or its network one for a
        collective ``across`` nodes) for ``message`` bytes."""
        used = np.flatnonzero(volume > 0)
        stretch = self._params.message_stretch(message, across)
        return CollectiveDemand(latency_s=latency_s, resources=used.astype(np.int64), volume=volume[used] * stretch)

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


def _mean_message(traffic: Sequence[np.ndarray]) -> float:
    """The mean message of an all-to-all: its bytes between distinct members over the pairs that send any."""
    sent = [matrix * ~np.eye(matrix.shape[0], dtype=bool) for matrix in traffic]
    pairs = sum(int(np.count_nonzero(m)) for m in sent)
    return sum(float(m.sum()) for m in sent) / pairs if pairs else 0.0
