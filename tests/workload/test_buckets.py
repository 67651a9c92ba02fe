"""DDP's buckets: filled in the order gradients become ready and issued in that order, in every schedule."""

import pytest

from moesim.api import run_schedule, scenario
from moesim.plan import StreamKind
from moesim.schedules import registered
from moesim.workload.buckets import rebucket
from moesim.workload.ops import Phase


@pytest.fixture(scope="module")
def graph():
    # 2 p3dn nodes: dense buckets over 16 ranks; expert_dp_size 1, so expert gradients are not synced
    return scenario("gpt2-s-moe", "p3dn.24xlarge", 2, {"model.num_layers": 4, "training.grad_bucket_mb": 10}).graph


def buckets(graph):
    return [(op.name, tuple(sorted(graph.ops[m].name for m in op.deps)), op.comm.bytes)
            for op in graph.ops if op.phase is Phase.GRAD_SYNC]


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
    in_graph = [op for op in rebuilt.ops if op.phase is Phase.GRAD_SYNC]
    assert [int(op.name.rsplit(".", 1)[1]) for op in in_graph] == list(range(len(in_graph)))  # fill order
    for op in in_graph:
        members = [rebuilt.ops[m] for m in op.deps]
        seen += [m.name for m in members]
        assert op.comm.bytes == pytest.approx(sum(m.param_bytes for m in members))
        # DDP closes a bucket at the tensor that reaches the cap: without it the bucket is under the cap
        assert op.comm.bytes - members[-1].param_bytes < cap or len(members) == 1
        assert op.id == max(op.deps) + 1  # right after the gradient that fills it
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
    names = [op.name for op in graph.ops if op.phase is Phase.GRAD_SYNC]
    assert names == [f"grad_sync.dense.{i}" for i in range(len(names))]  # the graph lists them in fill order


def test_lancet_buckets_follow_its_compute_order():
    scn = scenario("gpt2-l-moe", "p3dn.24xlarge", 4)
    plan = run_schedule(scn, "lancet").plan
    graph = plan.graph
    compute = [plan.tasks[t].op for t in plan.streams[StreamKind.COMPUTE]]
    ready = [op_id for op_id in compute if graph.ops[op_id].param_bytes > 0]
    bucketed = [graph.ops[m].id for op in graph.ops if op.phase is Phase.GRAD_SYNC for m in op.deps]
    assert bucketed == [op_id for op_id in ready if op_id in set(bucketed)]
