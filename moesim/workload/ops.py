"""The op graph of one training iteration: the vocabulary shared by builder, cost model and harness.

An ``OpGraph`` is an SPMD program: every rank executes every op. Where ranks differ (uneven
routing), the op says so per rank (``rank_scale`` for compute, ``CommSpec.traffic`` for
all-to-all bytes); otherwise one number serves all ranks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from moesim.dtypes import DType
from moesim.errors import MoesimError

if TYPE_CHECKING:
    from moesim.workload.facts import GraphFacts


class OpKind(StrEnum):
    MATMUL = "matmul"          # dims: m, n, k (and optional "batch" for batched matmuls)
    ATTENTION = "attention"    # dims: b, heads, s, head_dim (scores, softmax, weighted sum)
    LAYERNORM = "layernorm"    # dims: tokens, hidden
    ELEMENTWISE = "elementwise"  # dims: numel (activation, residual add, scaling)
    SOFTMAX = "softmax"        # dims: rows, cols
    ROUTER = "router"          # dims: tokens, experts, top_k (softmax + top-k + capacity assignment)
    PERMUTE = "permute"        # dims: tokens, hidden (scatter / gather of token rows)
    EMBEDDING = "embedding"    # dims: tokens, hidden, vocab
    LOSS = "loss"              # dims: tokens, vocab
    OPTIMIZER = "optimizer"    # dims: params
    COPY = "copy"              # dims: numel (a framework's gradient copies and fills: memory-bound)
    ALL_TO_ALL = "all_to_all"
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"

    @property
    def is_collective(self) -> bool:
        return self in _COLLECTIVES


_COLLECTIVES = frozenset({OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE, OpKind.ALL_GATHER, OpKind.REDUCE_SCATTER})


class Role(StrEnum):
    """The block op an op comes from, forward and backward (the builder, the harness's kernels and the
    validation report share these names)."""

    EMBED = "embed"
    LN1 = "ln1"
    QKV = "qkv"
    Q_DOWN = "q_down"          # MLA: the query's low-rank down-projection
    Q_UP = "q_up"
    Q_PROJ = "q_proj"          # MLA without a query down-projection
    KV_DOWN = "kv_down"        # MLA: the key/value latent
    KV_UP = "kv_up"
    ATTENTION = "attention"
    ATTN_OUT = "attn_out"
    ATTN_RESIDUAL = "attn_residual"
    XATTN_LN = "xattn_ln"      # cross-attention (decoder of an encoder-decoder)
    XATTN_Q = "xattn_q"
    XATTN_KV = "xattn_kv"
    XATTN = "xattn"
    XATTN_OUT = "xattn_out"
    XATTN_RESIDUAL = "xattn_residual"
    LN2 = "ln2"
    FC1 = "fc1"                # dense MLP
    ACT = "act"
    FC2 = "fc2"
    ROUTER = "router"
    PERMUTE = "permute"
    DISPATCH = "dispatch"
    SHARED_FC1 = "shared_fc1"  # shared experts
    SHARED_ACT = "shared_act"
    SHARED_FC2 = "shared_fc2"
    EXPERT_FC1 = "expert_fc1"
    EXPERT_ACT = "expert_act"
    EXPERT_FC2 = "expert_fc2"
    COMBINE = "combine"
    UNPERMUTE = "unpermute"
    RESIDUAL = "residual"
    LN_F = "ln_f"
    LM_HEAD = "lm_head"
    LOSS = "loss"
    GRAD_SYNC = "grad_sync"
    GRAD_COPY = "grad_copy"    # DDP copies a bucket's gradients into its flat buffer and back
    OPTIMIZER = "optimizer"

    @property
    def is_residual(self) -> bool:
        """A residual add (as opposed to an activation among the elementwise ops)."""
        return self in (Role.ATTN_RESIDUAL, Role.XATTN_RESIDUAL, Role.RESIDUAL)


class Phase(StrEnum):
    FORWARD = "forward"
    BACKWARD_INPUT = "backward_input"    # dX: what backpropagation needs to continue
    BACKWARD_WEIGHT = "backward_weight"  # dW: free to move until the gradient all-reduce needs it
    GRAD_SYNC = "grad_sync"              # data-parallel gradient all-reduce buckets
    OPTIMIZER = "optimizer"


class Axis(StrEnum):
    """Dimensions along which a schedule may split an op into parts.

    ``SEQUENCE`` cuts each sequence into consecutive token spans. A token-wise op splits along it as along
    the batch; a causal attention splits along it only causally (the part holding a span reads the keys
    and values of that span and of every earlier one); a bidirectional or cross attention does not.
    """

    BATCH = "batch"
    SEQUENCE = "sequence"
    CAPACITY = "capacity"


class A2AAlgorithm(StrEnum):
    """How an all-to-all moves its bytes (Tutel App. A)."""

    LINEAR = "linear"      # every rank sends straight to every peer
    HIERARCHICAL = "2dh"   # Tutel's 2DH: intra-node exchange to the peer of the right local index, then
                           # an inter-node exchange among ranks of the same local index


@dataclass(frozen=True, slots=True, eq=False)
class CommSpec:
    """What a collective moves.

    ``groups`` are the disjoint groups of global ranks that each run this collective (for an
    all-to-all, the expert-parallel groups; for a gradient all-reduce, the data-parallel groups
    of those parameters). Every rank is in at most one group.

    ``bytes`` is the per-rank payload: the buffer size for all-reduce / all-gather /
    reduce-scatter, the total a rank sends (itself included) for all-to-all.

    ``traffic`` (all-to-all only) has shape ``(len(groups), g, g)``: ``traffic[i, a, b]`` bytes go
    from member ``a`` to member ``b`` of group ``i`` (diagonal = a rank's own tokens, no network).
    """

    groups: tuple[tuple[int, ...], ...]
    bytes: float
    traffic: np.ndarray | None = None

    def group_of(self, rank: int) -> int:
        for index, group in enumerate(self.groups):
            if rank in group:
                return index
        raise KeyError(f"rank {rank} is in no group of this collective")


@dataclass(frozen=True, slots=True, eq=False)
class Op:
    """One node of the iteration's DAG.

    ``flops`` and ``mem_bytes`` (HBM bytes read + written, for the roofline) are per rank; where
    ranks differ, rank ``r`` does ``flops * rank_scale[r]``. ``param_bytes`` is the size of the
    gradient a dW op produces (0 elsewhere); gradient buckets are built from it. ``dims`` are the
    named sizes the harness needs to run a real kernel of the same shape (see ``OpKind``).
    ``measured_s`` (a traced workload's ops, on the device it was traced on) replaces the cost model's
    compute time: a part of the op takes its fraction of it.
    """

    id: int
    name: str                  # unique, e.g. "L3.expert_fc1", "L3.expert_fc1.dx", "L3.expert_fc1.dw"
    role: Role | None          # the block op it comes from; None for a synthetic op (a microbenchmark's)
    kind: OpKind
    phase: Phase
    layer: int | None          # block index; None for ops outside the blocks (embed, optimizer, ...)
    flops: float = 0.0
    mem_bytes: float = 0.0
    deps: tuple[int, ...] = ()
    dims: Mapping[str, int] = field(default_factory=dict)
    axes: frozenset[Axis] = frozenset()
    comm: CommSpec | None = None
    rank_scale: tuple[float, ...] | None = None
    param_bytes: float = 0.0
    expert: bool = False       # belongs to expert (not dense) parameters / compute
    measured_s: tuple[float, ...] | None = None  # per rank: a traced run's time for the whole op

    def flops_on(self, rank: int) -> float:
        return self.flops * (self.rank_scale[rank] if self.rank_scale is not None else 1.0)

    def mem_bytes_on(self, rank: int) -> float:
        return self.mem_bytes * (self.rank_scale[rank] if self.rank_scale is not None else 1.0)


@dataclass(frozen=True, slots=True, eq=False)
class OpGraph:
    """A DAG of ops in a valid program order (every op's deps come before it), trained in ``dtype``;
    ``facts`` describe the workload it was built from (None for graphs built by hand)."""

    ops: tuple[Op, ...]
    num_ranks: int
    num_layers: int
    moe_layers: tuple[int, ...]
    dtype: DType = DType.FP32
    facts: GraphFacts | None = None

    def __post_init__(self) -> None:
        for op in self.ops:
            assert all(dep < op.id for dep in op.deps), f"{op.name} depends on a later op"

    def __len__(self) -> int:
        return len(self.ops)

    def require_facts(self, who: str) -> GraphFacts:
        """``facts``, for ``who`` (a policy or analysis reading the workload); MoesimError if there are none."""
        if self.facts is None:
            raise MoesimError(f"{who} needs a graph built from a workload (build_graph); this one has no facts")
        return self.facts

    def by_name(self, name: str) -> Op:
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def in_layer(self, layer: int) -> Sequence[Op]:
        return [op for op in self.ops if op.layer == layer]

    @property
    def rank_symmetric(self) -> bool:
        """True when every rank runs exactly the same work (uniform routing, one rank's numbers serve all;
        measured op times the same on every rank)."""
        matrices = {}  # uniform layers share one traffic array: look at each once
        for op in self.ops:
            if op.rank_scale is not None and len(set(op.rank_scale)) > 1:
                return False
            if op.measured_s is not None and len(set(op.measured_s)) > 1:
                return False
            if op.comm is not None and op.comm.traffic is not None:
                matrices[id(op.comm.traffic)] = op.comm.traffic
        return all(uniform_traffic(traffic) for traffic in matrices.values())


def uniform_traffic(traffic: np.ndarray) -> bool:
    """Every group's matrix has one value off the diagonal and one on it (a uniform all-to-all), up to
    ``np.isclose``'s tolerances."""
    g = traffic.shape[1]
    if g == 1:
        return True
    diagonal = np.arange(g)
    diag = traffic[:, diagonal, diagonal]
    if not _all_close(diag, diag.flat[0]):
        return False
    off = traffic.copy()
    off[:, diagonal, diagonal] = off[0, 0, 1]  # the diagonal takes an off-diagonal value: check the rest
    return _all_close(off, off.flat[1])


def _all_close(values: np.ndarray, target: float) -> bool:
    """``np.allclose(values, target)`` from the extremes: every value lies within the tolerance of it."""
    tolerance = 1e-8 + 1e-5 * abs(target)
    return bool(abs(values.max() - target) <= tolerance and abs(values.min() - target) <= tolerance)
