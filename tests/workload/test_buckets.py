"""DDP's buckets: filled in the order gradients become ready and issued in that order, in every schedule."""

import pytest

from moesim.api import run_schedule, scenario
from moesim.plan import StreamKind
from moesim.schedules import registered
from moesim.workload.buckets import rebucket
from moesim.workload.builder import build_graph
from moesim.workload.ops import OpKind, Phase, Role
from moesim.workload.presets import load_workload


@pytest.fixture(scope="module")
def graph():
    # 2 p3dn nodes: dense buckets over 16 ranks; expert_dp_size 1, so expert gradients are not synced
    return scenario("gpt2-s-moe", "p3dn.24xlarge", 2, {"model.num_layers": 4, "training.grad_bucket_mb": 10}).graph


def all_reduces(graph):
    return [op for op in graph.ops if op.kind is OpKind.ALL_REDUCE]


def members(graph, bucket):
    """The gradients (dW ops) that fill ``bucket``: its copy in's dependencies."""
    (copy_in,) = [graph.ops[d] for d in bucket.deps]
    assert copy_in.name == f"{bucket.name}.copy_in"
    return [graph.ops[m] for m in copy_in.deps]


def buckets(graph):
    return [(op.name, tuple(sorted(m.name for m in members(graph, op))), op.comm.bytes) for op in all_reduces(graph)]


def unbucketed(graph):
    return [op.id for op in graph.ops if op.phase not in (Phase.GRAD_SYNC, Phase.OPTIMIZER)]


def test_program_order_rebuilds_the_builders_buckets(graph):
    rebuilt, new_id = rebucket(graph, unbucketed(graph))
    assert buckets(rebuilt) == buckets(graph)
    assert [op.name for op in rebuilt.ops] == [op.name for op in graph.ops]
    assert all(rebuilt.ops[new_id[op.id]].name == op.name for op in graph.ops if op.phase is not Phase.GRAD_SYNC)


def test_buckets_fill_in_ready_order_and_keep_every_gradient_once(graph):
    dws = [op.id for op in graph.ops if op.phase is Phase.BACKWARD_WEIGHT and op.param_bytes > 0 and not op.expert]
    ready = [op_id for op_id in unbucketed(graph) if op_id not in dws] + dws[::-1]  # gradients ready in reverse
    rebuilt, _ = rebucket(graph, ready)
    cap = graph.facts.grad_bucket_bytes
    seen = []
    in_graph = all_reduces(rebuilt)
    assert [int(op.name.rsplit(".", 1)[1]) for op in in_graph] == list(range(len(in_graph)))  # fill order
    for op in in_graph:
        filled = members(rebuilt, op)
        seen += [m.name for m in filled]
        assert op.comm.bytes == pytest.approx(sum(m.param_bytes for m in filled))
        # DDP closes a bucket at the tensor that reaches the cap: without it the bucket is under the cap
        assert op.comm.bytes - filled[-1].param_bytes < cap or len(filled) == 1
        assert op.id == max(m.id for m in filled) + 2  # right after the gradient that fills it, and its copy
    assert seen == [graph.ops[i].name for i in dws[::-1]]
    optimizer = rebuilt.ops[-1]
    assert optimizer.phase is Phase.OPTIMIZER
    assert set(optimizer.deps) == {op.id for op in rebuilt.ops if op.phase in (Phase.BACKWARD_WEIGHT,
                                                                                Phase.GRAD_SYNC)}


def _ready_order_holds(plan):
    """Each bucket the dp_comm stream issues is ready no later than the next: its last gradient comes
    no later on the compute stream."""
    position = {tid: i for i, tid in enumerate(plan.streams[StreamKind.COMPUTE])}
    issued = plan.streams.get(StreamKind.DP_COMM, ())
    ready = [max(position[d] for d in plan.tasks[tid].deps) for tid in issued]
    return bool(issued) and ready == sorted(ready)


@pytest.mark.parametrize("schedule", sorted(registered()))
def test_every_schedule_issues_buckets_in_ready_order_at_24_layers(schedule):
    # The Lancet paper's GPT2-L on 4 p3dn nodes: 24 layers, dense buckets over 32 ranks. Lancet moves dW
    # ops, so the buckets it rebuilds fill in another order than the program's; they must go out in it.
    scn = scenario("gpt2-l-moe", "p3dn.24xlarge", 4)
    result = run_schedule(scn, schedule)
    assert _ready_order_holds(result.plan)
    graph = result.plan.graph
    names = [op.name for op in all_reduces(graph)]
    assert names == [f"grad_sync.dense.{i}" for i in range(len(names))]  # the graph lists them in fill order


def test_lancet_buckets_follow_its_compute_order():
    scn = scenario("gpt2-l-moe", "p3dn.24xlarge", 4)
    plan = run_schedule(scn, "lancet").plan
    graph = plan.graph
    compute = [plan.tasks[t].op for t in plan.streams[StreamKind.COMPUTE]]
    ready = [op_id for op_id in compute if graph.ops[op_id].param_bytes > 0]
    bucketed = [m.id for op in all_reduces(graph) for m in members(graph, op)]
    assert bucketed == [op_id for op_id in ready if op_id in set(bucketed)]


def test_ddp_copies_each_bucket_in_before_its_all_reduce_and_out_before_the_optimizer(graph):
    grad_bytes = graph.facts.grad_bytes
    syncs = all_reduces(graph)
    copies_out = [op for op in graph.ops if op.name.endswith(".copy_out")]
    assert [op.name for op in copies_out] == [f"{op.name}.copy_out" for op in syncs]
    assert max(op.id for op in syncs) < min(op.id for op in copies_out)  # the compute stream never waits early
    for sync, out in zip(syncs, copies_out, strict=True):
        (copy_in,) = [graph.ops[d] for d in sync.deps]
        for copy in (copy_in, out):
            assert (copy.kind, copy.role, copy.phase) == (OpKind.COPY, Role.GRAD_COPY, Phase.GRAD_SYNC)
            assert copy.dims["numel"] * grad_bytes == pytest.approx(sync.comm.bytes)
            assert copy.mem_bytes == pytest.approx(2 * sync.comm.bytes)  # read and write every gradient once
        assert copy_in.flops == copy_in.dims["numel"] and out.flops == 0  # the 1 / group-size scale on the way in
        assert out.deps == (sync.id,)
    assert set(graph.ops[-1].deps) >= {op.id for op in copies_out}


def test_gradients_as_bucket_views_are_not_copied_back():
    viewed = scenario("gpt2-s-moe", "p3dn.24xlarge", 2, {"model.num_layers": 4, "training.grad_bucket_mb": 10,
                                                         "training.ddp_bucket_view": True}).graph
    names = [op.name for op in viewed.ops]
    assert not any(name.endswith(".copy_out") for name in names)
    copies_in = [name for name in names if name.endswith(".copy_in")]
    assert copies_in == [f"{op.name}.copy_in" for op in all_reduces(viewed)]


def test_a_single_rank_copies_nothing():
    workload = load_workload("gpt2-s-moe", num_gpus=1, gpu="V100-SXM2-32GB", overrides={"model.num_layers": 2})
    graph = build_graph(workload)
    assert not any(op.kind in (OpKind.COPY, OpKind.ALL_REDUCE) for op in graph.ops)
