"""Lancet's backward pass: weight-gradient (dW) ops fill the time of the MoE all-to-alls (paper §4).

Backpropagation needs only dX to go on, so a dW op (and any backward op off the all-to-all's path, such
as a router's dX) may run on the compute stream while an all-to-all it is not connected to is in flight.
This module decides which ops move behind which all-to-all; the Lancet schedule turns the decision
into stream orders. It is pure planning: an op graph, timing callables and the bucketing in, a value out.

Steps (after the paper's Algorithm 1 and the public Lancet code's GreedyReorderDWNodes):

1. Reachability over the whole iteration DAG, as Python-int bitsets over program positions.
2. Candidates: backward compute ops that do not descend from a gradient all-reduce. A candidate may
   move behind an all-to-all inside its *window*: after every non-candidate it depends on and before
   every non-candidate that depends on it (gradient all-reduce buckets and what follows them aside: a
   bucket simply waits for its last gradient). Inside the window there is no path to or from the
   all-to-all. Candidates with an empty window stay where they are, which may narrow other windows,
   so this repeats until stable.
3. Lancet's greedy, all-to-alls in program order: ``rem`` = the all-to-all's time; while ``rem > 0``,
   take the available candidate whose time is closest to ``rem`` (ties: earliest in program order),
   unless it is longer than ``2 * rem`` and something was already taken; ``rem -= t``. A candidate is
   available once every candidate it depends on is placed. Then every unplaced candidate whose window
   ends at this all-to-all is forced here, so every candidate is placed exactly once.
4. What the moves delay (``lancet_clock``). The forced ops stay at their place in program order (unless
   a candidate they depend on went behind a later all-to-all: they follow it). Then, in program order,
   each moved op goes back to its place if the clock's estimate (iteration end, then compute end) is
   no worse that way. A moved gradient fills its bucket later and DDP rebuilds its buckets in the new
   order; the clock sees when each all-reduce can then start and end, so no move stays that exposes
   more gradient synchronisation than it hides all-to-all time.

Step 4 is ours; the Lancet code reorders without a look at the all-reduces. Its forced rule matters
on graphs with gradient buckets: a dW's window then runs to the last backward all-to-all, so the rule
piles every dW the greedy did not pick behind that one all-to-all, and every bucket waits for them.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from moesim.schedules.lancet_clock import BackwardClock, GradSyncCost
from moesim.workload.ops import Op, OpGraph, OpKind, Phase

_BACKWARD = frozenset({Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT})
_GRAD_SYNC = frozenset({Phase.GRAD_SYNC, Phase.OPTIMIZER})


@dataclass(frozen=True)
class DWPlacement:
    """Which ops run right after which all-to-all's launch. Keys of ``after``, ``proposed``, ``covered_s``
    and ``a2a_s`` are every all-to-all of the graph (forward ones get nothing); keys of ``overlappable``
    are every candidate, and each candidate appears in at most one ``after`` list (the others stay put).
    ``estimated_s`` is the clock's estimate of the iteration's end in program order and with the moves."""

    after: Mapping[int, tuple[int, ...]]         # a2a op id -> op ids placed right after its launch, in order
    proposed: Mapping[int, int]                  # a2a op id -> how many ops Lancet's greedy placed there
    forced: frozenset[int]                       # the candidates Lancet's greedy placed by its forced rule
    overlappable: Mapping[int, tuple[int, ...]]  # candidate op id -> the a2a op ids it may overlap, launch order
    covered_s: Mapping[int, float]               # a2a op id -> seconds of compute placed after it
    a2a_s: Mapping[int, float]                   # a2a op id -> its time as given
    estimated_s: tuple[float, float]             # the clock's iteration end: (program order, moved)

    def renumbered(self, new_id: Mapping[int, int]) -> DWPlacement:
        """The same placement with op ids mapped through ``new_id`` (e.g. after buckets were rebuilt)."""
        return DWPlacement(
            after=MappingProxyType({new_id[a]: tuple(new_id[o] for o in ops) for a, ops in self.after.items()}),
            proposed=MappingProxyType({new_id[a]: n for a, n in self.proposed.items()}),
            forced=frozenset(new_id[c] for c in self.forced),
            overlappable=MappingProxyType({new_id[c]: tuple(new_id[a] for a in a2as)
                                           for c, a2as in self.overlappable.items()}),
            covered_s=MappingProxyType({new_id[a]: s for a, s in self.covered_s.items()}),
            a2a_s=MappingProxyType({new_id[a]: s for a, s in self.a2a_s.items()}),
            estimated_s=self.estimated_s,
        )


@dataclass(frozen=True, slots=True)
class _Reach:
    """The graph in program positions (bit ``i`` of a mask = ``graph.ops[i]``)."""

    ancestors: tuple[int, ...]
    descendants: tuple[int, ...]
    grad_sync_tail: int  # gradient-sync ops (buckets, their copies) and everything downstream of one


@dataclass(frozen=True, slots=True)
class LancetAssignment:
    """Steps 1-3, Lancet's own answer: every candidate behind one all-to-all (greedy picks, then the forced
    ones), keyed and listed by op id."""

    after: Mapping[int, tuple[int, ...]]         # a2a -> candidates placed right after it, in order
    forced: frozenset[int]                       # the candidates the forced rule placed
    overlappable: Mapping[int, tuple[int, ...]]  # candidate -> the a2as it may overlap, launch order


def lancet_assignment(graph: OpGraph, seconds: Sequence[float]) -> LancetAssignment:
    """Steps 1-3 with ``seconds[op id]`` the time of each candidate and each all-to-all (op ids must be
    program positions)."""
    assert all(op.id == index for index, op in enumerate(graph.ops)), "op ids are program positions"
    reach = _reachability(graph)
    windows = _windows(graph, reach)
    a2as = [op.id for op in graph.ops if op.kind is OpKind.ALL_TO_ALL]
    after, forced = _assign(reach, windows, seconds, a2as)
    return LancetAssignment(MappingProxyType({a: tuple(ids) for a, ids in after.items()}), frozenset(forced),
                            MappingProxyType(dict(windows)))


def place_weight_gradients(
    graph: OpGraph, compute_s: Callable[[Op], float], a2a_s: Callable[[Op], float],
    sync: GradSyncCost | None = None,
) -> DWPlacement:
    """Steps 1-4: Lancet's assignment, then only the moves the clock finds worth what they delay.

    ``compute_s`` (called once per compute op outside the gradient sync) and ``a2a_s`` (once per
    all-to-all) return non-negative uncontended seconds; ``sync`` prices the gradient buckets (None:
    no bucket). Op ids must be program positions. The clock's estimate of the result is never worse
    than program order's. Deterministic: the same inputs give the same placement.
    """
    order = [op.id for op in graph.ops if op.phase not in _GRAD_SYNC]
    seconds = [0.0] * len(graph.ops)
    for op_id in order:
        op = graph.ops[op_id]
        if op.kind is OpKind.ALL_TO_ALL:
            seconds[op_id] = a2a_s(op)
        elif not op.kind.is_collective:
            seconds[op_id] = compute_s(op)
    lancet = lancet_assignment(graph, seconds)
    picked = _unforced(graph, lancet)
    clock = BackwardClock(graph, seconds, sync)
    before = clock.keep(order)
    moved = _moved_all(order, picked)
    clock.keep(moved)
    back = _veto(graph, moved, [c for ids in picked.values() for c in ids], clock)
    after = {a: tuple(c for c in ids if c not in back) for a, ids in picked.items()}
    if clock.kept > before:  # step 4 stopped in a worse order than the program's: move nothing
        after = {a: () for a in after}
        clock.keep(order)
    return DWPlacement(
        after=MappingProxyType(after),
        proposed=MappingProxyType({a: len(ids) for a, ids in lancet.after.items()}),
        forced=lancet.forced,
        overlappable=lancet.overlappable,
        covered_s=MappingProxyType({a: sum(seconds[c] for c in ids) for a, ids in after.items()}),
        a2a_s=MappingProxyType({a: seconds[a] for a in after}),
        estimated_s=(before[0], clock.kept[0]),
    )


def program_order(graph: OpGraph, placement: DWPlacement) -> list[int]:
    """Every op id but the gradient buckets and the optimizer, in the order Lancet runs them: program
    order with every placed op removed from its own position and re-inserted right after its
    all-to-all (all-to-alls keep their positions). The result is a valid topological order of those
    ops (asserted); ``buckets.rebucket`` rebuilds the buckets for it. ``placement`` must come from
    ``place_weight_gradients`` on this graph.
    """
    order = _moved_all([op.id for op in graph.ops if op.phase not in _GRAD_SYNC], placement.after)
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
        if op.phase is Phase.GRAD_SYNC:  # buckets and their copies: rebuilt for whatever order is chosen
            tail |= descendants[i] | 1 << i
    return _Reach(tuple(ancestors), tuple(descendants), tail)


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


def _assign(reach: _Reach, windows: Mapping[int, tuple[int, ...]], seconds: Sequence[float],
            a2as: Sequence[int]) -> tuple[dict[int, list[int]], set[int]]:
    """Step 3: all-to-all -> candidates after it (greedy picks, then the forced ones), and the forced set."""
    candidates = sum(1 << c for c in windows)
    waits_for = {c: reach.ancestors[c] & candidates for c in windows}
    overlapping: dict[int, list[int]] = {a: [] for a in a2as}
    forced_at: dict[int, list[int]] = {a: [] for a in a2as}
    for c in sorted(windows):
        for a in windows[c]:
            overlapping[a].append(c)
        forced_at[windows[c][-1]].append(c)
    placed = 0
    after: dict[int, list[int]] = {}
    forced_all: set[int] = set()
    for a in a2as:
        remaining = seconds[a]
        picks: list[int] = []
        while remaining > 0:
            available = [c for c in overlapping[a] if not placed >> c & 1 and not waits_for[c] & ~placed]
            if not available:
                break
            best = min(available, key=lambda c: (abs(seconds[c] - remaining), c))
            if picks and seconds[best] > 2 * remaining:
                break
            picks.append(best)
            placed |= 1 << best
            remaining -= seconds[best]
        forced = [c for c in forced_at[a] if not placed >> c & 1]
        for c in forced:
            # Windows nest along dependencies: a forced op's candidate ancestors are placed or forced too.
            assert not waits_for[c] & ~placed, f"op at position {c} is forced before a candidate it depends on"
            placed |= 1 << c
        after[a] = picks + forced
        forced_all.update(forced)
    assert placed == candidates, "every candidate is placed exactly once"
    return after, forced_all


def _unforced(graph: OpGraph, lancet: LancetAssignment) -> dict[int, list[int]]:
    """Step 4's start: Lancet's assignment without its forced ops, which stay at their program place
    unless an op they depend on was moved behind a later all-to-all: they then follow it there (forced
    ops are taken in program order, so a chain of them follows along)."""
    picked = {a: [c for c in ids if c not in lancet.forced] for a, ids in lancet.after.items()}
    slot = {c: a for a, ids in picked.items() for c in ids}
    for c in sorted(lancet.forced):
        latest = max((slot[dep] for dep in graph.ops[c].deps if dep in slot), default=-1)
        if latest > c:
            picked[latest].append(c)
            slot[c] = latest
    return picked


def _veto(graph: OpGraph, order: list[int], moved: Sequence[int], clock: BackwardClock) -> set[int]:
    """Step 4: in ``order`` (the clock's reference), each op of ``moved``, in program order, goes back to its
    place in program order where the clock's estimate is no worse. Returns the ops put back."""
    children: dict[int, list[int]] = {c: [] for c in moved}
    for op in graph.ops:
        for dep in op.deps:
            if dep in children:
                children[dep].append(op.id)
    home = set(order).difference(moved)  # ops at their program place: in program order within ``order``
    back: set[int] = set()
    index = {op_id: i for i, op_id in enumerate(order)}
    for c in sorted(moved):
        after_home = next((p for p in range(c + 1, len(graph.ops)) if p in home), None)
        if after_home is None:
            continue
        if any(index[d] >= index[after_home] for d in graph.ops[c].deps if d in index) or \
                any(index.get(child, len(order)) < index[after_home] for child in children[c]):
            continue  # its place would run it before a dependency or after a dependant: it stays moved
        trial = [op_id for op_id in order if op_id != c]
        slot = trial.index(after_home)
        trial.insert(slot, c)
        start = min(index[c], slot)
        if clock.trial(trial, start) <= clock.kept:  # ties: its program place
            clock.keep(trial, start)
            order = trial
            home.add(c)
            back.add(c)
            index = {op_id: i for i, op_id in enumerate(order)}
    return back


def _moved_all(order: Sequence[int], after: Mapping[int, Sequence[int]]) -> list[int]:
    """``order`` with each op of ``after[a]`` taken from its place and run right after ``a``, in list order."""
    chosen = {c for ids in after.values() for c in ids}
    result: list[int] = []
    for op_id in order:
        if op_id not in chosen:
            result.append(op_id)
            result.extend(after.get(op_id, ()))
    return result


def _assert_topological(graph: OpGraph, order: list[int]) -> None:
    at = {op_id: index for index, op_id in enumerate(order)}
    assert len(at) == len(order) == sum(op.phase not in _GRAD_SYNC for op in graph.ops), \
        "program order must hold every op but the buckets and the optimizer once"
    for op_id in order:
        assert all(at[d] < at[op_id] for d in graph.ops[op_id].deps), \
            f"{graph.ops[op_id].name} ordered before a dependency"
