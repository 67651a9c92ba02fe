"""DDP's bucket rebuild: gradient buckets re-formed in the order gradients become ready.

PyTorch DDP fills its buckets in the order gradients were ready in the first iteration (it rebuilds
them once), so a schedule that moves weight-gradient ops (Lancet's dW scheduling) also changes which
gradients travel together. ``rebucket`` returns the same iteration with its buckets rebuilt for a
given execution order; every other op is unchanged but for its id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from moesim.dtypes import DType
from moesim.workload.ops import CommSpec, Op, OpGraph, OpKind, Phase


def rebucket(graph: OpGraph, ready: Sequence[int]) -> tuple[OpGraph, dict[int, int]]:
    """``graph`` with buckets of ``graph.meta["grad_bucket_bytes"]`` filled in ``ready`` order (op ids in
    the order they will run). Returns the new graph and the new id of every op that is not a bucket.

    A bucket is placed in program order right after its member that comes last there; the optimizer
    stays last and depends on every dW op and every bucket. Graphs without buckets are returned as they are.
    """
    buckets = [op for op in graph.ops if op.phase is Phase.GRAD_SYNC]
    if not buckets:
        return graph, {op.id: op.id for op in graph.ops}
    groups = {op.expert: op.comm.groups for op in buckets if op.comm is not None}
    grouped = _fill(graph, ready, float(graph.meta["grad_bucket_bytes"]), groups)  # type: ignore[arg-type]

    grad_bytes = DType(str(graph.meta["dtype"])).grad_bytes
    kept = [op for op in graph.ops if op.phase not in (Phase.GRAD_SYNC, Phase.OPTIMIZER)]
    after: dict[int, list[tuple[str, bool, list[int]]]] = {}
    count = {False: 0, True: 0}
    for expert, members in grouped:  # named in fill order, as DDP numbers its buckets
        name = f"grad_sync.{'expert' if expert else 'dense'}.{count[expert]}"
        count[expert] += 1
        after.setdefault(max(members), []).append((name, expert, members))
    ops: list[Op] = []
    new_id: dict[int, int] = {}
    for op in kept:
        new_id[op.id] = len(ops)
        ops.append(replace(op, id=len(ops), deps=tuple(new_id[d] for d in op.deps)))
        for name, expert, members in after.get(op.id, []):
            size = sum(graph.ops[m].param_bytes for m in members)
            ops.append(Op(id=len(ops), name=name, role="grad_sync", kind=OpKind.ALL_REDUCE, phase=Phase.GRAD_SYNC,
                          layer=None, deps=tuple(new_id[m] for m in members), dims={"numel": round(size / grad_bytes)},
                          comm=CommSpec(groups=groups[expert], bytes=size), expert=expert))
    optimizer = next(op for op in graph.ops if op.phase is Phase.OPTIMIZER)
    weight = tuple(op.id for op in ops if op.phase in (Phase.BACKWARD_WEIGHT, Phase.GRAD_SYNC))
    new_id[optimizer.id] = len(ops)
    ops.append(replace(optimizer, id=len(ops), deps=weight))
    rebuilt = OpGraph(ops=tuple(ops), num_ranks=graph.num_ranks, num_layers=graph.num_layers,
                      moe_layers=graph.moe_layers, meta=graph.meta)
    return rebuilt, new_id


def _fill(graph: OpGraph, ready: Sequence[int], cap: float,
          groups: dict[bool, tuple[tuple[int, ...], ...]]) -> list[tuple[bool, list[int]]]:
    """DDP's rule: add gradients in ready order; close a bucket once it reaches the cap."""
    open_: dict[bool, list[int]] = {False: [], True: []}
    size = {False: 0.0, True: 0.0}
    closed: list[tuple[bool, list[int]]] = []
    for op_id in ready:
        op = graph.ops[op_id]
        if op.phase is not Phase.BACKWARD_WEIGHT or op.param_bytes <= 0 or op.expert not in groups:
            continue
        open_[op.expert].append(op_id)
        size[op.expert] += op.param_bytes
        if size[op.expert] >= cap:
            closed.append((op.expert, open_[op.expert]))
            open_[op.expert], size[op.expert] = [], 0.0
    closed += [(expert, members) for expert, members in open_.items() if members]
    return closed

