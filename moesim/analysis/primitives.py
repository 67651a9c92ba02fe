"""Predicted times of one collective or one kernel, to put beside nccl-tests or a GEMM benchmark.

Collectives follow nccl-tests' conventions (its doc/PERFORMANCE.md): ``size`` is the per-rank buffer
(all-reduce: the buffer; all-gather: the gathered output; reduce-scatter: the input; all-to-all: a rank's
whole send buffer, an even share to every rank, itself included), ``algbw = size / time`` and ``busbw =
algbw x factor`` with factor ``2 (n - 1) / n`` for all-reduce and ``(n - 1) / n`` for the other three, n the
ranks in the collective. Bandwidths are in GB/s (1e9 bytes per second), as nccl-tests prints them. The time
is the cost model's for the collective alone on an idle cluster (``RooflineCostModel.collective_time``):
every GPU of ``cluster`` in one group.

Kernels: a GEMM ``m x k @ k x n`` (2 m n k FLOP) and a forward attention call over ``[batch, heads, seq,
head_dim]`` (4 batch heads seq^2 head_dim FLOP, the full square even when causal: the convention of
``moesim.workload.blocks``), timed by ``RooflineCostModel.compute_time`` with no interference.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from moesim.dtypes import DType
from moesim.errors import MoesimError
from moesim.hardware import ClusterSpec, RooflineCostModel
from moesim.plan import StreamKind, Task
from moesim.workload.ops import A2AAlgorithm, CommSpec, Op, OpKind, Phase, Role

COLLECTIVES = (OpKind.ALL_REDUCE, OpKind.ALL_TO_ALL, OpKind.ALL_GATHER, OpKind.REDUCE_SCATTER)
MAX_BYTES = 1 << 40     # 1 TiB: larger than any per-rank buffer a GPU holds
MAX_SIZES = 64          # sizes in one call (8 B to 1 TiB doubling is 38)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_KEY = "--bytes"


@dataclass(frozen=True, slots=True)
class CollectiveRow:
    """One message size: its predicted time and nccl-tests' bandwidths."""

    bytes: int
    time_us: float
    algbw_gb_s: float
    busbw_gb_s: float
    algorithm: str          # ring, tree, nvls, nvls_tree (all-reduce), linear or 2dh (all-to-all)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class KernelRow:
    """One kernel: its FLOP, bytes, predicted time and achieved rate."""

    kind: str
    shape: dict[str, int]
    dtype: str
    flops: float
    bytes: float
    time_us: float
    tflops: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def parse_sizes(text: str) -> list[int]:
    """``"8:1G"`` (doubling from 8 bytes to 1 GiB, nccl-tests' ``-b 8 -e 1G -f 2``) or a comma list
    (``"1M,64M,1G"``); units K, M, G, T are powers of 1024. MoesimError names what is wrong."""
    if ":" in text:
        first, _, last = text.partition(":")
        low, high = _size(first), _size(last)
        if low > high:
            raise MoesimError(f"{_KEY}: the range {text!r} starts above its end")
        sizes = [low]
        while sizes[-1] * 2 <= high:
            sizes.append(sizes[-1] * 2)
    else:
        sizes = [_size(part) for part in text.split(",")]
    if len(sizes) > MAX_SIZES:
        raise MoesimError(f"{_KEY}: {len(sizes)} sizes; at most {MAX_SIZES} in one call")
    return sizes


def _size(text: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise MoesimError(f"{_KEY}: {text.strip()!r} is not a size; allowed: a number of bytes with an optional "
                          "unit K, M, G or T (powers of 1024), e.g. 8, 64K, 1G")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not 1 <= value <= MAX_BYTES:
        raise MoesimError(f"{_KEY}: {text.strip()!r} is out of range; allowed: 1 B to 1 TiB")
    return int(value)


def bus_factor(kind: OpKind, ranks: int) -> float:
    """nccl-tests' busbw / algbw for ``kind`` over ``ranks`` ranks."""
    share = (ranks - 1) / ranks
    return 2 * share if kind is OpKind.ALL_REDUCE else share


ALGORITHMS = {OpKind.ALL_REDUCE: ("auto", "ring", "tree", "nvls"), OpKind.ALL_TO_ALL: ("linear", "2dh"),
              OpKind.ALL_GATHER: ("ring",), OpKind.REDUCE_SCATTER: ("ring",)}


def resolve_algorithm(cluster: ClusterSpec, kind: OpKind, algorithm: str | None) -> str:
    """``algorithm`` if ``kind`` runs as it (MoesimError otherwise); None: the cluster's
    ``cost.all_reduce_algorithm`` for an all-reduce, the first of ``ALGORITHMS`` for the others."""
    allowed = ALGORITHMS[kind]
    if kind is OpKind.ALL_REDUCE and not cluster.node.intra.nvls:
        allowed = tuple(name for name in allowed if name != "nvls")
    configured = cluster.cost.all_reduce_algorithm if kind is OpKind.ALL_REDUCE else allowed[0]
    chosen = configured if algorithm is None else algorithm
    if chosen not in allowed:
        raise MoesimError(f"--algorithm {chosen!r}: {kind.value} runs as {', '.join(allowed)}")
    return chosen


def collective_rows(cluster: ClusterSpec, kind: OpKind, sizes: list[int], algorithm: str | None = None, *,
                    gpus_per_node: int | None = None) -> list[CollectiveRow]:
    """Each size's predicted time and bandwidths for ``kind`` over the first ``gpus_per_node`` GPUs (default:
    all) of every node of ``cluster`` (see the module docstring). ``algorithm`` (``ALGORITHMS``; None: the
    cluster's ``cost.all_reduce_algorithm`` for an all-reduce, linear for an all-to-all) forces one: an
    all-reduce's ``auto`` takes the fastest of ring, tree and NVLS at each size, as a simulation does."""
    if kind not in COLLECTIVES:
        raise MoesimError(f"kind: {kind.value!r} is not a collective; allowed: "
                          f"{', '.join(k.value for k in COLLECTIVES)}")
    per_node = cluster.node.gpus_per_node if gpus_per_node is None else gpus_per_node
    if not 1 <= per_node <= cluster.node.gpus_per_node:
        raise MoesimError(f"gpus per node: {per_node}; {cluster.node.name} has 1 to {cluster.node.gpus_per_node}")
    members = tuple(node * cluster.node.gpus_per_node + i for node in range(cluster.num_nodes) for i in range(per_node))
    ranks = len(members)
    if ranks < 2:
        raise MoesimError(f"nodes: a collective needs at least 2 GPUs; {cluster.node.name} x "
                          f"{cluster.num_nodes} has {ranks}")
    chosen = resolve_algorithm(cluster, kind, algorithm)
    if kind is OpKind.ALL_REDUCE and chosen != cluster.cost.all_reduce_algorithm:
        cluster = cluster.with_cost(cluster.cost.model_copy(update={"all_reduce_algorithm": chosen}))
    cost = RooflineCostModel(cluster, _any_dtype(cluster))
    group = (members,)
    a2a = A2AAlgorithm.HIERARCHICAL if chosen == "2dh" else A2AAlgorithm.LINEAR
    task = Task(id=0, op=0, stream=StreamKind.COMM, algorithm=a2a)
    factor = bus_factor(kind, ranks)
    rows = []
    for size in sizes:
        op = Op(id=0, name=kind.value, role=Role.GRAD_SYNC, kind=kind, phase=Phase.GRAD_SYNC, layer=None,
                comm=CommSpec(groups=group, bytes=float(size)))
        if kind is OpKind.ALL_REDUCE:
            ran, demand = cost.all_reduce_choice(op, task, (0,))
            seconds = demand.uncontended_s(cost.capacities)
        else:
            ran, seconds = chosen, cost.collective_time(op, task)
        algbw = size / seconds / 1e9 if seconds > 0 else float("inf")
        rows.append(CollectiveRow(bytes=size, time_us=seconds * 1e6, algbw_gb_s=algbw, busbw_gb_s=algbw * factor,
                                  algorithm=ran))
    return rows


def gemm_row(cluster: ClusterSpec, dtype: DType, m: int, n: int, k: int) -> KernelRow:
    """A ``m x k @ k x n`` GEMM in ``dtype`` on one GPU of ``cluster``."""
    _positive(m=m, n=n, k=k)
    flops = 2.0 * m * n * k
    mem = float(m * k + k * n + m * n) * dtype.bytes
    op = Op(id=0, name="gemm", role=Role.FC1, kind=OpKind.MATMUL, phase=Phase.FORWARD, layer=None, flops=flops,
            mem_bytes=mem, dims={"m": m, "n": n, "k": k})
    return _kernel_row(cluster, dtype, op, "gemm", {"m": m, "n": n, "k": k})


def attention_row(cluster: ClusterSpec, dtype: DType, batch: int, heads: int, seq: int, head_dim: int,
                  causal: bool = False) -> KernelRow:
    """A forward attention call over ``[batch, heads, seq, head_dim]`` in ``dtype`` on one GPU of ``cluster``;
    ``causal`` costs it as ``cost.causal_attention_work`` of the full square (its FLOPs stay the square's)."""
    _positive(batch=batch, heads=heads, seq=seq, head_dim=head_dim)
    flops = 4.0 * batch * heads * seq * seq * head_dim
    mem = 4.0 * batch * heads * seq * head_dim * dtype.bytes  # q, k, v read, output written
    dims = {"b": batch, "heads": heads, "s": seq, "head_dim": head_dim, **({"causal": 1} if causal else {})}
    op = Op(id=0, name="attention", role=Role.ATTENTION, kind=OpKind.ATTENTION, phase=Phase.FORWARD, layer=None,
            flops=flops, mem_bytes=mem, dims=dims)
    return _kernel_row(cluster, dtype, op, "attention", {"batch": batch, "heads": heads, "seq": seq,
                                                          "head_dim": head_dim, "causal": int(causal)})


def _kernel_row(cluster: ClusterSpec, dtype: DType, op: Op, kind: str, shape: dict[str, int]) -> KernelRow:
    seconds = RooflineCostModel(cluster, dtype).compute_time(op, Task(id=0, op=0, stream=StreamKind.COMPUTE), 0)
    return KernelRow(kind=kind, shape=shape, dtype=dtype.value, flops=op.flops, bytes=op.mem_bytes,
                     time_us=seconds * 1e6, tflops=op.flops / seconds / 1e12)


def _positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not 1 <= value <= 1 << 24:
            raise MoesimError(f"{name}: {value} is out of range; allowed: 1 to {1 << 24}")


def _any_dtype(cluster: ClusterSpec) -> DType:
    """A dtype the GPU has a peak for: a collective's time does not depend on it, the cost model needs one."""
    return next(iter(cluster.node.gpu.peak_tflops))
