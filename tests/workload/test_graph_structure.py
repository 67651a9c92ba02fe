"""Shape of the op graph: program order, backward dependencies, gradient buckets, optimizer."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.units import mb
from moesim.workload import build_graph, load_workload
from moesim.workload.ops import Axis, OpGraph, OpKind, Phase

GPU = "A100-SXM4-80GB"


def _graph(name: str, gpus: int, **overrides: object) -> OpGraph:
    return build_graph(load_workload(name, num_gpus=gpus, gpu=GPU, overrides=overrides))


@pytest.fixture(scope="module")
def lancet() -> OpGraph:
    return _graph("gpt2-s-moe", 8, **{"training.batch_per_gpu": 2, "model.num_layers": 4})


@pytest.fixture(scope="module")
def mixtral16() -> OpGraph:
    return _graph("mixtral-8x7b", 16, **{"model.num_layers": 3, "training.seq_len": 512})


def _consumers(graph: OpGraph) -> dict[int, list[int]]:
    forward = [op for op in graph.ops if op.phase is Phase.FORWARD]
    users: dict[int, list[int]] = {op.id: [] for op in forward}
    for op in forward:
        for dep in op.deps:
            users[dep].append(op.id)
    return users


@pytest.mark.parametrize("name", ["gpt2-s-moe", "switch-base-128", "deepseek-v2-lite"])
def test_program_order_is_a_dag_with_unique_names(name: str) -> None:
    graph = _graph(name, 8, **{"training.batch_per_gpu": 1})
    assert [op.id for op in graph.ops] == list(range(len(graph.ops)))
    assert all(dep < op.id for op in graph.ops for dep in op.deps)
    assert len({op.name for op in graph.ops}) == len(graph.ops)
    phases = [op.phase for op in graph.ops]
    first_backward = phases.index(Phase.BACKWARD_INPUT)
    assert set(phases[:first_backward]) == {Phase.FORWARD}
    assert Phase.FORWARD not in phases[first_backward:]
    assert graph.ops[-1].phase is Phase.OPTIMIZER and phases.count(Phase.OPTIMIZER) == 1


def test_block_ops_in_documented_order(lancet: OpGraph) -> None:
    dense = [op.role for op in lancet.in_layer(1) if op.phase is Phase.FORWARD]
    attention = ["ln1", "qkv", "attention", "attn_out", "attn_residual", "ln2"]
    assert dense == [*attention, "fc1", "act", "fc2", "residual"]
    moe = [op.role for op in lancet.in_layer(0) if op.phase is Phase.FORWARD]
    assert moe == [*attention, "router", "permute", "dispatch", "expert_fc1", "expert_act", "expert_fc2",
                   "combine", "unpermute", "residual"]
    assert lancet.moe_layers == (0, 2)
    outside = [op.name for op in lancet.ops if op.layer is None and op.phase is Phase.FORWARD]
    assert outside == ["embed", "ln_f", "lm_head", "loss"]


def test_every_backward_op_depends_on_the_dx_of_its_consumers(lancet: OpGraph) -> None:
    by_name = {op.name: op for op in lancet.ops}
    users = _consumers(lancet)
    for op in lancet.ops:
        if op.phase is not Phase.FORWARD:
            continue
        expected = {by_name[lancet.ops[u].name + ".dx"].id for u in users[op.id]}
        if op.role == "router":  # permute needs the router's indices but passes it no gradient
            expected = {by_name[op.name.replace("router", "unpermute") + ".dx"].id}
        if op.role == "loss":
            expected = {op.id}
        for suffix in (".dx", ".dw"):
            if op.name + suffix in by_name:
                assert set(by_name[op.name + suffix].deps) == expected, op.name + suffix
    assert by_name["L1.fc1.dw"].deps == (by_name["L1.act.dx"].id,)
    assert by_name["L0.expert_fc2.dw"].deps == (by_name["L0.combine.dx"].id,)


def test_dw_follows_its_dx_in_reverse_forward_order(lancet: OpGraph) -> None:
    forward = [op.name for op in lancet.ops if op.phase is Phase.FORWARD]
    backward = [op.name for op in lancet.ops if op.phase in (Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT)]
    assert [n.rsplit(".", 1)[0] for n in backward if n.endswith(".dx")] == [n for n in reversed(forward)
                                                                            if n != "embed"]
    for index, name in enumerate(backward):
        if name.endswith(".dw") and name != "embed.dw":
            assert backward[index - 1] == name[:-3] + ".dx"


def test_matmul_backward_shapes_are_transposed(lancet: OpGraph) -> None:
    fc1 = lancet.by_name("L1.fc1")
    assert dict(fc1.dims) == {"m": 2 * 512, "n": 3072, "k": 768}
    assert dict(lancet.by_name("L1.fc1.dx").dims) == {"m": 1024, "n": 768, "k": 3072}
    assert dict(lancet.by_name("L1.fc1.dw").dims) == {"m": 768, "n": 3072, "k": 1024}
    assert lancet.by_name("L1.fc1.dw").param_bytes == 768 * 3072 * 4
    # 8 GPUs x 2 experts, capacity ceil(1024 / 16) = 64 from each of 8 sources per local expert
    assert dict(lancet.by_name("L0.expert_fc1").dims) == {"m": 8 * 64, "n": 3072, "k": 768, "batch": 2}


def test_axes_and_expert_flags(lancet: OpGraph) -> None:
    assert lancet.by_name("L0.router").axes == frozenset({Axis.BATCH, Axis.SEQUENCE})
    assert lancet.by_name("L0.attention").axes == frozenset({Axis.BATCH, Axis.SEQUENCE})  # causal (decoder)
    for role in ("permute", "dispatch", "expert_fc1", "expert_act", "expert_fc2", "combine"):
        assert Axis.CAPACITY in lancet.by_name(f"L0.{role}").axes
    assert Axis.CAPACITY not in lancet.by_name("L0.unpermute").axes
    assert {op.role for op in lancet.ops if op.expert and op.phase is Phase.FORWARD} == {
        "expert_fc1", "expert_act", "expert_fc2"}
    bpr = _graph("gpt2-s-moe", 8, **{"training.gate": "batch_prioritized", "model.num_layers": 2})
    assert bpr.by_name("L0.router").axes == frozenset()


def test_attention_over_whole_sequences_splits_only_along_the_batch() -> None:
    graph = _graph("switch-base-128", 8, **{"model.num_layers": 2, "model.num_decoder_layers": 2})
    assert graph.by_name("L0.attention").axes == frozenset({Axis.BATCH})  # encoder: bidirectional
    assert graph.by_name("L2.attention").axes == frozenset({Axis.BATCH, Axis.SEQUENCE})  # decoder: causal
    assert graph.by_name("L2.xattn").axes == graph.by_name("L2.xattn_kv").axes == frozenset({Axis.BATCH})
    assert Axis.SEQUENCE in graph.by_name("L2.xattn_q").axes
    # only a decoder's self-attention is causal (its kernel may skip the masked half), forward and backward
    causal = {op.name for op in graph.ops if op.kind is OpKind.ATTENTION and op.dims.get("causal")}
    assert causal == {"L2.attention", "L2.attention.dx", "L3.attention", "L3.attention.dx"}
    assert graph.by_name("L2.attention").flops == graph.by_name("L0.attention").flops  # FLOPs: the full square
    mla = _graph("deepseek-v2-lite", 8, **{"model.num_layers": 2})
    assert all(op.dims.get("causal") for op in mla.ops if op.kind is OpKind.ATTENTION)


def test_all_to_all_backward_moves_the_transposed_traffic(mixtral16: OpGraph) -> None:
    names = ("dispatch", "combine", "dispatch.dx", "combine.dx")
    ops = {name: mixtral16.by_name(f"L0.{name}") for name in names}
    assert all(op.kind is OpKind.ALL_TO_ALL for op in ops.values())
    dispatch = ops["dispatch"].comm.traffic
    np.testing.assert_array_equal(ops["combine"].comm.traffic, dispatch.transpose(0, 2, 1))
    np.testing.assert_array_equal(ops["combine.dx"].comm.traffic, dispatch)
    np.testing.assert_array_equal(ops["dispatch.dx"].comm.traffic, dispatch.transpose(0, 2, 1))
    # 16 GPUs, 8 experts: ep 8, two EP groups of contiguous ranks
    assert ops["dispatch"].comm.groups == (tuple(range(8)), tuple(range(8, 16)))
    # uniform layers share one traffic array
    assert mixtral16.by_name("L2.dispatch").comm.traffic is dispatch


def _buckets(graph: OpGraph) -> list:
    return [op for op in graph.ops if op.kind is OpKind.ALL_REDUCE]


def _gradients(graph: OpGraph, bucket) -> tuple[int, ...]:
    """The dW ops that fill ``bucket``: its copy in (DDP's) depends on them."""
    (copy_in,) = bucket.deps
    assert graph.ops[copy_in].name == f"{bucket.name}.copy_in"
    return graph.ops[copy_in].deps


def test_buckets_cover_every_gradient_once(mixtral16: OpGraph) -> None:
    weights = {op.id: op for op in mixtral16.ops if op.phase is Phase.BACKWARD_WEIGHT and op.param_bytes > 0}
    buckets = _buckets(mixtral16)
    members = [dep for bucket in buckets for dep in _gradients(mixtral16, bucket)]
    assert sorted(members) == sorted(weights)
    for bucket in buckets:
        gradients = _gradients(mixtral16, bucket)
        assert bucket.comm.bytes == sum(weights[d].param_bytes for d in gradients)
        assert all(weights[d].expert == bucket.expert for d in gradients)
        expected_groups = (tuple(range(16)),) if not bucket.expert else tuple((p, p + 8) for p in range(8))
        assert bucket.comm.groups == expected_groups
        assert bucket.id > max(gradients)
    total = sum(b.comm.bytes for b in buckets)
    assert total == mixtral16.facts.param_bytes.total


def test_buckets_close_at_the_ddp_cap(mixtral16: OpGraph) -> None:
    cap = mb(25)
    weights = {op.id: op for op in mixtral16.ops if op.phase is Phase.BACKWARD_WEIGHT}
    for expert in (False, True):
        buckets = [b for b in _buckets(mixtral16) if b.expert == expert]
        assert buckets
        for bucket in buckets[:-1]:
            last = max(_gradients(mixtral16, bucket))
            assert bucket.comm.bytes >= cap
            assert bucket.comm.bytes - weights[last].param_bytes < cap


def test_no_buckets_over_groups_of_one() -> None:
    single = _graph("mixtral-8x7b", 1, **{"model.num_layers": 2, "model.num_experts": 2, "model.top_k": 1})
    assert _buckets(single) == []
    lancet = _graph("gpt2-s-moe", 8, **{"model.num_layers": 2})  # 2 experts per GPU: expert DP size 1
    assert {b.expert for b in _buckets(lancet)} == {False}


def test_optimizer_depends_on_every_bucket_and_weight_gradient(mixtral16: OpGraph) -> None:
    optimizer = mixtral16.ops[-1]
    expected = {op.id for op in mixtral16.ops if op.phase in (Phase.BACKWARD_WEIGHT, Phase.GRAD_SYNC)}
    assert set(optimizer.deps) == expected
    params = mixtral16.facts.params.total
    assert optimizer.dims["params"] == params
    assert optimizer.mem_bytes == params * (24 + 2 + 2)  # Adam, BF16: grad + FP32 w/m/v r+w + BF16 weight


def test_sgd_optimizer_traffic() -> None:
    graph = _graph("gpt2-s-moe", 8, **{"model.num_layers": 2})
    params = graph.facts.params.total
    assert graph.ops[-1].mem_bytes == params * 5 * 4  # w, g, m read; w, m written; FP32


def test_tied_embedding_gradient_owned_by_embed(lancet: OpGraph) -> None:
    assert lancet.by_name("lm_head.dw").param_bytes == 0
    assert lancet.by_name("embed.dw").param_bytes == (50257 + 1024) * 768 * 4
    untied = _graph("mixtral-8x7b", 8, **{"model.num_layers": 1})
    assert untied.by_name("lm_head.dw").param_bytes == 32000 * 4096 * 2


def test_encoder_decoder_cross_attention_reads_the_encoder_output() -> None:
    graph = _graph("switch-base-128", 8, **{"model.num_layers": 2, "model.num_decoder_layers": 2})
    memory = graph.by_name("encoder.ln_f")
    assert graph.by_name("L2.xattn_kv").deps == (memory.id,)
    assert graph.by_name("L3.xattn_kv").deps == (memory.id,)
    dx = {graph.by_name(f"L{i}.xattn_kv.dx").id for i in (2, 3)}
    assert set(graph.by_name("encoder.ln_f.dx").deps) == dx
    assert graph.moe_layers == (1, 3)  # block index % 2 == 1 in each stack
    assert graph.by_name("decoder_embed").deps == ()


def test_mla_projections() -> None:
    graph = _graph("deepseek-v3", 8, **{"model.num_layers": 4})
    roles = [op.role for op in graph.in_layer(3) if op.phase is Phase.FORWARD][:6]
    assert roles == ["ln1", "q_down", "q_up", "kv_down", "kv_up", "attention"]
    assert dict(graph.by_name("L3.kv_up").dims) == {"m": 4096, "n": 128 * (128 + 128), "k": 512}
    assert graph.by_name("L3.attention").dims["head_dim"] == 192
    assert graph.moe_layers == (3,)
    shared = graph.by_name("L3.shared_fc2")
    assert shared.id in graph.by_name("L3.unpermute").deps and not shared.expert


def test_uniform_graph_is_rank_symmetric(mixtral16: OpGraph) -> None:
    assert mixtral16.rank_symmetric
    assert all(op.rank_scale is None for op in mixtral16.ops)


def test_deepseek_v3_builds_for_256_gpus() -> None:
    """61 blocks (3 dense, 58 MoE), the ops outside them, and one DDP bucket per 25 MB of dense gradient:
    the 256 experts sit one per GPU, so expert gradients have a data-parallel group of one and no bucket."""
    graph = _graph("deepseek-v3", 256)
    assert graph.num_ranks == 256 and graph.moe_layers == tuple(range(3, 61))
    per_layer = [len(graph.in_layer(layer)) for layer in range(61)]
    assert per_layer == [35] * 3 + [54] * 58
    outside = [op for op in graph.ops if op.layer is None]
    buckets = _buckets(graph)
    copies = [op for op in outside if op.kind is OpKind.COPY]
    assert [op.name for op in copies] == [f"{b.name}.copy_{way}" for way in ("in", "out") for b in buckets]
    assert sorted(op.name for op in outside if op not in buckets and op not in copies) == sorted(
        ["embed", "embed.dw", "ln_f", "ln_f.dx", "ln_f.dw", "lm_head", "lm_head.dx", "lm_head.dw",
         "loss", "loss.dx", "optimizer"])
    assert not any(op.expert for op in buckets)
    dense_grads = [op for op in graph.ops if op.phase is Phase.BACKWARD_WEIGHT and op.param_bytes > 0 and not op.expert]
    assert sorted(d for op in buckets for d in _gradients(graph, op)) == sorted(op.id for op in dense_grads)
    cap = 25 * 2**20
    assert all(op.comm.bytes >= cap for op in buckets[:-1]) and buckets[-1].comm.bytes > 0
    assert len(buckets) == 307
    assert len(graph.ops) == 3 * 35 + 58 * 54 + 11 + 3 * 307  # each bucket: copy in, all-reduce, copy out
