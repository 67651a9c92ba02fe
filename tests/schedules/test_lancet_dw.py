"""Lancet's dW placement: small hand-built graphs with chosen times, then invariants on real graphs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import pytest

import moesim
from moesim.plan import StreamKind, Task
from moesim.schedules.lancet_clock import GradSyncCost
from moesim.schedules.lancet_dw import (
    DWPlacement,
    LancetAssignment,
    lancet_assignment,
    place_weight_gradients,
    program_order,
)
from moesim.workload.buckets import BucketSpec
from moesim.workload.ops import Op, OpGraph, OpKind, Phase

FWD, DX, DW = Phase.FORWARD, Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT


def _graph(*specs: tuple[str, OpKind, Phase, tuple[str, ...]]) -> OpGraph:
    """Ops in program order as (name, kind, phase, dep names); ids are positions."""
    ids: dict[str, int] = {}
    ops: list[Op] = []
    for name, kind, phase, deps in specs:
        ids[name] = len(ops)
        ops.append(Op(id=len(ops), name=name, role=name, kind=kind, phase=phase, layer=0,
                      deps=tuple(ids[d] for d in deps)))
    return OpGraph(ops=tuple(ops), num_ranks=1, num_layers=1, moe_layers=(0,))


def _a2a(name: str, *deps: str) -> tuple[str, OpKind, Phase, tuple[str, ...]]:
    return (name, OpKind.ALL_TO_ALL, DX, deps)


def _mm(name: str, phase: Phase, *deps: str) -> tuple[str, OpKind, Phase, tuple[str, ...]]:
    return (name, OpKind.MATMUL, phase, deps)


# x (forward) -> A1 -> y -> A2 -> z : the backward dX chain through two all-to-alls.
_CHAIN = (_mm("x", FWD), _a2a("A1", "x"), _mm("y", DX, "A1"), _a2a("A2", "y"), _mm("z", DX, "A2"))


def _place(graph: OpGraph, seconds: Mapping[str, float]) -> LancetAssignment:
    """Lancet's own assignment (steps 1-3) with the named ops' seconds, 0 for the others."""
    return lancet_assignment(graph, [seconds.get(op.name, 0.0) for op in graph.ops])


def _after(graph: OpGraph, placement: LancetAssignment | DWPlacement) -> dict[str, list[str]]:
    return {graph.ops[a].name: [graph.ops[c].name for c in ids] for a, ids in placement.after.items()}


def _names(graph: OpGraph, ids: list[int] | tuple[int, ...]) -> list[str]:
    return [graph.ops[i].name for i in ids]


def _weights(*seconds: float) -> tuple[OpGraph, dict[str, float]]:
    """The chain plus one dW per time, each depending only on x, so each may overlap A1 and A2."""
    names = [f"w{index}" for index in range(len(seconds))]
    graph = _graph(*_CHAIN, *(_mm(name, DW, "x") for name in names))
    return graph, dict(zip(names, seconds, strict=True))


# --- greedy best fit on the remaining time -------------------------------------------------------------

def test_best_fit_takes_the_closest_to_the_remaining_time() -> None:
    graph, seconds = _weights(6, 5, 3, 2)  # w0=6 w1=5 w2=3 w3=2
    placement = _place(graph, {**seconds, "A1": 10, "A2": 4})
    # A1, rem 10: |6-10|=4 beats 5, 7, 8 -> w0; rem 4: w1 (|5-4|=1) ties w2 (|3-4|=1), w1 is earlier;
    # rem 4-5=-1 stops. A2, rem 4: w2 (1) beats w3 (2); rem 1: w3=2 is not longer than 2*1 -> taken.
    assert _after(graph, placement) == {"A1": ["w0", "w1"], "A2": ["w2", "w3"]}
    assert placement.forced == frozenset()


def test_best_fit_tie_goes_to_program_order() -> None:
    graph, seconds = _weights(6, 3, 5, 2)
    placement = _place(graph, {**seconds, "A1": 10, "A2": 4})
    # A1: w0=6; rem 4: w1=3 and w2=5 tie at 1, w1 first; rem 1: w3=2 (|2-1|=1) beats w2 (4); rem -1.
    assert _after(graph, placement) == {"A1": ["w0", "w1", "w3"], "A2": ["w2"]}


def test_a_long_dw_is_refused_after_a_first_pick_but_a_first_pick_is_always_taken() -> None:
    graph, seconds = _weights(9, 7)
    placement = _place(graph, {**seconds, "A1": 10, "A2": 1})
    # A1: w0=9 (|9-10|=1); rem 1: w1=7 > 2*1, refused. A2, rem 1: w1=7 is the first pick, taken.
    assert _after(graph, placement) == {"A1": ["w0"], "A2": ["w1"]}
    # Not forced: w0 could wait for the long A2, but as A1's first pick it is taken though 7 > 2*1.
    graph, seconds = _weights(7)
    assert _after(graph, _place(graph, {**seconds, "A1": 1, "A2": 100})) == {"A1": ["w0"], "A2": []}


def test_an_exactly_covered_all_to_all_takes_nothing_more() -> None:
    graph, seconds = _weights(4, 1)
    placement = _place(graph, {**seconds, "A1": 4, "A2": 4})
    # A1: w0=4 leaves rem 0 -> stop, although w1 would fit. A2 takes w1.
    assert _after(graph, placement) == {"A1": ["w0"], "A2": ["w1"]}


def test_a_zero_time_all_to_all_gets_only_forced_ops() -> None:
    graph, seconds = _weights(1, 2)
    placement = _place(graph, {**seconds, "A1": 0, "A2": 3})
    assert _after(graph, placement) == {"A1": [], "A2": ["w1", "w0"]}


# --- forced placement and reachability -----------------------------------------------------------------

def _forced_story() -> OpGraph:
    # wf feeds A2, so its only all-to-all is A1; wa may overlap A1 and A2.
    return _graph(_mm("x", FWD), _a2a("A1", "x"), _mm("wf", DW, "x"), _mm("y", DX, "A1"),
                  _a2a("A2", "y", "wf"), _mm("z", DX, "A2"), _mm("wa", DW, "x"))


def test_a_dw_with_a_path_to_an_all_to_all_may_not_overlap_it() -> None:
    graph = _forced_story()
    placement = _place(graph, {"wa": 4, "wf": 10, "A1": 4, "A2": 100})
    assert _names(graph, placement.overlappable[2]) == ["A1"]        # wf -> A2
    assert _names(graph, placement.overlappable[6]) == ["A1", "A2"]  # wa


def test_a_dw_whose_last_all_to_all_is_this_one_is_forced_after_the_greedy_picks() -> None:
    graph = _forced_story()
    placement = _place(graph, {"wa": 4, "wf": 10, "A1": 4, "A2": 100})
    # A1, rem 4: wa fits exactly (|4-4|=0 vs 6) and leaves rem 0; wf must go here all the same.
    assert _after(graph, placement) == {"A1": ["wa", "wf"], "A2": []}
    assert placement.forced == {2}


def test_a_dw_with_a_path_from_an_all_to_all_may_not_overlap_it() -> None:
    graph = _graph(*_CHAIN, _mm("w", DW, "A1"))
    placement = _place(graph, {"w": 1, "A1": 5, "A2": 5})
    assert _names(graph, placement.overlappable[5]) == ["A2"]
    assert _after(graph, placement) == {"A1": [], "A2": ["w"]}


def test_forward_ops_are_never_candidates() -> None:
    graph = _graph(*_CHAIN, _mm("f", FWD), _mm("w", DW, "x"))
    placement = _place(graph, {"w": 1, "A1": 5, "A2": 5})
    assert set(placement.overlappable) == {6}  # w only; x, y, z touch an all-to-all both ways, f is forward


def test_ops_downstream_of_a_gradient_all_reduce_are_excluded() -> None:
    graph = _graph(_mm("x", FWD), _mm("w", DW, "x"), ("ar1", OpKind.ALL_REDUCE, Phase.GRAD_SYNC, ("w",)),
                   ("ar2", OpKind.ALL_REDUCE, Phase.GRAD_SYNC, ("x",)), _a2a("A1", "x"), _mm("y", DX, "A1"),
                   _a2a("A2", "y"), _mm("z", DX, "A2"), _mm("after_ar", DX, "ar1"),
                   ("optimizer", OpKind.OPTIMIZER, Phase.OPTIMIZER, ("ar1", "ar2")))
    placement = _place(graph, {"w": 1, "A1": 0, "A2": 5})
    assert set(placement.overlappable) == {1}  # w; not after_ar, the all-reduces or the optimizer
    assert _after(graph, placement) == {"A1": [], "A2": ["w"]}


def test_program_order_leaves_out_the_buckets_and_the_optimizer() -> None:
    graph = _graph(_mm("x", FWD), _mm("w", DW, "x"), ("ar1", OpKind.ALL_REDUCE, Phase.GRAD_SYNC, ("w",)),
                   _a2a("A1", "x"), _mm("y", DX, "A1"), _a2a("A2", "y"), _mm("z", DX, "A2"),
                   ("optimizer", OpKind.OPTIMIZER, Phase.OPTIMIZER, ("ar1",)))
    seconds = {"x": 1, "w": 1, "A1": 0, "y": 1, "A2": 5, "z": 1}
    placement = place_weight_gradients(graph, _by_name(seconds), _by_name(seconds))
    # w fills A2 (5 s; at its place it covers nothing, A1 taking no time): it goes there.
    assert _after(graph, placement) == {"A1": [], "A2": ["w"]}
    assert _names(graph, program_order(graph, placement)) == ["x", "A1", "y", "A2", "w", "z"]


# --- step 4: the clock keeps only the moves worth what they delay ----------------------------------------

def _by_name(seconds: Mapping[str, float]) -> Callable[[Op], float]:
    return lambda op: seconds[op.name]


def _bucket_story(all_reduce_s: float) -> tuple[OpGraph, DWPlacement]:
    """x -> A1 -> y -> A2 -> z, and two dW ops after x: v (0.1 s, no gradient to sync), w (4 s, one
    bucket of its own, all-reduced in ``all_reduce_s``)."""
    specs = (_mm("x", FWD), _mm("v", DW, "x"), _mm("w", DW, "x"), _a2a("A1", "x"), _mm("y", DX, "A1"),
             _a2a("A2", "y"), _mm("z", DX, "A2"))
    graph = _graph(*specs)
    ops = list(graph.ops)
    ops[2] = replace(ops[2], param_bytes=1000.0)
    graph = replace(graph, ops=tuple(ops))
    spec = BucketSpec(cap_bytes=1000.0, grad_bytes=4, groups={False: ((0, 1),)})
    seconds = {"x": 1, "v": 0.1, "w": 4, "A1": 0.1, "y": 1, "A2": 4, "z": 1}
    sync = GradSyncCost(spec, lambda expert, size: all_reduce_s)
    return graph, place_weight_gradients(graph, _by_name(seconds), _by_name(seconds), sync)


def test_a_move_that_delays_its_bucket_more_than_it_hides_is_undone() -> None:
    # Lancet: A1 (rem 0.1) takes v (exact fit); A2 (rem 4) takes w. Program order x v w A1 y A2 z: compute
    # ends at 11.1 (x 0-1, v -1.1, w -5.1, y -6.1, A2 6.1-10.1, z -11.1) and w's bucket at 5.1 + 7 = 12.1.
    # With both moves (x A1 v y A2 w z) compute ends at 7.2 but w is ready at 6.2 and its bucket ends at 13.2.
    # Back in program order, v first: 13.1 (better, it goes back); then w: 12.1 (better, back too).
    graph, placement = _bucket_story(all_reduce_s=7.0)
    assert _after(graph, placement) == {"A1": [], "A2": []}
    assert placement.proposed == {3: 1, 5: 1}
    assert placement.estimated_s == pytest.approx((12.1, 12.1))


def test_a_move_that_hides_more_than_it_delays_stays() -> None:
    # A 1 s all-reduce: program order ends at 11.1 (the bucket at 6.1); both moves end at 7.2. v back in
    # program order: x v A1 y A2 w z ends at 7.1 (compute and bucket): better, v goes back. w back: 11.1, stays.
    graph, placement = _bucket_story(all_reduce_s=1.0)
    assert _after(graph, placement) == {"A1": [], "A2": ["w"]}
    assert placement.covered_s == {3: 0.0, 5: 4.0}
    assert placement.estimated_s == pytest.approx((11.1, 7.1))


def test_forced_ops_stay_at_their_program_place() -> None:
    # wf may overlap only A1 and is forced there; w2 (after A2 in program order) only A2. Neither is picked
    # by the greedy (the exact fits go first), so both stay where program order runs them.
    graph = _graph(_mm("x", FWD), _a2a("A1", "x"), _mm("wf", DW, "x"), _mm("y", DX, "A1"),
                   _a2a("A2", "y", "wf"), _mm("z", DX, "A2"), _mm("wa", DW, "x"))
    seconds = {"x": 1, "A1": 4, "wf": 10, "y": 1, "A2": 100, "z": 1, "wa": 4}
    assert _after(graph, _place(graph, seconds)) == {"A1": ["wa", "wf"], "A2": []}
    placement = place_weight_gradients(graph, _by_name(seconds), _by_name(seconds))
    # wa behind A1 hides 4 s of it; wf stays at its place (right after A1 in program order anyway).
    assert _after(graph, placement) == {"A1": ["wa"], "A2": []}
    assert placement.forced == {2}
    assert _names(graph, program_order(graph, placement)) == ["x", "A1", "wa", "wf", "y", "A2", "z"]


# --- dW-to-dW ordering ---------------------------------------------------------------------------------

def test_a_candidate_waits_for_the_candidates_it_depends_on() -> None:
    graph = _graph(*_CHAIN, _mm("wp", DW, "x"), _mm("wq", DW, "wp"), _mm("wr", DW, "x"))
    placement = _place(graph, {"wp": 1, "wq": 10, "wr": 9, "A1": 10, "A2": 10})
    # A1, rem 10: wq (exact fit) waits for wp; wr (|9-10|=1) beats wp (9); rem 1: wp (0); rem 0.
    # A2, rem 10: wq, now available.
    assert _after(graph, placement) == {"A1": ["wr", "wp"], "A2": ["wq"]}


def test_without_the_dependency_the_exact_fit_wins() -> None:
    graph = _graph(*_CHAIN, _mm("wp", DW, "x"), _mm("wq", DW, "x"), _mm("wr", DW, "x"))
    placement = _place(graph, {"wp": 1, "wq": 10, "wr": 9, "A1": 10, "A2": 10})
    # A1: wq fits exactly, rem 0. A2, rem 10: wr (1); rem 1: wp (0).
    assert _after(graph, placement) == {"A1": ["wq"], "A2": ["wr", "wp"]}


def test_a_pick_makes_its_dependants_available_at_once() -> None:
    graph = _graph(*_CHAIN, _mm("wp", DW, "x"), _mm("wq", DW, "wp"))
    placement = _place(graph, {"wp": 2, "wq": 8, "A1": 10, "A2": 10})
    # A1: only wp is available -> taken; rem 8: wq now available and fits exactly.
    assert _after(graph, placement) == {"A1": ["wp", "wq"], "A2": []}


# --- real graphs ---------------------------------------------------------------------------------------

def _timed(scenario: moesim.Scenario) -> tuple[Callable[[Op], float], Callable[[Op], float]]:
    cost = scenario.cost

    def compute_s(op: Op) -> float:
        return cost.compute_time(op, Task(id=0, op=op.id, stream=StreamKind.COMPUTE), 0)

    def a2a_s(op: Op) -> float:
        return cost.collective_time(op, Task(id=0, op=op.id, stream=StreamKind.COMM))

    return compute_s, a2a_s


def _closure(graph: OpGraph, start: int, edges: Mapping[int, list[int]]) -> set[int]:
    seen: set[int] = set()
    stack = [start]
    while stack:
        for nxt in edges[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


_SCENARIOS = {
    "gpt2-s-moe": ("gpt2-s-moe", "p3dn.24xlarge", 1, {"model.num_layers": 4}),
    "deepseek-zipf": ("deepseek-v3", "dgx-h100", 1, {
        "model.num_layers": 4, "model.first_k_dense_layers": 1, "training.seq_len": 512,
        "training.routing.kind": "zipf", "training.routing.alpha": 1.2}),
}


@pytest.fixture(scope="module", params=sorted(_SCENARIOS))
def real(request: pytest.FixtureRequest) -> tuple[OpGraph, DWPlacement, Callable[[Op], float]]:
    scenario = moesim.scenario(*_SCENARIOS[request.param])
    compute_s, a2a_s = _timed(scenario)
    return scenario.graph, place_weight_gradients(scenario.graph, compute_s, a2a_s), compute_s


def test_real_graph_every_candidate_is_placed_at_most_once_off_its_all_to_all_paths(real) -> None:
    graph, placement, compute_s = real
    parents = {op.id: list(op.deps) for op in graph.ops}
    children: dict[int, list[int]] = {op.id: [] for op in graph.ops}
    for op in graph.ops:
        for d in op.deps:
            children[d].append(op.id)
    placed = [c for ids in placement.after.values() for c in ids]
    assert len(placed) == len(set(placed)) and set(placed) <= set(placement.overlappable)
    assert placed and placement.estimated_s[1] < placement.estimated_s[0]
    for a, ids in placement.after.items():
        linked = _closure(graph, a, parents) | _closure(graph, a, children)
        assert not linked & set(ids), f"{graph.ops[a].name} got an op on its path"
        assert all(a in placement.overlappable[c] for c in ids)
        assert placement.covered_s[a] == pytest.approx(sum(compute_s(graph.ops[c]) for c in ids))
        if graph.ops[a].phase is FWD:
            assert ids == ()
    for c in placement.overlappable:
        assert graph.ops[c].phase in (DX, DW) and not graph.ops[c].kind.is_collective


def test_real_graph_program_order_is_topological_with_placed_ops_behind_their_all_to_all(real) -> None:
    graph, placement, _ = real
    order = program_order(graph, placement)
    kept = [op for op in graph.ops if op.phase not in (Phase.GRAD_SYNC, Phase.OPTIMIZER)]
    assert sorted(order) == [op.id for op in kept]
    at = {op_id: index for index, op_id in enumerate(order)}
    assert all(at[d] < at[op.id] for op in kept for d in op.deps)
    a2as = [op.id for op in graph.ops if op.kind is OpKind.ALL_TO_ALL]
    assert sorted(a2as, key=at.__getitem__) == a2as
    for a, ids in placement.after.items():
        assert tuple(order[at[a] + 1:at[a] + 1 + len(ids)]) == ids


def test_a_router_dx_may_overlap_exactly_its_own_layers_backward_all_to_alls() -> None:
    scenario = moesim.scenario(*_SCENARIOS["gpt2-s-moe"])
    graph = scenario.graph
    placement = place_weight_gradients(graph, *_timed(scenario))
    # router.dx reads unpermute.dx (as combine.dx does) and feeds ln2.dx (as dispatch.dx's chain does).
    for layer in graph.moe_layers:
        router_dx = graph.by_name(f"L{layer}.router.dx").id
        assert _names(graph, placement.overlappable[router_dx]) == [f"L{layer}.combine.dx", f"L{layer}.dispatch.dx"]
    # A top expert dW may overlap every backward all-to-all after its layer's combine.dx.
    top = max(graph.moe_layers)
    backward = [op for op in graph.ops if op.kind is OpKind.ALL_TO_ALL and op.phase is DX]
    later = [op.name for op in backward if op.id > graph.by_name(f"L{top}.combine.dx").id]
    assert _names(graph, placement.overlappable[graph.by_name(f"L{top}.expert_fc2.dw").id]) == later


def test_deepseek_v3_is_placed_deterministically() -> None:
    scenario = moesim.scenario("deepseek-v3", "dgx-h100", 4)
    assert sum(op.kind is OpKind.ALL_TO_ALL for op in scenario.graph.ops) == 232
    compute_s, a2a_s = _timed(scenario)
    placement = place_weight_gradients(scenario.graph, compute_s, a2a_s)
    again = place_weight_gradients(scenario.graph, compute_s, a2a_s)
    assert dict(again.after) == dict(placement.after)
    assert program_order(scenario.graph, again) == program_order(scenario.graph, placement)
