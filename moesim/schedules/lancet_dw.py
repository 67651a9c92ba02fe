"""Lancet's backward pass: weight-gradient (dW) ops fill the time of the MoE all-to-alls (paper §4).

Backpropagation needs only dX to go on, so a dW op (and any backward op off the all-to-all's path, such
as a router's dX) may run on the compute stream while an all-to-all it is not connected to is in flight.
This module decides which ops move behind which all-to-all; the Lancet schedule turns the decision
into stream orders. It is pure planning: an op graph and two timing callables in, a value out.

Steps (REFERENCE.md §1, and the public Lancet code's GreedyReorderDWNodes):

1. Reachability over the whole iteration DAG, as Python-int bitsets over program positions.
2. Candidates: backward compute ops that do not descend from a gradient all-reduce. A candidate may
   move behind an all-to-all inside its *window*: after every non-candidate it depends on and before
   every non-candidate that depends on it (gradient all-reduce buckets and what follows them aside: a
   bucket simply waits for its last gradient). Inside the window there is no path to or from the
   all-to-all, and moving the op there keeps the program a valid topological order. Candidates with
   an empty window stay where they are, which may narrow other windows, so this repeats until stable.
3. Greedy best fit, all-to-alls in program order: ``rem`` = the all-to-all's time; while ``rem > 0``,
   take the available candidate whose time is closest to ``rem`` (ties: earliest in program order),
   unless it is longer than ``2 * rem`` and something was already taken; ``rem -= t``. A candidate is
   available once every candidate it depends on is placed. Then every unplaced candidate whose window
   ends at this all-to-all is forced here, so every candidate is placed exactly once.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from moesim.workload.ops import Op, OpGraph, OpKind, Phase

_BACKWARD = frozenset({Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT})
_GRAD_SYNC = frozenset({Phase.GRAD_SYNC, Phase.OPTIMIZER})


@dataclass(frozen=True)
class DWPlacement:
    """Which ops run right after which all-to-all's launch. Keys of ``after``, ``covered_s`` and
    ``a2a_s`` are every all-to-all of the graph (forward ones get nothing); keys of ``overlappable``
    are every candidate, and each candidate appears in exactly one ``after`` list."""

    after: Mapping[int, tuple[int, ...]]         # a2a op id -> op ids placed right after its launch, in order
    overlappable: Mapping[int, tuple[int, ...]]  # candidate op id -> the a2a op ids it may overlap, launch order
    covered_s: Mapping[int, float]               # a2a op id -> seconds of compute placed after it
    a2a_s: Mapping[int, float]                   # a2a op id -> its time as given

    def renumbered(self, new_id: Mapping[int, int]) -> DWPlacement:
        """The same placement with op ids mapped through ``new_id`` (e.g. after buckets were rebuilt)."""
        return DWPlacement(
            after=MappingProxyType({new_id[a]: tuple(new_id[o] for o in ops) for a, ops in self.after.items()}),
            overlappable=MappingProxyType({new_id[c]: tuple(new_id[a] for a in a2as)
                                           for c, a2as in self.overlappable.items()}),
            covered_s=MappingProxyType({new_id[a]: s for a, s in self.covered_s.items()}),
            a2a_s=MappingProxyType({new_id[a]: s for a, s in self.a2a_s.items()}),
        )


@dataclass(frozen=True, slots=True)
class _Reach:
    """The graph in program positions (bit ``i`` of a mask = ``graph.ops[i]``)."""

    deps: tuple[tuple[int, ...], ...]
    ancestors: tuple[int, ...]
    descendants: tuple[int, ...]
    grad_sync_tail: int  # gradient all-reduce ops and everything downstream of one


def place_weight_gradients(
    graph: OpGraph, compute_s: Callable[[Op], float], a2a_s: Callable[[Op], float]
) -> DWPlacement:
    """Assign every candidate op to one all-to-all it may overlap.

    ``compute_s`` (called once per candidate) and ``a2a_s`` (once per all-to-all) return non-negative
    uncontended seconds. Deterministic: the same graph and times give the same placement.
    """
    reach = _reachability(graph)
    windows = _windows(graph, reach)
    durations = {c: compute_s(graph.ops[c]) for c in windows}
    a2as = [i for i, op in enumerate(graph.ops) if op.kind is OpKind.ALL_TO_ALL]
    a2a_times = {a: a2a_s(graph.ops[a]) for a in a2as}
    after = _assign(reach, windows, durations, a2a_times)

    def op_id(position: int) -> int:
        return graph.ops[position].id

    return DWPlacement(
        after=MappingProxyType({op_id(a): tuple(op_id(c) for c in after[a]) for a in a2as}),
        overlappable=MappingProxyType({op_id(c): tuple(op_id(a) for a in w) for c, w in windows.items()}),
        covered_s=MappingProxyType({op_id(a): sum(durations[c] for c in after[a]) for a in a2as}),
        a2a_s=MappingProxyType({op_id(a): a2a_times[a] for a in a2as}),
    )


def program_order(graph: OpGraph, placement: DWPlacement) -> list[int]:
    """Every op id but the gradient buckets and the optimizer, in the order Lancet runs them: program
    order with every placed op removed from its own position and re-inserted right after its
    all-to-all (all-to-alls keep their positions). The result is a valid topological order of those
    ops (asserted); ``buckets.rebucket`` rebuilds the buckets for it. ``placement`` must come from
    ``place_weight_gradients`` on this graph.
    """
    placed = {op_id for ids in placement.after.values() for op_id in ids}
    order: list[int] = []
    for op in graph.ops:
        if op.id not in placed and op.phase not in _GRAD_SYNC:
            order.append(op.id)
            order.extend(placement.after.get(op.id, ()))
    _assert_topological(graph, order)
    return order


def _reachability(graph: OpGraph) -> _Reach:
    position = {op.id: i for i, op in enumerate(graph.ops)}
    deps = tuple(tuple(position[d] for d in op.deps) for op in graph.ops)
    ancestors: list[int] = []
    children: list[list[int]] = [[] for _ in graph.ops]
    for i, op_deps in enumerate(deps):
        mask = 0
        for d in op_deps:
            mask |= ancestors[d] | 1 << d
            children[d].append(i)
        ancestors.append(mask)
    descendants = [0] * len(deps)
    for i in reversed(range(len(deps))):
        mask = 0
        for c in children[i]:
            mask |= descendants[c] | 1 << c
        descendants[i] = mask
    tail = 0
    for i, op in enumerate(graph.ops):
        if op.kind is OpKind.ALL_REDUCE:
            tail |= descendants[i] | 1 << i
    return _Reach(deps, tuple(ancestors), tuple(descendants), tail)


def _windows(graph: OpGraph, reach: _Reach) -> dict[int, tuple[int, ...]]:
    """Candidate position -> positions of the all-to-alls inside its window, in program order."""
    count = len(graph.ops)
    a2as = [i for i, op in enumerate(graph.ops)
            if op.kind is OpKind.ALL_TO_ALL and not reach.grad_sync_tail >> i & 1]
    movable = {i for i, op in enumerate(graph.ops) if _may_move(op) and not reach.grad_sync_tail >> i & 1}
    while True:
        fixed = ((1 << count) - 1) & ~sum(1 << i for i in movable)
        windows: dict[int, tuple[int, ...]] = {}
        for i in sorted(movable):
            after_pos = (reach.ancestors[i] & fixed).bit_length() - 1
            later = reach.descendants[i] & fixed & ~reach.grad_sync_tail
            before_pos = (later & -later).bit_length() - 1 if later else count
            windows[i] = tuple(a2as[bisect_right(a2as, after_pos):bisect_left(a2as, before_pos)])
        stuck = {i for i, window in windows.items() if not window}
        if not stuck:
            return windows
        movable -= stuck


def _may_move(op: Op) -> bool:
    return op.phase in _BACKWARD and not op.kind.is_collective and op.kind is not OpKind.OPTIMIZER


def _assign(
    reach: _Reach,
    windows: Mapping[int, tuple[int, ...]],
    durations: Mapping[int, float],
    a2a_times: Mapping[int, float],
) -> dict[int, list[int]]:
    """All-to-all position -> candidate positions after it: greedy picks, then the forced ones."""
    candidate_mask = sum(1 << c for c in windows)
    waits_for = {c: reach.ancestors[c] & candidate_mask for c in windows}
    overlapping: dict[int, list[int]] = {a: [] for a in a2a_times}
    forced_at: dict[int, list[int]] = {a: [] for a in a2a_times}
    for c in sorted(windows):
        for a in windows[c]:
            overlapping[a].append(c)
        forced_at[windows[c][-1]].append(c)

    placed = 0
    after: dict[int, list[int]] = {}
    for a in sorted(a2a_times):
        remaining = a2a_times[a]
        picks: list[int] = []
        while remaining > 0:
            available = [c for c in overlapping[a] if not placed >> c & 1 and not waits_for[c] & ~placed]
            if not available:
                break
            best = min(available, key=lambda c: (abs(durations[c] - remaining), c))
            if picks and durations[best] > 2 * remaining:
                break
            picks.append(best)
            placed |= 1 << best
            remaining -= durations[best]
        forced = [c for c in forced_at[a] if not placed >> c & 1]
        for c in forced:
            # Windows nest along dependencies: a forced op's candidate ancestors are placed or forced too.
            assert not waits_for[c] & ~placed, f"op at position {c} is forced before a candidate it depends on"
            placed |= 1 << c
        after[a] = picks + forced
    assert placed == candidate_mask, "every candidate must be placed exactly once"
    return after


def _assert_topological(graph: OpGraph, order: list[int]) -> None:
    at = {op_id: index for index, op_id in enumerate(order)}
    assert len(at) == len(order) == sum(op.phase not in _GRAD_SYNC for op in graph.ops), \
        "program order must hold every op but the buckets and the optimizer once"
    for op_id in order:
        assert all(at[d] < at[op_id] for d in graph.ops[op_id].deps), \
            f"{graph.ops[op_id].name} ordered before a dependency"
