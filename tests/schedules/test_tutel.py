"""The `tutel` policy: capacity chunks, stream order, per-chunk dependencies, degree search, 2DH."""

import json
import math
from dataclasses import replace

import pytest

from moesim import units
from moesim.api import run_schedule, scenario
from moesim.errors import MoesimError
from moesim.plan import GradSync, StreamKind
from moesim.schedules import get_schedule
from moesim.schedules.tutel import TutelDecisions, chunk_fractions, find_regions
from moesim.workload.ops import A2AAlgorithm, OpKind

FORWARD_REGION = ["L0.dispatch", "L0.expert_fc1", "L0.expert_act", "L0.expert_fc2", "L0.combine"]
BACKWARD_REGION = ["L0.combine.dx", "L0.expert_fc2.dx", "L0.expert_fc2.dw", "L0.expert_act.dx",
                   "L0.expert_fc1.dx", "L0.expert_fc1.dw", "L0.dispatch.dx"]
FORWARD_EXPERTS = FORWARD_REGION[1:-1]
BACKWARD_EXPERTS = BACKWARD_REGION[1:-1]


def plan_of(scn, **settings):
    policy = get_schedule("tutel")
    return policy.plan_with(scn.graph, scn.cost, settings)


def run(scn, **settings):
    return run_schedule(replace(scn, schedule_settings=settings), "tutel")


def tasks_by_name(plan):
    """(op name, part) -> task."""
    return {(plan.op_of(task).name, task.part): task for task in plan.tasks}


def ids(tasks, name, parts):
    return [tasks[name, part].id for part in range(parts)]


@pytest.fixture(scope="module")
def tiny():
    """gpt2-s-moe, 2 blocks (L0 is MoE) on one p3dn node; capacity factor 1.1 so C does not divide by 8."""
    return scenario("gpt2-s-moe", "p3dn.24xlarge", 1, {"model.num_layers": 2, "training.capacity_factor": 1.1})


@pytest.fixture(scope="module")
def two_p3dn():
    return scenario("gpt2-s-moe", "p3dn.24xlarge", 2, {"model.num_layers": 2})


def test_chunks_are_near_equal_whole_slot_counts():
    assert chunk_fractions(10, 4) == (3 / 10, 3 / 10, 2 / 10, 2 / 10)
    assert chunk_fractions(8, 8) == (1 / 8,) * 8
    assert chunk_fractions(5, 1) == (1.0,)
    assert chunk_fractions(None, 4) == (0.25,) * 4  # dropless: no slot count to split


def test_region_ops_are_split_into_whole_slots_and_the_rest_stays_whole(tiny):
    # 16 x 512 tokens per GPU, 16 experts, top-1: C = ceil(1.1 * 8192 / 16) = ceil(563.2) = 564 = 8 * 70 + 4
    capacity = math.ceil(1.1 * 16 * 512 / 16)
    assert tiny.graph.facts.capacity == capacity == 564
    plan = plan_of(tiny, degree=8)
    slots = [71, 71, 71, 71, 70, 70, 70, 70]
    for name in FORWARD_REGION + BACKWARD_REGION:
        parts = sorted((t for t in plan.tasks if plan.op_of(t).name == name), key=lambda t: t.part)
        assert [t.part for t in parts] == list(range(8)), name
        assert all(t.parts == 8 for t in parts), name
        assert [t.fraction * capacity for t in parts] == pytest.approx(slots, abs=1e-9), name
        assert sum(t.fraction for t in parts) == pytest.approx(1.0, abs=1e-12), name
    chunked = set(FORWARD_REGION + BACKWARD_REGION)
    for op in plan.graph.ops:
        if op.name not in chunked:
            whole = [t for t in plan.tasks if t.op == op.id]
            assert [(t.parts, t.fraction) for t in whole] == [(1, 1.0)], op.name
    assert plan.decisions == TutelDecisions(8, A2AAlgorithm.LINEAR, GradSync.DDP)
    assert plan.decisions.to_json() == {"degree": 8, "a2a": "linear", "grad_sync": "ddp"}


def test_comm_stream_issues_every_first_chunk_then_every_second(tiny):
    plan = plan_of(tiny, degree=4)
    comm = [(plan.op_of(t).name, t.part) for t in plan.stream_of(StreamKind.COMM)]
    expected = [(name, part) for name in ("L0.dispatch", "L0.combine", "L0.combine.dx", "L0.dispatch.dx")
                for part in range(4)]
    assert comm == expected


def test_compute_stream_runs_each_chunk_expert_ops_in_turn(tiny):
    plan = plan_of(tiny, degree=4)
    compute = [(plan.op_of(t).name, t.part) for t in plan.stream_of(StreamKind.COMPUTE)]
    forward = [entry for entry in compute if entry[0] in FORWARD_EXPERTS]
    backward = [entry for entry in compute if entry[0] in BACKWARD_EXPERTS]
    assert forward == [(name, part) for part in range(4) for name in FORWARD_EXPERTS]
    assert backward == [(name, part) for part in range(4) for name in BACKWARD_EXPERTS]


def test_each_chunk_depends_on_its_own_chunk_only(tiny):
    plan = plan_of(tiny, degree=4)
    tasks = tasks_by_name(plan)
    permute, router = tasks["L0.permute", 0].id, tasks["L0.router", 0].id
    for c in range(4):
        # no barrier on the compute stream: the dispatch waits only for the data it sends
        assert tasks["L0.dispatch", c].deps == (permute,)
        assert tasks["L0.expert_fc1", c].deps == (tasks["L0.dispatch", c].id,)
        assert tasks["L0.combine", c].deps == (tasks["L0.expert_fc2", c].id,)
        assert tasks["L0.expert_fc2.dx", c].deps == (tasks["L0.combine.dx", c].id,)
        assert tasks["L0.expert_fc2.dw", c].deps == (tasks["L0.combine.dx", c].id,)
        assert tasks["L0.expert_fc1.dw", c].deps == (tasks["L0.expert_act.dx", c].id,)
        assert tasks["L0.dispatch.dx", c].deps == (tasks["L0.expert_fc1.dx", c].id,)
    assert set(tasks["L0.unpermute", 0].deps) == {*ids(tasks, "L0.combine", 4), router}
    assert set(tasks["L0.permute.dx", 0].deps) == set(ids(tasks, "L0.dispatch.dx", 4))


def test_regions_leave_shared_experts_whole_and_run_them_before_the_chunks():
    scn = scenario("deepseek-v2-lite", "p4de.24xlarge", 1, {"model.num_layers": 2})
    regions = [[op.name for op in region.ops] for region in find_regions(scn.graph)]
    assert regions == [[name.replace("L0.", "L1.") for name in FORWARD_REGION],
                       [name.replace("L0.", "L1.") for name in BACKWARD_REGION]]
    plan = plan_of(scn, degree=2)
    compute = [(plan.op_of(t).name, t.part) for t in plan.stream_of(StreamKind.COMPUTE)]
    first_chunk = compute.index(("L1.expert_fc1", 0))
    for name in ("L1.shared_fc1", "L1.shared_act", "L1.shared_fc2"):
        assert [(n, p) for n, p in compute if n == name] == [(name, 0)]
        assert compute.index((name, 0)) < first_chunk  # free to overlap the first dispatch chunk


def test_an_expert_gradient_bucket_waits_for_every_chunk_of_its_gradients():
    scn = scenario("gpt2-s-moe", "p3dn.24xlarge", 1, {"model.num_layers": 2, "training.ep_size": 4})
    assert scn.graph.facts.expert_dp_size == 2  # 8 GPUs / EP 4: expert gradients are all-reduced
    plan = plan_of(scn, degree=2)
    tasks = tasks_by_name(plan)
    bucket = next(t for t in plan.tasks if plan.op_of(t).name == "grad_sync.expert.0")
    assert bucket.stream is StreamKind.DP_COMM
    (copy_in,) = [plan.tasks[dep] for dep in bucket.deps]  # DDP's copy of the gradients into the bucket
    assert plan.op_of(copy_in).name == "grad_sync.expert.0.copy_in" and copy_in.stream is StreamKind.COMPUTE
    gradient_ops = {plan.graph.ops[dep].name for dep in plan.op_of(copy_in).deps}
    expected = {tasks[name, part].id for name in gradient_ops for part in range(2)}
    assert gradient_ops <= {"L0.expert_fc1.dw", "L0.expert_fc2.dw"} and gradient_ops
    assert set(copy_in.deps) == expected


def test_dropless_chunks_are_equal_fractions():
    scn = scenario("mixtral-8x7b", "p4de.24xlarge", 1, {"model.num_layers": 1})
    assert scn.graph.facts.capacity is None
    plan = plan_of(scn, degree=4)
    fc1 = [t for t in plan.tasks if plan.op_of(t).name == "L0.expert_fc1"]
    assert [t.fraction for t in fc1] == [0.25] * 4


def test_chunks_overlap_each_other_and_beat_one_chunk(two_p3dn):
    one, two = run(two_p3dn, degree=1), run(two_p3dn, degree=2)
    spans = {(two.plan.op_of(two.plan.tasks[s.task]).name, two.plan.tasks[s.task].part): s
             for s in two.timeline.spans if s.rank == 0}
    experts, next_dispatch = spans["L0.expert_fc1", 0], spans["L0.dispatch", 1]
    overlap = min(experts.end, next_dispatch.end) - max(experts.start, next_dispatch.start)
    assert overlap > 0  # chunk 1's experts run while chunk 2 is dispatched
    assert two.metrics.iteration_time_s < one.metrics.iteration_time_s


def test_auto_keeps_the_fastest_degree_and_reports_every_candidate(two_p3dn):
    auto = run(two_p3dn)
    search = dict(auto.decisions.degree_search)
    assert set(search) == {1, 2, 4, 8}  # C = 8192 / 32 = 256 allows them all
    best = min(search, key=lambda d: (search[d], d))
    assert auto.decisions.degree == best and auto.decisions.a2a is A2AAlgorithm.LINEAR
    assert auto.metrics.iteration_time_s == search[best]
    for degree, seconds in search.items():
        assert run(two_p3dn, degree=degree).metrics.iteration_time_s == seconds
    assert json.loads(json.dumps(auto.knobs)) == auto.knobs
    assert auto.knobs["degree_search"] == [{"degree": d, "iteration_s": s} for d, s in search.items()]


def test_capacity_bounds_the_degree():
    # C = ceil(0.01 * 8192 / 16) = ceil(5.12) = 6 slots: at most 4 chunks of {1, 2, 4, 8}
    scn = scenario("gpt2-s-moe", "p3dn.24xlarge", 1, {"model.num_layers": 2, "training.capacity_factor": 0.01})
    assert scn.graph.facts.capacity == 6
    assert [d for d, _ in run(scn).decisions.degree_search] == [1, 2, 4]
    with pytest.raises(MoesimError, match=r"^schedule\.degree: 8 .*choose one of 1, 2, 4 or auto$") as err:
        plan_of(scn, degree=8)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("degree", [3, 16, "two"])
def test_unsupported_degree_is_rejected_in_one_line(degree):
    with pytest.raises(MoesimError, match=r"^schedule\.degree: .*1, 2, 4, 8 or 'auto'") as err:
        get_schedule("tutel").make_config({"degree": degree})
    assert "\n" not in str(err.value)


def test_unknown_a2a_algorithm_is_rejected():
    with pytest.raises(MoesimError, match=r"^schedule\.a2a: .*'linear' or '2dh'"):
        get_schedule("tutel").make_config({"a2a": "ring"})


def test_2dh_goes_on_every_all_to_all_and_not_on_the_gradient_all_reduce():
    scn = scenario("gpt2-s-moe", "p4de.24xlarge", 2, {"model.num_layers": 2})
    plan = plan_of(scn, degree=2, a2a="2dh")
    a2a = [t for t in plan.tasks if plan.op_of(t).kind is OpKind.ALL_TO_ALL]
    reduce = [t for t in plan.tasks if plan.op_of(t).kind is OpKind.ALL_REDUCE]
    assert len(a2a) == 4 * 2 and reduce
    assert all(t.algorithm is A2AAlgorithm.HIERARCHICAL for t in a2a)
    assert all(t.algorithm is A2AAlgorithm.LINEAR for t in reduce)
    assert plan.decisions.a2a is A2AAlgorithm.HIERARCHICAL


def test_2dh_on_a_group_split_unevenly_over_nodes_is_a_user_error():
    # 3 nodes x 8 GPUs, EP 12: group 0 is ranks 0-11, 8 on node 0 and 4 on node 1
    scn = scenario("gpt2-s-moe", "p4de.24xlarge", 3, {"model.num_layers": 2, "training.ep_size": 12})
    assert scn.graph.by_name("L0.dispatch").comm.groups[0] == tuple(range(12))
    for settings in ({"degree": 2, "a2a": "2dh"}, {"a2a": "2dh"}):
        with pytest.raises(MoesimError, match=r"schedule\.a2a=2dh"):
            run(scn, **settings)


def test_2dh_is_slower_than_linear_for_large_messages_on_two_p4de_nodes():
    """Derivation (uniform routing, n = 16 ranks, m = 8 per node, b = bytes a rank sends in one chunk).

    Linear: one stage, alpha = base + net_hop + 15 peer; each rank's b/2 for the other node shares its
    NIC with one other GPU (4 NICs, 8 GPUs), so the NIC carries b and is the bottleneck (b / 12 GB/s
    vs 7b/16 over 234 GB/s NVLink). 2DH: stage 1 inside the node, alpha = base + nvl_hop + 7 peer,
    each GPU sends its 7b/16 local bytes plus 7b/16 relayed for the other node: 7b/8 over NVLink;
    stage 2 between nodes, alpha = base + net_hop + 1 peer, the same b per NIC as linear. So 2DH costs
    7b/8 / nvlink + base + nvl_hop - 7 peer more per all-to-all: more bandwidth and more latency here,
    and the iteration cannot get shorter. (Without the small-message term, which 2DH's larger messages
    between nodes pay less of: tests/analysis/test_primitives.py.)
    """
    scn = scenario("gpt2-s-moe", "p4de.24xlarge", 2, {"cost.collective_half_rate_kib": 0,
                                                      "cost.network_half_rate_kib": 0})
    linear, hierarchical = run(scn, degree=2), run(scn, degree=2, a2a="2dh")
    node, params = scn.cluster.node, scn.cluster.cost
    nvlink = units.gb_per_s(node.intra.bandwidth_gb_per_s) * params.intra_bandwidth_efficiency
    extra_alpha = params.all_to_all_base_latency_s + node.intra.latency_s - 7 * params.all_to_all_peer_latency_s
    pairs = zip(linear.plan.stream_of(StreamKind.COMM), hierarchical.plan.stream_of(StreamKind.COMM), strict=True)
    for flat, staged in pairs:
        op = linear.plan.op_of(flat)
        chunk_bytes = op.comm.bytes * flat.fraction
        extra = scn.cost.collective_time(op, staged) - scn.cost.collective_time(op, flat)
        assert extra == pytest.approx(7 / 8 * chunk_bytes / nvlink + extra_alpha, rel=1e-9)
        assert extra > 0
    assert hierarchical.metrics.iteration_time_s > linear.metrics.iteration_time_s
