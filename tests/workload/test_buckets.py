"""DDP bucket rebuild: buckets follow the order gradients become ready."""

import pytest

from moesim.api import run_schedule, scenario
from moesim.workload.buckets import rebucket
from moesim.workload.ops import Phase


@pytest.fixture(scope="module")
def graph():
    # 2 p3dn nodes: dense buckets over 16 ranks; expert_dp_size 1, so expert gradients are not synced
    return scenario("gpt2-s-moe", "p3dn.24xlarge", 2, {"model.num_layers": 4, "training.grad_bucket_mb": 10}).graph


def buckets(graph):
    return [(op.name, tuple(sorted(graph.ops[m].name for m in op.deps)), op.comm.bytes)
            for op in graph.ops if op.phase is Phase.GRAD_SYNC]


def test_program_order_rebuilds_the_builders_buckets(graph):
    rebuilt, new_id = rebucket(graph, list(range(len(graph.ops))))
    assert buckets(rebuilt) == buckets(graph)
    assert [op.name for op in rebuilt.ops if op.phase is not Phase.GRAD_SYNC] == \
        [op.name for op in graph.ops if op.phase is not Phase.GRAD_SYNC]
    assert all(rebuilt.ops[new_id[op.id]].name == op.name for op in graph.ops if op.phase is not Phase.GRAD_SYNC)


def test_buckets_fill_in_ready_order_and_keep_every_gradient_once(graph):
    dws = [op.id for op in graph.ops if op.phase is Phase.BACKWARD_WEIGHT and op.param_bytes > 0 and not op.expert]
    ready = [op.id for op in graph.ops if op.id not in dws] + dws[::-1]  # gradients ready in reverse
    rebuilt, _ = rebucket(graph, ready)
    cap = graph.meta["grad_bucket_bytes"]
    seen = []
    in_fill_order = sorted((op for op in rebuilt.ops if op.phase is Phase.GRAD_SYNC),
                           key=lambda op: int(op.name.rsplit(".", 1)[1]))
    for op in in_fill_order:
        if op.phase is Phase.GRAD_SYNC:
            members = [rebuilt.ops[m] for m in op.deps]
            seen += [m.name for m in members]
            assert op.comm.bytes == pytest.approx(sum(m.param_bytes for m in members))
            # DDP closes a bucket at the tensor that reaches the cap: without it the bucket is under the cap
            assert op.comm.bytes - members[-1].param_bytes < cap or len(members) == 1
            assert all(d < op.id for d in op.deps)
    assert seen == [graph.ops[i].name for i in dws[::-1]]
    optimizer = rebuilt.ops[-1]
    assert optimizer.phase is Phase.OPTIMIZER
    assert set(optimizer.deps) == {op.id for op in rebuilt.ops if op.phase in (Phase.BACKWARD_WEIGHT,
                                                                                Phase.GRAD_SYNC)}


def test_lancet_buckets_follow_its_compute_order():
    scn = scenario("gpt2-s-moe", "p3dn.24xlarge", 2, {"model.num_layers": 4})
    result = run_schedule(scn, "lancet")
    plan, graph = result.plan, result.plan.graph
    compute = [plan.tasks[t].op for t in plan.streams[next(k for k in plan.streams if k.value == "compute")]]
    ready = [op_id for op_id in compute if graph.ops[op_id].param_bytes > 0]
    bucketed = [graph.ops[m].id for op in graph.ops if op.phase is Phase.GRAD_SYNC for m in op.deps]
    assert bucketed == [op_id for op_id in ready if op_id in set(bucketed)]
