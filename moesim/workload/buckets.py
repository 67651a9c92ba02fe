"""DDP's gradient buckets: filled in the order gradients become ready, all-reduced once full.

PyTorch DDP puts gradients into buckets of ``grad_bucket_mb`` in the order they became ready in the
first iteration (it rebuilds them once) and launches bucket i's all-reduce once buckets 0..i are full,
so buckets travel in the order they fill. Dense and expert parameters fill separate buckets (expert
parameters are all-reduced over their expert-data-parallel group, as DeepSpeed-MoE and Tutel do);
nothing is all-reduced across a group of one.

DDP's reducer also copies: each gradient into its bucket's flat buffer, scaled by 1 / group size (one
``mul`` into the buffer, ``grad_sync.<kind>.<i>.copy_in``, before the bucket's all-reduce), and once the
backward pass is done, the reduced buffer back into the gradients (``copy_out``) unless the gradients
are views of the buffer (``gradient_as_bucket_view``, ``training.ddp_bucket_view``). With
``zero_grad(set_to_none=True)`` (PyTorch's default, the only one modelled) autograd makes every gradient
afresh, so the copy in is there even with bucket views. Expert buckets follow the same rule (DeepSpeed-
MoE and the reference model flatten the expert gradients into one buffer too). The graph carries one
copy op per bucket and way: a bucket's copies in run on the compute stream once its last gradient is
there (DDP copies each as it comes; the bytes are the same), its copy out after its all-reduce, at the
end of backward, before the optimizer. ``BucketFiller`` is the bucket rule and ``rebucket`` applies it
to the order a schedule runs the gradients in (the graph builder's is program order). Lancet's dW pass
weighs many orders with the same rule applied to sizes alone (``schedules/lancet_clock.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from moesim.workload.ops import CommSpec, Op, OpGraph, OpKind, Phase, Role

Groups = tuple[tuple[int, ...], ...]


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """How gradients are bucketed: the cap and, per kind (expert or dense), the groups that all-reduce
    them; a kind without groups (a data-parallel group of one) is not synchronised."""

    cap_bytes: float
    grad_bytes: int                 # bytes per gradient element
    groups: Mapping[bool, Groups]   # expert? -> data-parallel groups
    bucket_view: bool = False       # gradients are views of the buckets: no copy out

    def synced(self, op: Op) -> bool:
        """Whether ``op`` produces a gradient that a bucket carries."""
        return op.phase is Phase.BACKWARD_WEIGHT and op.param_bytes > 0 and op.expert in self.groups


@dataclass(frozen=True, slots=True)
class Bucket:
    """One filled bucket: its kind, its gradients (op ids, in fill order) and its size."""

    expert: bool
    members: tuple[int, ...]
    bytes: float


@dataclass(slots=True)
class BucketFiller:
    """DDP's rule, one gradient at a time: ``add`` puts a gradient into the open bucket of its kind and
    returns that bucket once it reaches the cap (so a bucket may exceed it by its last tensor);
    ``close`` closes the open bucket of a kind (after its last gradient)."""

    spec: BucketSpec
    _members: dict[bool, list[int]] = field(default_factory=lambda: {False: [], True: []})
    _bytes: dict[bool, float] = field(default_factory=lambda: {False: 0.0, True: 0.0})

    def add(self, op: Op) -> Bucket | None:
        if not self.spec.synced(op):
            return None
        self._members[op.expert].append(op.id)
        self._bytes[op.expert] += op.param_bytes
        return self._close(op.expert) if self._bytes[op.expert] >= self.spec.cap_bytes else None

    def close(self, expert: bool) -> Bucket | None:
        return self._close(expert) if self._members[expert] else None

    def _close(self, expert: bool) -> Bucket:
        bucket = Bucket(expert, tuple(self._members[expert]), self._bytes[expert])
        self._members[expert], self._bytes[expert] = [], 0.0
        return bucket


def bucket_op(op_id: int, index: int, bucket: Bucket, spec: BucketSpec, member_ids: Sequence[int]) -> Op:
    """The all-reduce op of ``bucket``, the ``index``-th of its kind; ``member_ids`` are its gradients' op ids."""
    kind = "expert" if bucket.expert else "dense"
    return Op(id=op_id, name=f"grad_sync.{kind}.{index}", role=Role.GRAD_SYNC, kind=OpKind.ALL_REDUCE,
              phase=Phase.GRAD_SYNC, layer=None, deps=tuple(member_ids),
              dims={"numel": round(bucket.bytes / spec.grad_bytes)},
              comm=CommSpec(groups=spec.groups[bucket.expert], bytes=bucket.bytes), expert=bucket.expert)


def copy_op(op_id: int, sync: Op, spec: BucketSpec, way: str, deps: tuple[int, ...]) -> Op:
    """The copy of bucket all-reduce ``sync``'s gradients into its buffer (``way`` "in": read, scale by
    1 / group size, write) or back (``"out"``: read, write): memory-bound, ``numel`` elements of
    ``spec.grad_bytes``."""
    numel = sync.dims["numel"]
    return Op(id=op_id, name=f"{sync.name}.copy_{way}", role=Role.GRAD_COPY, kind=OpKind.COPY,
              phase=Phase.GRAD_SYNC, layer=None, flops=float(numel if way == "in" else 0),
              mem_bytes=2.0 * numel * spec.grad_bytes, deps=deps, dims={"numel": numel}, expert=sync.expert)


def rebucket(graph: OpGraph, ready: Sequence[int]) -> tuple[OpGraph, dict[int, int]]:
    """``graph`` as it runs in ``ready`` order, its buckets rebuilt for that order (DDP's rebuild).

    ``ready`` holds every op that is neither a bucket nor the optimizer, once each, in a topological
    order: the order a schedule runs them. The result lists those ops in that order, each bucket (its
    copy in, then its all-reduce) right after the gradient that fills it or, for the last of its kind,
    after the last gradient of its kind (so buckets appear in the order they fill, the order DDP issues
    them), then the buckets' copies out in that order, and the optimizer last, depending on every dW op
    and every gradient-sync op. Buckets follow ``graph.facts.buckets`` (None, or no facts:
    no bucket). Returns the new graph and the new id of every op but the buckets.
    """
    optimizer = next(op for op in graph.ops if op.phase is Phase.OPTIMIZER)
    assert sorted(ready) == sorted(op.id for op in graph.ops if op.phase not in (Phase.GRAD_SYNC,
                                                                                 Phase.OPTIMIZER)), \
        "ready must hold every op but the buckets (and their copies) and the optimizer, once"
    spec = graph.facts.buckets if graph.facts is not None else None
    last_of_kind = {graph.ops[op_id].expert: op_id for op_id in ready
                    if spec is not None and spec.synced(graph.ops[op_id])}
    filler = BucketFiller(spec) if spec is not None else None
    ops: list[Op] = []
    new_id: dict[int, int] = {}
    count = {False: 0, True: 0}
    synced: list[Op] = []
    for old in ready:
        op = graph.ops[old]
        new_id[old] = len(ops)
        ops.append(replace(op, id=len(ops), deps=tuple(new_id[d] for d in op.deps)))
        if filler is None:
            continue
        full = filler.add(op)
        if full is None and last_of_kind.get(op.expert) == old:
            full = filler.close(op.expert)
        if full is not None:
            sync = bucket_op(len(ops) + 1, count[full.expert], full, filler.spec, [len(ops)])
            ops.append(copy_op(len(ops), sync, filler.spec, "in", tuple(new_id[m] for m in full.members)))
            ops.append(sync)
            synced.append(sync)
            count[full.expert] += 1
    if filler is not None and not filler.spec.bucket_view:
        for sync in synced:
            ops.append(copy_op(len(ops), sync, filler.spec, "out", (sync.id,)))
    weight = tuple(op.id for op in ops if op.phase in (Phase.BACKWARD_WEIGHT, Phase.GRAD_SYNC))
    new_id[optimizer.id] = len(ops)
    ops.append(replace(optimizer, id=len(ops), deps=weight))
    rebuilt = OpGraph(ops=tuple(ops), num_ranks=graph.num_ranks, num_layers=graph.num_layers,
                      moe_layers=graph.moe_layers, dtype=graph.dtype, facts=graph.facts)
    return rebuilt, new_id
