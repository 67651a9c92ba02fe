"""The dW pass's clock: when an iteration would end if its ops ran in a given order, buckets included.

Lancet's dW pass moves weight gradients behind later all-to-alls. That hides all-to-all time on the
compute stream, but a moved gradient fills its bucket later, and DDP rebuilds its buckets in the new
order: the all-reduces start later and the last of them may end after the compute does. The clock
weighs both. It list-schedules one program order of the graph (every op but the buckets and the
optimizer) on three streams, as ``estimate.py`` does for plans: compute, the MoE all-to-alls, and the
buckets, re-formed from the order by DDP's rule (``buckets.BucketFiller``) and issued as they fill.
Every op takes its time alone (no sharing, no interference). The estimate is ``(end, compute end)``:
the time the last of the three streams finishes (what the optimizer waits for), then the compute
stream's own end. The rule is applied to bucket sizes alone, with one simplification: the last, partly
filled bucket of each kind is issued after every full one (DDP issues it once its last gradient is ready,
which may be before the other kind's last full bucket).

Orders are compared many times, each differing from the last one kept from some index on: ``keep``
records the clock's state before each index of an order (and after its last), so ``trial`` replays
only the tail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moesim.workload.buckets import BucketSpec
from moesim.workload.ops import OpGraph, OpKind

Estimate = tuple[float, float]  # (end of the last stream, end of the compute stream)


@dataclass(frozen=True, slots=True)
class GradSyncCost:
    """What the clock needs of gradient synchronisation: how buckets fill and what one costs alone
    (``bucket_s(expert, bytes)`` seconds)."""

    spec: BucketSpec
    bucket_s: Callable[[bool, float], float]


# The state before an op: compute free, all-to-all stream free, bucket stream free, then per kind
# (dense, expert) the open bucket's bytes and the end of its latest gradient.
_State = tuple[float, float, float, float, float, float, float]
_START: _State = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class BackwardClock:
    """List schedules of one graph's program orders; ``seconds[op id]`` is each op's time alone."""

    def __init__(self, graph: OpGraph, seconds: Sequence[float], sync: GradSyncCost | None) -> None:
        self._deps = [op.deps for op in graph.ops]
        self._seconds = list(seconds)
        self._on_comm = [op.kind is OpKind.ALL_TO_ALL for op in graph.ops]
        synced = sync.spec.synced if sync is not None else (lambda op: False)
        self._grad = [(int(op.expert), op.param_bytes) if synced(op) else None for op in graph.ops]
        self._cap = sync.spec.cap_bytes if sync is not None else float("inf")
        self._bucket_s = sync.bucket_s if sync is not None else (lambda expert, size: 0.0)
        self._cached: dict[tuple[int, float], float] = {}
        self._end = [0.0] * len(graph.ops)
        self._waited: list[tuple[int, float] | None] = [None] * len(graph.ops)  # (all-to-all, seconds)
        self._idle: dict[int, float] = {}
        self._order: list[int] = []
        self._states: list[_State] = []
        self.kept: Estimate = (0.0, 0.0)

    def idle(self, a2a: int) -> float:
        """Seconds the compute stream of the reference order stands idle waiting for all-to-all ``a2a``:
        the time it leaves uncovered."""
        return self._idle.get(a2a, 0.0)

    def keep(self, order: Sequence[int], start: int = 0) -> Estimate:
        """Make ``order`` the reference (it must equal the previous reference before index ``start``)
        and return its estimate."""
        assert start == 0 or self._order[:start] == list(order[:start]), "orders must share the prefix"
        initial = self._states[start] if start else _START
        for op_id in self._order[start:]:
            self._forget_wait(op_id)
        self._order = list(order)
        del self._states[start:]
        self.kept = self._run(start, initial, record=True)
        return self.kept

    def trial(self, order: Sequence[int], start: int) -> Estimate:
        """The estimate of ``order``, which equals the reference before index ``start``. The reference
        stays as it is (call ``keep`` to adopt ``order``)."""
        reference = self._order
        tail = reference[start:]
        saved = [self._end[op_id] for op_id in tail]  # the tail's ops are the same, in another order
        self._order = list(order)
        try:
            return self._run(start, self._states[start] if start else _START, record=False)
        finally:
            self._order = reference
            for op_id, end in zip(tail, saved, strict=True):
                self._end[op_id] = end

    def _run(self, start: int, initial: _State, record: bool) -> Estimate:
        compute, comm, buckets, open_dense, open_expert, last_dense, last_expert = initial
        open_bytes, last_end = [open_dense, open_expert], [last_dense, last_expert]
        end, deps, seconds, on_comm, grad = self._end, self._deps, self._seconds, self._on_comm, self._grad
        states = self._states
        for op_id in self._order[start:]:
            if record:
                states.append((compute, comm, buckets, open_bytes[0], open_bytes[1], last_end[0], last_end[1]))
            begin = comm if on_comm[op_id] else compute
            binding = -1
            for dep in deps[op_id]:
                if end[dep] > begin:
                    begin, binding = end[dep], dep
            finish = end[op_id] = begin + seconds[op_id]
            if on_comm[op_id]:
                comm = finish
                continue
            if record and binding >= 0 and on_comm[binding]:
                self._note_wait(op_id, binding, begin - compute)
            compute = finish
            gradient = grad[op_id]
            if gradient is not None:
                kind, size = gradient
                open_bytes[kind] += size
                last_end[kind] = finish
                if open_bytes[kind] >= self._cap:
                    buckets = max(buckets, finish) + self._all_reduce_s(kind, open_bytes[kind])
                    open_bytes[kind] = 0.0
        if record:
            states.append((compute, comm, buckets, open_bytes[0], open_bytes[1], last_end[0], last_end[1]))
        for kind in sorted((0, 1), key=lambda k: last_end[k]):  # the last buckets, as they become ready
            if open_bytes[kind] > 0:
                buckets = max(buckets, last_end[kind]) + self._all_reduce_s(kind, open_bytes[kind])
        return max(compute, comm, buckets), compute

    def _note_wait(self, op_id: int, a2a: int, seconds: float) -> None:
        self._waited[op_id] = (a2a, seconds)
        self._idle[a2a] = self._idle.get(a2a, 0.0) + seconds

    def _forget_wait(self, op_id: int) -> None:
        waited = self._waited[op_id]
        if waited is not None:
            self._idle[waited[0]] -= waited[1]
            self._waited[op_id] = None

    def _all_reduce_s(self, kind: int, size: float) -> float:
        key = (kind, size)
        if key not in self._cached:
            self._cached[key] = self._bucket_s(bool(kind), size)
        return self._cached[key]
