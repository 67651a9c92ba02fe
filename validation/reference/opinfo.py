"""What the attribution needs to know about a forward label of the reference model (torch-free).

The reference model builds one ``OpInfo`` per label from its parameters (``ReferenceModel.ops``); an
importer of profiles without the model derives the same from moesim's op graph (``ops_of``).
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.workload.builder import build_graph
from moesim.workload.config import Workload
from moesim.workload.ops import OpGraph, OpKind, Phase


@dataclass(frozen=True, slots=True)
class OpInfo:
    """What a forward label's backward looks like: its parameters' shapes, whether it is matmuls (split
    into dX and dW by their shapes) and whether one fused kernel computes its dX and dW together."""

    weight_shapes: tuple[tuple[int, ...], ...] = ()
    matmul: bool = False
    fused_backward: bool = False


def dense_buckets(graph: OpGraph) -> tuple[tuple[str, int], ...]:
    """The graph's dense gradient buckets as (all-reduce name, gradient elements), in fill order: DDP's."""
    return tuple((op.name, op.dims["numel"]) for op in graph.ops if op.kind is OpKind.ALL_REDUCE and not op.expert)


def ops_of(workload: Workload, graph: OpGraph | None = None) -> dict[str, OpInfo]:
    """The ``OpInfo`` of every forward op of ``workload``'s graph (``build_graph``), as the reference model
    builds it: a matmul's weight is ``[k, n]`` (``[batch, k, n]`` for the local experts; a tied lm_head
    reads the ``[vocab, hidden]`` table), the router's ``[hidden, experts]``, a LayerNorm's gamma and beta
    ``[hidden]`` (one fused backward), the embedding's table ``[vocab, hidden]`` (and
    ``[learned_positions, hidden]``); every other op, the all-to-alls included, has no weight. ``graph``:
    ``workload``'s graph, if the caller has built it."""
    model = workload.model
    infos: dict[str, OpInfo] = {}
    for op in (graph or build_graph(workload, measured=False)).ops:
        if op.phase is not Phase.FORWARD:
            continue
        dims = op.dims
        match op.kind:
            case OpKind.MATMUL if op.name == "lm_head" and model.tie_embeddings:
                infos[op.name] = OpInfo(((model.vocab_size, model.hidden),), matmul=True)
            case OpKind.MATMUL:
                shape = (dims["k"], dims["n"]) if "batch" not in dims else (dims["batch"], dims["k"], dims["n"])
                infos[op.name] = OpInfo((shape,), matmul=True)
            case OpKind.ROUTER:
                infos[op.name] = OpInfo(((dims["hidden"], dims["experts"]),), matmul=True)
            case OpKind.LAYERNORM:
                infos[op.name] = OpInfo(((dims["hidden"],), (dims["hidden"],)), fused_backward=True)
            case OpKind.EMBEDDING:
                tables = [(dims["vocab"], dims["hidden"])]
                if model.learned_positions:
                    tables.append((model.learned_positions, dims["hidden"]))
                infos[op.name] = OpInfo(tuple(tables))
            case _:
                infos[op.name] = OpInfo()
    return infos
