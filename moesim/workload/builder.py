"""Build the OpGraph of one training iteration from a Workload.

Steps: route tokens per MoE layer -> size each MoE layer (buffers, traffic) -> emit the forward ops
-> derive the backward ops from the forward data edges -> bucket gradients DDP-style -> optimizer.

Backward, in reverse program order: each op with differentiable inputs gets a dX op (``.dx``,
depending on the dX ops of every op that consumed its output), and each op with weights gets a dW
op right after it (``.dw``, with the same dependencies: its saved input exists since forward
finished). Matmul dX and dW each cost the forward's 2mnk (shapes transposed accordingly); the
router's dX and dW each cost its gate matmul; attention's dX costs 2.5x its forward FLOPs (dQ, dK, dV
and the recomputed scores: five matmuls against two) and twice its bytes; other ops' dX cost twice
their forward FLOPs and bytes. An all-to-all's backward is an all-to-all moving the transposed traffic.

Gradients (in the training dtype, BF16 for FP8) fill buckets of ``grad_bucket_mb`` in the order
their dW ops appear; a bucket is all-reduced once it reaches the cap (DDP's rule, so a bucket may
exceed it by its last tensor), dense parameters over all ranks, expert parameters over their
expert-data-parallel group; nothing is all-reduced across a group of one; DDP's copies into and out of
the buckets are ops of their own (``buckets``). A parameter shared by several ops (tied embeddings) is
attributed to the last of their dW ops, when its gradient is final; that op also pays autograd's sum of
the other uses' gradients into it (one add per extra use: read two, write one, in ``dims["accumulate"]``
elements). An embedding's dW makes the whole table's gradient: it fills ``vocab x hidden`` zeros, then adds
the token rows into it. ``zero_grad(set_to_none=True)``, PyTorch's default and the only one modelled,
launches no kernel: every gradient is made afresh, so no fill and no add into ``.grad`` but the sums above.
Optimizer traffic: SGD with momentum reads weight, gradient, momentum and writes weight, momentum
(5 accesses); Adam reads the gradient, reads and writes FP32 master weight, m and v (24 bytes), and
writes the low-precision weight copy when training below FP32.
"""

from __future__ import annotations

from dataclasses import replace

from moesim.units import mb
from moesim.workload.blocks import ForwardNode, ForwardRecipe
from moesim.workload.buckets import BucketSpec, rebucket
from moesim.workload.config import OptimizerKind, Workload
from moesim.workload.facts import GraphFacts, ParamCounts
from moesim.workload.moe import moe_plans
from moesim.workload.ops import Op, OpGraph, OpKind, Phase, Role
from moesim.workload.routing import LayerRouting, route

LAYERNORM_DW_FLOPS_PER_ELEMENT = 2  # d(gamma), d(beta) multiply-accumulate
SGD_FLOPS_PER_PARAM = 4             # m = mu m + g; w -= lr m
ADAM_FLOPS_PER_PARAM = 12           # moments, bias correction, sqrt, divide, update
ATTENTION_BACKWARD_FLOPS = 2.5      # x forward: five matmuls against two (FlashAttention's count, docs/sources.md §2)


def build_graph(workload: Workload, *, measured: bool = True) -> OpGraph:
    """The iteration's DAG: forward, backward (dX / dW), gradient buckets, optimizer; ids = index.

    A traced workload's ops carry the times its run measured (``Op.measured_s``) unless ``measured`` is
    False (the graph is for another device than the one traced)."""
    routing = route(workload)
    nodes = ForwardRecipe(workload, moe_plans(workload, routing)).build()
    ops = [_forward_op(index, node) for index, node in enumerate(nodes)]
    _add_backward(workload, nodes, ops)
    ops.append(_optimizer(workload, ops))
    unbucketed = OpGraph(ops=tuple(ops), num_ranks=workload.num_gpus, num_layers=workload.model.total_layers,
                         moe_layers=workload.model.moe_layers, dtype=workload.training.dtype,
                         facts=_facts(workload, routing, nodes))
    graph, _ = rebucket(unbucketed, [op.id for op in ops[:-1]])
    if workload.recorded is None or not measured:
        return graph
    recorded = workload.recorded
    timed = tuple(op if op.kind.is_collective else replace(op, measured_s=recorded.op_seconds(op.name))
                  for op in graph.ops)
    return replace(graph, ops=timed)


def _forward_op(index: int, node: ForwardNode) -> Op:
    return Op(id=index, name=node.name, role=node.role, kind=node.kind, phase=Phase.FORWARD, layer=node.layer,
              flops=node.flops, mem_bytes=node.mem_bytes, deps=node.inputs, dims=node.dims, axes=node.axes,
              comm=node.comm, rank_scale=node.rank_scale, expert=node.expert)


def _add_backward(workload: Workload, nodes: list[ForwardNode], ops: list[Op]) -> None:
    consumers: list[list[int]] = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        for source in node.grad_inputs:
            consumers[source].append(index)
    owners = _param_owners(nodes)
    users: dict[str, int] = {}
    for node in nodes:
        for key, _ in node.params:
            users[key] = users.get(key, 0) + 1
    grad_bytes = workload.training.dtype.grad_bytes
    dx_of: dict[int, int] = {}
    for index in reversed(range(len(nodes))):
        node = nodes[index]
        # the loss has no consumer: its gradient starts from its own forward output
        deps = tuple(sorted(dx_of[c] for c in consumers[index])) or (index,)
        if node.grad_inputs:
            dx_of[index] = len(ops)
            ops.append(_dx_op(len(ops), node, deps))
        if node.params:
            owned = sum(elems for key, elems in node.params if owners[key] == index)
            summed = sum(elems * (users[key] - 1) for key, elems in node.params if owners[key] == index)
            numel = workload.tokens_per_gpu * workload.model.hidden
            ops.append(_dw_op(len(ops), node, deps, owned, summed, grad_bytes, numel))


def _param_owners(nodes: list[ForwardNode]) -> dict[str, int]:
    """Parameter key -> forward index of its first user, whose dW comes last in backward."""
    owners: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for key, _ in node.params:
            owners.setdefault(key, index)
    return owners


def _dx_op(op_id: int, node: ForwardNode, deps: tuple[int, ...]) -> Op:
    dims, comm = node.dims, None
    flops = (ATTENTION_BACKWARD_FLOPS if node.kind is OpKind.ATTENTION else 2) * node.flops
    mem = 2 * node.mem_bytes
    if node.kind is OpKind.MATMUL:
        dims = {**node.dims, "n": node.dims["k"], "k": node.dims["n"]}
        flops, mem = node.flops, node.mem_bytes
    elif node.kind is OpKind.ROUTER:
        flops, mem = node.flops, node.mem_bytes
    elif node.kind is OpKind.ALL_TO_ALL:
        comm = node.comm_backward
    return Op(id=op_id, name=f"{node.name}.dx", role=node.role, kind=node.kind, phase=Phase.BACKWARD_INPUT,
              layer=node.layer, flops=flops, mem_bytes=mem, deps=deps, dims=dims, axes=node.axes, comm=comm,
              rank_scale=node.rank_scale, expert=node.expert)


def _dw_op(op_id: int, node: ForwardNode, deps: tuple[int, ...], owned: int, summed: int, grad_bytes: int,
           numel: int) -> Op:
    """``owned`` parameter elements get their final gradient here, ``summed`` of them added from other uses."""
    dims, flops, mem = node.dims, node.flops, node.mem_bytes
    if node.kind is OpKind.MATMUL:
        dims = {**node.dims, "m": node.dims["k"], "k": node.dims["m"]}
    elif node.kind is OpKind.LAYERNORM:
        flops, mem = LAYERNORM_DW_FLOPS_PER_ELEMENT * numel, node.mem_bytes
    elif node.kind is OpKind.EMBEDDING:
        # zeros for the whole table, then a scatter-add of the token gradients into it
        flops, mem = numel, node.mem_bytes + node.dims["vocab"] * node.dims["hidden"] * grad_bytes
    if summed:
        assert node.kind is not OpKind.MATMUL, f"{node.name}: a matmul's roofline would hide the sum's bytes"
        dims = {**dims, "accumulate": summed}
        flops, mem = flops + summed, mem + 3 * summed * grad_bytes
    param_bytes = owned * grad_bytes
    # A weight gradient is a sum over tokens, so it splits along the forward op's axes (parts accumulate).
    return Op(id=op_id, name=f"{node.name}.dw", role=node.role, kind=node.kind, phase=Phase.BACKWARD_WEIGHT,
              layer=node.layer, flops=float(flops), mem_bytes=mem, deps=deps, dims=dims, axes=node.axes,
              rank_scale=node.rank_scale, param_bytes=float(param_bytes), expert=node.expert)


def _optimizer(workload: Workload, ops: list[Op]) -> Op:
    weight_ops = [op for op in ops if op.phase is Phase.BACKWARD_WEIGHT]
    grad_bytes = workload.training.dtype.grad_bytes
    params = sum(op.param_bytes for op in ops if op.phase is Phase.BACKWARD_WEIGHT) / grad_bytes
    if workload.training.optimizer is OptimizerKind.SGD_MOMENTUM:
        flops_per, bytes_per = SGD_FLOPS_PER_PARAM, 5 * grad_bytes
    else:
        flops_per, bytes_per = ADAM_FLOPS_PER_PARAM, 24 + grad_bytes + (grad_bytes if grad_bytes < 4 else 0)
    return Op(id=len(ops), name="optimizer", role=Role.OPTIMIZER, kind=OpKind.OPTIMIZER, phase=Phase.OPTIMIZER,
              layer=None, flops=flops_per * params, mem_bytes=bytes_per * params,
              deps=tuple(op.id for op in weight_ops), dims={"params": round(params)})


def _bucket_spec(workload: Workload) -> BucketSpec | None:
    """Dense gradients over every rank, expert gradients over their expert-data-parallel groups; a kind
    whose group is a single rank is not synchronised (None when neither is)."""
    groups = {expert: members for expert, members in ((False, (workload.dense_dp_group,)),
                                                      (True, workload.expert_dp_groups))
              if len(members[0]) > 1}
    if not groups:
        return None
    training = workload.training
    return BucketSpec(mb(training.grad_bucket_mb), training.dtype.grad_bytes, groups, training.ddp_bucket_view)


def _facts(workload: Workload, routing: tuple[LayerRouting, ...], nodes: list[ForwardNode]) -> GraphFacts:
    owners = _param_owners(nodes)
    owned = [(n.expert, elems) for i, n in enumerate(nodes) for key, elems in n.params if owners[key] == i]
    training = workload.training
    return GraphFacts(
        model=workload.model.name, preset=workload.preset, tokens_per_gpu=workload.tokens_per_gpu,
        batch_per_gpu=training.batch_per_gpu, seq_len=training.seq_len, hidden=workload.model.hidden,
        capacity=workload.capacity, num_experts=workload.num_experts, experts_per_rank=workload.experts_per_rank,
        ep_size=workload.ep_size, dp_size=workload.dp_size, expert_dp_size=workload.expert_dp_size,
        gate=training.gate, optimizer=training.optimizer,
        params=ParamCounts(dense=sum(elems for expert, elems in owned if not expert),
                           expert_per_rank=sum(elems for expert, elems in owned if expert)),
        grad_bytes=training.dtype.grad_bytes, grad_bucket_bytes=mb(training.grad_bucket_mb),
        buckets=_bucket_spec(workload), routing=routing,
    )
