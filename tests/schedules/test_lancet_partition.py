"""Lancet's forward partitioning: the DP, the list scheduler, capacity passing, gates and part counts."""

import itertools
import math

import numpy as np
import pytest

from moesim.api import scenario
from moesim.plan import StreamKind
from moesim.schedules.judge import fastest
from moesim.schedules.lancet import LancetConfig, Option, build
from moesim.schedules.lancet_partition import (
    LancetRanges,
    allowed_parts,
    best_segmentation,
    causal_fractions,
    partition_axis,
    plan_partitions,
)
from moesim.schedules.lancet_passing import capacity_passing, moe_parts, split_evenly
from moesim.schedules.lancet_pipeline import Interference, RangeOp, pipeline_schedule
from moesim.workload.config import GateKind
from moesim.workload.ops import Axis, OpKind
from moesim.workload.routing import LayerRouting

COMPUTE, COMM = StreamKind.COMPUTE, StreamKind.COMM


def _scn(layers, nodes, **training):
    overrides = {"model.num_layers": layers, **{f"training.{k}": v for k, v in training.items()}}
    return scenario("gpt2-s-moe", "p3dn.24xlarge", nodes, overrides)


@pytest.fixture(scope="module")
def four_layers_two_nodes():
    return _scn(4, 2)


# --- the DP -------------------------------------------------------------------------------------


def _segmentations(n, max_len):
    """Every way to cut [0, n) into contiguous segments no longer than max_len."""
    if n == 0:
        yield []
        return
    for first in range(1, min(max_len, n) + 1):
        for rest in _segmentations(n - first, max_len):
            yield [(0, first)] + [(i + first, j + first) for i, j in rest]


def _brute_force(n, max_len, cost):
    best = math.inf
    for segments in _segmentations(n, max_len):
        total = 0.0
        for i, j in segments:
            total += cost(i, j)
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_best_segmentation_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for n in range(1, 9):
        table = rng.uniform(0.1, 10.0, size=(n + 1, n + 1))
        parts = rng.integers(1, 9, size=(n + 1, n + 1))
        def cost(i, j, table=table, parts=parts):
            return table[i, j], int(parts[i, j])

        for max_len in range(1, n + 1):
            total, segments = best_segmentation(n, max_len, cost)
            assert total == _brute_force(n, max_len, lambda i, j, cost=cost: cost(i, j)[0])
            assert [s[0] for s in segments] == [0] + [s[1] for s in segments[:-1]]
            assert segments[-1][1] == n
            assert all(1 <= j - i <= max_len and k == parts[i, j] for i, j, k in segments)
            assert sum(table[i, j] for i, j, _ in segments) == pytest.approx(total, rel=1e-12)


def test_best_segmentation_breaks_ties_towards_the_longest_last_segment():
    # every segmentation of an additive cost totals n: each end takes the smallest start
    total, segments = best_segmentation(5, 2, lambda i, j: (float(j - i), 1))
    assert total == 5.0
    assert segments == [(0, 1, 1), (1, 3, 1), (3, 5, 1)]


# --- the list scheduler -------------------------------------------------------------------------


def test_pipeline_schedule_two_parts_by_hand():
    # A -> D(comm) -> E, and an independent chain G -> H -> I later in program order.
    ops = [RangeOp(0, (), COMPUTE), RangeOp(1, (0,), COMM), RangeOp(2, (1,), COMPUTE),
           RangeOp(3, (), COMPUTE), RangeOp(4, (3,), COMPUTE), RangeOp(5, (4,), COMPUTE)]
    times = {0: 1.0, 1: 4.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}
    result = pipeline_schedule(ops, 2, lambda op, part: times[op])
    # Part 0 runs A, G, H, I while its dispatch flies; blocked, compute moves to part 1 (A1 at 4).
    # At 5 part 0's E is ready and earlier in program order, but compute stays on part 1 (G1, H1, I1)
    # until part 1 blocks, then returns to E0 at 8; E1 follows its dispatch (5 -> 9).
    expected = {
        (0, 0): (0, 1), (1, 0): (1, 5), (3, 0): (1, 2), (4, 0): (2, 3), (5, 0): (3, 4),
        (0, 1): (4, 5), (1, 1): (5, 9), (3, 1): (5, 6), (4, 1): (6, 7), (5, 1): (7, 8),
        (2, 0): (8, 9), (2, 1): (9, 10),
    }
    assert {key: (result.start_s[key], result.end_s[key]) for key in expected} == expected
    assert result.makespan_s == 10.0
    assert result.order == ((0, 0), (3, 0), (1, 0), (4, 0), (5, 0), (0, 1), (3, 1), (1, 1), (4, 1), (5, 1),
                            (2, 0), (2, 1))


def test_pipeline_schedule_one_part_is_the_plain_two_stream_schedule():
    ops = [RangeOp(0, (), COMPUTE), RangeOp(1, (0,), COMM), RangeOp(2, (), COMPUTE), RangeOp(3, (1, 2), COMPUTE)]
    times = {0: 2.0, 1: 3.0, 2: 1.0, 3: 1.0}
    result = pipeline_schedule(ops, 1, lambda op, part: times[op])
    # op 2 fills the compute stream while the all-to-all runs; op 3 waits for the all-to-all (2 + 3)
    assert [(result.start_s[i, 0], result.end_s[i, 0]) for i in range(4)] == [(0, 2), (2, 5), (2, 3), (5, 6)]


def test_pipeline_schedule_slows_compute_while_an_all_to_all_runs():
    # A (compute, 4 s) and D (all-to-all, 2 s) start together. Compute runs 1 + 1 = 2x slower while D runs:
    # by 2 A has done 1 s of its 4, the other 3 run at full speed: A ends at 5.
    ops = [RangeOp(0, (), COMPUTE), RangeOp(1, (), COMM)]
    times = {0: 4.0, 1: 2.0}
    result = pipeline_schedule(ops, 1, lambda op, part: times[op], Interference(compute_slowdown=1.0))
    assert (result.end_s[0, 0], result.end_s[1, 0]) == (5.0, 2.0)
    # and the all-to-all 2x slower while A computes: both at half speed until D ends at 4 (A has done 2 s),
    # A's last 2 s at full speed: 6.
    both = Interference(compute_slowdown=1.0, comm_slowdown=1.0)
    result = pipeline_schedule(ops, 1, lambda op, part: times[op], both)
    assert (result.end_s[0, 0], result.end_s[1, 0]) == (6.0, 4.0)


def test_pipeline_schedule_charges_an_all_to_alls_cpu_work_to_the_compute_it_starts_beside():
    # D starts at 0 beside A and takes 1.5 s of A's compute (a CPU host's collective threads): A ends at 5.5.
    ops = [RangeOp(0, (), COMPUTE), RangeOp(1, (), COMM)]
    times = {0: 4.0, 1: 2.0}
    charged = Interference(charge=lambda op, part: 1.5)
    result = pipeline_schedule(ops, 1, lambda op, part: times[op], charged)
    assert (result.end_s[0, 0], result.end_s[1, 0]) == (5.5, 2.0)
    # an all-to-all that starts while nothing computes takes nothing: D waits for A here
    serial = [RangeOp(0, (), COMPUTE), RangeOp(1, (0,), COMM)]
    result = pipeline_schedule(serial, 1, lambda op, part: times[op], charged)
    assert (result.end_s[0, 0], result.end_s[1, 0]) == (4.0, 6.0)


def test_the_dp_picks_the_k_the_engine_finds_best():
    # The Lancet paper's GPT2-L on 4 p3dn nodes (batch 8: k <= 4 by the code's limit). With every range at
    # each allowed k in turn, the engine finds the DP's k fastest.
    scn = scenario("gpt2-l-moe", "p3dn.24xlarge", 4)
    ranges = LancetRanges(scn.graph, scn.cost)
    dp = ranges.plan()
    assert ranges.parts_allowed == (2, 4) and dp.ranges
    config = LancetConfig(dw_scheduling=False)
    plans = [build(Option(f"k={k}", scn.graph, None, ranges.recut(dp, lambda r, k=k: k) or dp), config, scn.cost)
             for k in ranges.parts_allowed]
    best, _ = fastest(plans, scn.cost)
    assert {r.parts for r in dp.ranges} == {ranges.parts_allowed[best]}


def test_emission_order_keeps_zero_length_dependencies_first():
    ops = [RangeOp(0, (), COMPUTE), RangeOp(1, (0,), COMM), RangeOp(2, (1,), COMPUTE)]
    result = pipeline_schedule(ops, 1, lambda op, part: 0.0 if op == 1 else 1.0)
    assert result.start_s[1, 0] == result.start_s[2, 0] == 1.0
    assert result.order == ((0, 0), (1, 0), (2, 0))


# --- capacity passing ---------------------------------------------------------------------------


def _routing(counts, capacity):
    counts = np.asarray(counts, dtype=np.int64)
    kept = counts if capacity is None else np.minimum(counts, capacity)
    return LayerRouting(0, counts, kept, capacity)


def test_uniform_filled_capacity_gives_c_over_k_per_part():
    kept = capacity_passing(_routing(np.full((2, 4), 8), 8), 4)
    assert kept.shape == (4, 2, 4)
    assert np.all(kept == 2)
    # a capacity that k does not divide: the remainder goes to the first parts
    kept = capacity_passing(_routing(np.full((2, 4), 10), 10), 4)
    assert kept[:, 0, 0].tolist() == [3, 3, 2, 2]


def test_skewed_counts_fill_hot_experts_in_early_parts():
    kept = capacity_passing(_routing([[20, 4], [0, 12]], 8), 4)
    assert kept[:, 0, 0].tolist() == [5, 3, 0, 0]   # splits 5,5,5,5; capacity 8 is gone after two parts
    assert kept[:, 0, 1].tolist() == [1, 1, 1, 1]
    assert kept[:, 1, 0].tolist() == [0, 0, 0, 0]
    assert kept[:, 1, 1].tolist() == [3, 3, 2, 0]   # splits 3,3,3,3 against 8


def test_dropless_splits_counts():
    kept = capacity_passing(_routing([[7, 0, 1]], None), 2)
    assert kept[:, 0, :].tolist() == [[4, 0, 1], [3, 0, 0]]


@pytest.mark.parametrize("seed", range(4))
def test_parts_never_exceed_the_capacity_and_keep_what_the_whole_keeps(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 60, size=(4, 6))
    capacity = int(rng.integers(1, 40))
    for parts in (2, 3, 4, 8):
        kept = capacity_passing(_routing(counts, capacity), parts)
        assert kept.min() >= 0
        assert np.all(kept <= split_evenly(counts, parts))
        assert np.array_equal(kept.sum(axis=0), np.minimum(counts, capacity))
        assert kept.sum(axis=0).max() <= capacity


def test_part_traffic_and_expert_shares_come_from_kept_tokens():
    # 4 ranks in EP groups (0, 1) and (2, 3), two experts per rank: expert e sits at position e // 2
    counts = np.array([[6, 0, 2, 9], [1, 1, 1, 1], [0, 8, 4, 4], [2, 2, 2, 2]])
    routing = _routing(counts, 4)
    groups = ((0, 1), (2, 3))
    result = moe_parts(routing, 2, gate=GateKind.SWITCH, groups=groups, experts_per_rank=2, bytes_per_row=12)
    kept = capacity_passing(routing, 2)
    for part in range(2):
        expected = np.zeros((2, 2, 2))
        for g, a, e in itertools.product(range(2), range(2), range(4)):
            expected[g, a, e // 2] += kept[part, groups[g][a], e] * 12
        assert np.array_equal(result.dispatch[part], expected)
        assert np.array_equal(result.combine[part], expected.transpose(0, 2, 1))
    # part 0 of rank 1 (position 1 of group 0): experts 2 and 3 receive rank 0's 1 + 4 (capacity 4: splits
    # 1 and 5 -> min(5, 4)) and rank 1's 1 + 1; the padded op processes 2 experts x 4 slots x 2 sources
    assert kept[0, 0, 2:].tolist() == [1, 4]
    assert result.expert_share[0][1] == pytest.approx((1 + 4 + 1 + 1) / 16)
    shares = np.array(result.expert_share)
    assert np.all(shares.sum(axis=0) <= 1.0 + 1e-12)


def test_real_layer_with_filled_capacity_sums_to_the_padded_op(four_layers_two_nodes):
    graph = four_layers_two_nodes.graph
    ranges = LancetRanges(graph, four_layers_two_nodes.cost)
    dispatch = graph.by_name("L0.dispatch")
    fc1 = graph.by_name("L0.expert_fc1")
    specs = [ranges.part_spec(dispatch, 4, p) for p in range(4)]
    assert np.array_equal(sum(s.traffic for s in specs), dispatch.comm.traffic)
    # uniform routing, factor 1: C = 512 slots split 128 per part, exactly 1/4 of every rank's rows
    assert all(ranges.part_spec(fc1, 4, p).rank_fraction is None for p in range(4))
    assert all(s.fraction == 0.25 for s in specs)


def test_capacity_slack_moves_and_computes_only_kept_tokens():
    scn = _scn(2, 1, capacity_factor=1.25)
    graph = scn.graph
    ranges = LancetRanges(graph, scn.cost)
    fc1, dispatch = graph.by_name("L0.expert_fc1"), graph.by_name("L0.dispatch")
    # 8192 tokens over 16 experts: 512 per (rank, expert), capacity ceil(1.25 * 512) = 640 slots.
    # Each part keeps 512 / 4 = 128 per (rank, expert): a rank's 2 experts x 8 sources give 2048 of the
    # padded 2 x 640 x 8 = 10240 rows.
    share = (2 * 8 * 128) / (2 * 640 * 8)
    for part in range(4):
        assert ranges.part_spec(fc1, 4, part).rank_fraction == pytest.approx((share,) * graph.num_ranks)
        row_bytes = 768 * 4  # hidden x fp32
        assert np.all(ranges.part_spec(dispatch, 4, part).traffic == 2 * 128 * row_bytes)


# --- the whole planner --------------------------------------------------------------------------


@pytest.mark.parametrize(("layers", "nodes"), [(2, 1), (2, 2), (4, 1), (4, 2)])
def test_planner_matches_brute_force_over_segmentations_and_part_counts(layers, nodes):
    scn = _scn(layers, nodes)
    graph = scn.graph
    ranges = LancetRanges(graph, scn.cost)
    groups = ranges.groups
    n = len(groups)
    holding = [i for i, g in enumerate(groups) if any(graph.ops[o].kind is OpKind.ALL_TO_ALL for o in g)]
    max_len = holding[1] - holding[0] - 1 if len(holding) > 1 else n
    assert ranges.max_len == max_len
    ks = [k for k in range(2, 9) if 16 % k == 0]  # per-GPU batch 16 on p3dn

    def partitionable(i, j):
        ops = [graph.ops[o] for g in groups[i:j] for o in g]
        return any(op.kind is OpKind.ALL_TO_ALL for op in ops) and all(Axis.BATCH in op.axes for op in ops)

    best = {}
    for i in range(n):
        for j in range(i + 1, min(n, i + max_len) + 1):
            options = [ranges.cost_at(i, j, 1)]
            if partitionable(i, j):
                options += [ranges.cost_at(i, j, k) for k in ks]
            best[i, j] = min(options)
    plan = plan_partitions(graph, scn.cost)
    assert plan.groups == groups
    assert plan.total_s == pytest.approx(_brute_force(n, max_len, lambda i, j: best[i, j]), rel=1e-12)
    for chosen in plan.ranges:
        assert chosen.cost_s < chosen.unpartitioned_s
        assert chosen.parts in ks


def test_groups_cover_the_forward_and_keep_each_moe_layer_whole(four_layers_two_nodes):
    graph = four_layers_two_nodes.graph
    groups = plan_partitions(graph, four_layers_two_nodes.cost).groups
    forward = [op.id for op in graph.ops if op.phase.value == "forward"]
    assert [o for g in groups for o in g] == forward
    for group in groups:
        kinds = [graph.ops[o].kind for o in group]
        assert kinds.count(OpKind.ALL_TO_ALL) in (0, 2)  # dispatch and combine together
        assert OpKind.PERMUTE not in kinds or len(group) == 1


def test_partitioned_ranges_are_complete_and_topologically_ordered(four_layers_two_nodes):
    graph = four_layers_two_nodes.graph
    plan = plan_partitions(graph, four_layers_two_nodes.cost)
    assert plan.ranges, "two p3dn nodes: partitioning pays off"
    for chosen in plan.ranges:
        inside = set(chosen.ops)
        assert sorted(chosen.order) == sorted((o, p) for o in chosen.ops for p in range(chosen.parts))
        assert set(chosen.part_specs) == set(chosen.order)
        seen = set()
        for op_id, part in chosen.order:
            assert all((dep, part) in seen for dep in graph.ops[op_id].deps if dep in inside)
            seen.add((op_id, part))
        assert {graph.ops[o].layer for o in chosen.ops if graph.ops[o].kind is OpKind.ALL_TO_ALL} == {chosen.layer}


def test_batch_prioritized_gate_keeps_the_router_whole():
    bpr, switch = _scn(4, 2, gate="batch_prioritized"), _scn(4, 2)
    routers = {op.id for op in bpr.graph.ops if op.kind is OpKind.ROUTER and op.phase.value == "forward"}
    ranges = LancetRanges(bpr.graph, bpr.cost)
    for i in range(len(ranges.groups)):
        for j in range(i + 1, len(ranges.groups) + 1):
            if routers & {o for g in ranges.groups[i:j] for o in g}:
                assert ranges.moe_layer(i, j) is None
    plan = plan_partitions(bpr.graph, bpr.cost)
    assert plan.ranges
    assert all(not routers & set(r.ops) for r in plan.ranges)
    assert any(bpr.graph.ops[r.ops[0]].role == "permute" for r in plan.ranges)
    # the same model with a Switch gate does pull its router into a partitioned range
    switch_plan = plan_partitions(switch.graph, switch.cost)
    assert any(switch.graph.ops[o].kind is OpKind.ROUTER for r in switch_plan.ranges for o in r.ops)


def test_part_counts_divide_the_dimension_stay_within_half_of_it_and_eight():
    # the public Lancet code's GetPartitionParts: 2 <= k <= min(dim / 2, max_partition), k | dim
    assert allowed_parts(16, 8) == (2, 4, 8)
    assert allowed_parts(12, 8) == (2, 3, 4, 6)
    assert allowed_parts(24, 8) == (2, 3, 4, 6, 8)
    assert allowed_parts(8, 8) == (2, 4)
    assert allowed_parts(6, 8) == (2, 3)
    assert allowed_parts(16, 3) == (2,)
    assert allowed_parts(3, 8) == allowed_parts(2, 8) == allowed_parts(1, 8) == ()
    scn = _scn(4, 2, batch_per_gpu=12)
    plan = plan_partitions(scn.graph, scn.cost)
    assert plan.ranges
    assert all(r.parts in (2, 3, 4, 6) and r.axis is Axis.BATCH for r in plan.ranges)


def test_the_sequence_is_cut_where_the_batch_allows_no_part_count():
    assert partition_axis(4, 512, 8) == (Axis.BATCH, (2,))
    assert partition_axis(2, 512, 8) == (Axis.SEQUENCE, (2, 4, 8))
    assert partition_axis(1, 4096, 4) == (Axis.SEQUENCE, (2, 4))
    assert partition_axis(1, 3, 8) == (Axis.SEQUENCE, ())
    assert causal_fractions(2) == (0.25, 0.75)
    assert causal_fractions(4) == (1 / 16, 3 / 16, 5 / 16, 7 / 16)


def test_batch_of_one_is_cut_along_the_sequence_with_causal_attention():
    scn = _scn(4, 2, batch_per_gpu=1)
    ranges = LancetRanges(scn.graph, scn.cost)
    assert (ranges.axis, ranges.parts_allowed) == (Axis.SEQUENCE, (2, 4, 8))
    plan = plan_partitions(scn.graph, scn.cost)
    assert plan.ranges and all(r.axis is Axis.SEQUENCE for r in plan.ranges)
    attention = [r for r in plan.ranges if any(scn.graph.ops[o].kind is OpKind.ATTENTION for o in r.ops)]
    assert attention, "a range reaches back into attention"
    for r in attention:
        ops = [o for o in r.ops if scn.graph.ops[o].kind is OpKind.ATTENTION]
        assert r.causal == set(ops)
        at = {key: i for i, key in enumerate(r.order)}
        for op_id in ops:
            assert [r.part_specs[op_id, p].fraction for p in range(r.parts)] == list(causal_fractions(r.parts))
            # in the emitted order every part of attention follows the parts of its input it reads
            for qkv in (d for d in scn.graph.ops[op_id].deps if d in r.ops):
                assert all(at[qkv, q] < at[op_id, p] for p in range(r.parts) for q in range(p + 1))
