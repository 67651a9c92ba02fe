"""The engine: plays an ExecutionPlan on SimPy and returns the predicted Timeline.

Every simulated rank runs one SimPy process per stream, which walks that stream's tasks in order.
A task starts when its stream is free and its dependencies (same rank, any stream) are done; a
collective task also waits until every member of its group has reached it (the rendezvous), then
runs as one coflow on the shared flow network. Compute slows down while a collective of its rank runs.

Host-side delays, all 0 unless the cost model sets them (a calibrated CPU host does): a task woken by
another stream starts ``stream_handoff`` later; a collective first waits for its last member, a share
``rendezvous_skew`` of the compute its ranks did since their previous collective (at most
``rendezvous_skew_cap``), and then, where a member computes, for a core until that member's compute
stream goes idle (at most ``comm_latency_under_compute``). Neither wait slows compute: a thread that
waits takes no cycles. The other way round, a compute task woken by another stream while a collective
of its rank runs waits for the core until no collective of the rank runs (at most
``compute_wait_under_comm``); and a collective that starts takes ``collective_cpu`` of the compute its
members run then (the kernel running ends that much later).

Under rank symmetry only rank 0 is simulated: every rank reaches each collective at the same
moment, so the rendezvous is trivial and the collective is one coflow over all sibling groups.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Sequence

import simpy

from moesim.engine import accounting
from moesim.engine.checks import check_plan
from moesim.engine.deadlock import Blocked, deadlock_error
from moesim.engine.interference import RankCompute
from moesim.engine.network import FlowNetwork
from moesim.hardware.interface import CollectiveDemand, CostModel
from moesim.plan import ExecutionPlan, StreamKind, Task
from moesim.timeline import Span, Timeline
from moesim.workload.ops import Op

_STREAMS = tuple(StreamKind)  # span order among tasks starting together: compute, comm, dp_comm


def simulate_plan(plan: ExecutionPlan, cost: CostModel, *, symmetric: bool | None = None) -> Timeline:
    """Play ``plan`` with the times and network demands of ``cost``; return the predicted timeline.

    ``symmetric=None`` simulates rank 0 alone when ``plan.rank_symmetric``; ``True`` forces
    that (the caller vouches every rank runs the same work), ``False`` simulates every rank. Raises
    MoesimError for a plan the engine cannot play (unknown dependency ids, ...) and DeadlockError
    when tasks remain that can never start. Same inputs give the same timeline, bit for bit.
    """
    check_plan(plan, cost)
    if symmetric is None:
        symmetric = plan.rank_symmetric
    play = _Play(plan, cost, symmetric)
    play.run()
    return play.timeline()


class _Cursor:
    """Where one stream of one rank is: its next task and, if blocked, on what."""

    __slots__ = ("position", "dependency", "rendezvous")

    def __init__(self) -> None:
        self.position = 0
        self.dependency: int | None = None
        self.rendezvous: _Rendezvous | None = None


class _Rendezvous:
    """Members of one group arriving at one collective task (full simulation only)."""

    __slots__ = ("members", "arrived", "done", "start")

    def __init__(self, members: tuple[int, ...], done: simpy.Event) -> None:
        self.members = members
        self.arrived: list[int] = []
        self.done = done
        self.start = 0.0


class _Play:
    """One simulation run; owns every piece of mutable state."""

    def __init__(self, plan: ExecutionPlan, cost: CostModel, symmetric: bool) -> None:
        self.plan = plan
        self.cost = cost
        self.symmetric = symmetric
        self.ranks = (0,) if symmetric else tuple(range(plan.graph.num_ranks))
        self.env = simpy.Environment()
        self.contention_delay = float(cost.comm_latency_under_compute)
        self.handoff = float(cost.stream_handoff)
        self.compute_wait = float(cost.compute_wait_under_comm)
        self.skew = float(cost.rendezvous_skew)
        self.skew_cap = float(cost.rendezvous_skew_cap)
        self.since_sync = {rank: 0.0 for rank in self.ranks}  # compute seconds since the rank's last collective
        self.network = FlowNetwork(self.env, cost.capacities, float(cost.comm_slowdown),
                                   track_compute=self.contention_delay > 0)
        slowdown = float(cost.compute_slowdown)
        charged = any(cost.collective_cpu(plan.op_of(task), task) > 0 for task in plan.tasks
                      if plan.op_of(task).kind.is_collective)
        self.compute = {rank: RankCompute(self.env, slowdown, charged) for rank in self.ranks}
        self.ops = [plan.op_of(task) for task in plan.tasks]
        self.membership = accounting.Membership()
        self.finished = {rank: [False] * len(plan.tasks) for rank in self.ranks}
        self.waiters: dict[int, dict[int, simpy.Event]] = {rank: {} for rank in self.ranks}
        self.cursors: dict[tuple[int, StreamKind], _Cursor] = {}
        self.meetings: dict[tuple[int, int], _Rendezvous] = {}
        self.records: list[tuple[int, float, int, int, float]] = []  # rank, start, stream, task, end
        self.idle_waiters: dict[int, list[Callable[[], None]]] = {}  # rank -> called when its compute idles

    def run(self) -> None:
        """Play every stream of every simulated rank until no event is left."""
        streams = [kind for kind in StreamKind if kind in self.plan.streams]
        for rank in self.ranks:
            for kind in streams:
                cursor = self.cursors[rank, kind] = _Cursor()
                self.env.process(self._stream(rank, kind, self.plan.streams[kind], cursor))
        self.env.run()
        blocked = self._blocked()
        if blocked:
            raise deadlock_error(self.plan, blocked)

    def _stream(
        self, rank: int, kind: StreamKind, order: Sequence[int], cursor: _Cursor
    ) -> Generator[simpy.Event, object, None]:
        env, tasks, ops = self.env, self.plan.tasks, self.ops
        finished = self.finished[rank]
        stream_index = _STREAMS.index(kind)
        for position, task_id in enumerate(order):
            cursor.position = position
            task = tasks[task_id]
            handed_over = False
            for dep in task.deps:
                if not finished[dep]:
                    cursor.dependency = dep
                    yield self._finish_of(rank, dep)
                    handed_over = handed_over or tasks[dep].stream is not kind
            cursor.dependency = None
            op = ops[task_id]
            if handed_over and self.handoff:  # woken by another stream: the hand-over between them
                yield env.timeout(self.handoff)
            if handed_over and self.compute_wait and not op.kind.is_collective and self.compute[rank].communicating:
                # woken while a collective of the rank runs: the compute thread waits for the core it holds
                yield env.any_of([self.compute[rank].comm_idle(), env.timeout(self.compute_wait)])
            start = env.now
            if op.kind.is_collective:
                start = yield from self._collective(rank, op, task, cursor)
            else:
                seconds = self.cost.compute_time(op, task, rank)
                self.network.compute_started(rank)
                yield self.compute[rank].run(seconds)
                self.network.compute_ended(rank)
                self.since_sync[rank] += seconds
                if self.idle_waiters.get(rank):  # idle unless this stream starts another kernel at once
                    self.env.timeout(0).callbacks.append(functools.partial(self._compute_idle, rank))
            finished[task_id] = True
            waiter = self.waiters[rank].pop(task_id, None)
            if waiter is not None:
                waiter.succeed()
            self.records.append((rank, start, stream_index, task_id, env.now))
        cursor.position = len(order)

    def _collective(
        self, rank: int, op: Op, task: Task, cursor: _Cursor
    ) -> Generator[simpy.Event, object, float]:
        """Run collective ``task`` on ``rank``; return when it started (after the rendezvous)."""
        assert op.comm is not None
        start = self.env.now
        if self.symmetric:  # every rank arrives now: one coflow over all sibling groups
            done = self.env.event()
            self._launch(op, task, range(len(op.comm.groups)), (rank,), done)
            yield done
            return start
        place = self.membership.of(op, rank)
        if place is None:  # outside every group: like torch.distributed, return at once
            return start
        meeting = self._arrive(rank, op, task, place[0])
        cursor.rendezvous = meeting
        yield meeting.done
        cursor.rendezvous = None
        return meeting.start

    def _finish_of(self, rank: int, task_id: int) -> simpy.Event:
        waiter = self.waiters[rank].get(task_id)
        if waiter is None:
            waiter = self.waiters[rank][task_id] = self.env.event()
        return waiter

    def _arrive(self, rank: int, op: Op, task: Task, group: int) -> _Rendezvous:
        """Register ``rank`` at the rendezvous of ``task`` in ``group``; the last member launches it."""
        key = (task.id, group)
        meeting = self.meetings.get(key)
        if meeting is None:
            assert op.comm is not None
            meeting = self.meetings[key] = _Rendezvous(op.comm.groups[group], self.env.event())
        meeting.arrived.append(rank)
        if len(meeting.arrived) == len(meeting.members):
            del self.meetings[key]
            meeting.start = self.env.now
            self._launch(op, task, (group,), meeting.members, meeting.done)
        return meeting

    def _launch(
        self, op: Op, task: Task, groups: Sequence[int], members: Sequence[int], done: simpy.Event
    ) -> None:
        """Run collective ``task`` of ``groups`` now as one coflow; succeed ``done`` when it ends.

        In order: the wait for the member that arrives last (the rendezvous skew), then, stage by stage,
        the wait for a core where a member computes, the stage's latency and its transfer. Every rank in
        ``members`` counts it as running (compute interference) from the end of each wait for a core to
        the end of the stage: a communication thread that waits for a peer or for a core takes no cycles.
        """
        demand = self.cost.collective_demand(op, task, groups)
        priority = self.plan.priority_of(task)
        drift = 0.0  # the most compute a (played) member did since its previous collective; reset for all
        for member in members:
            if member in self.since_sync:
                drift, self.since_sync[member] = max(drift, self.since_sync[member]), 0.0
        skew = min(self.skew * drift, self.skew_cap)  # the wait for the member that arrives last

        def running(flag: bool) -> None:
            for member in members:
                if flag:
                    self.compute[member].comm_started()
                else:
                    self.compute[member].comm_ended()

        def run_stage(stage: CollectiveDemand) -> None:
            def after() -> None:
                running(False)
                if stage.then is None:
                    done.succeed()
                else:
                    run_stage(stage.then)

            def transfer(_: object = None) -> None:
                self.network.transfer(stage.resources, stage.volume, after, tuple(members), priority)

            def start() -> None:
                running(True)
                if stage is demand:  # its threads' work on the members' cores, taken from what they compute
                    cpu = self.cost.collective_cpu(op, task)
                    for member in members:
                        if member in self.compute:
                            self.compute[member].charge(cpu)
                if stage.latency_s > 0:
                    self.env.timeout(stage.latency_s).callbacks.append(transfer)
                else:
                    transfer()

            busy = [m for m in members if self.network.any_computing((m,))] if self.contention_delay else []
            if busy:  # the communication threads wait for a core: until each busy member's compute idles, at most z
                self._wait_for_cores(busy, start)
            else:
                start()

        if skew > 0:
            self.env.timeout(skew).callbacks.append(lambda _: run_stage(demand))
        else:
            run_stage(demand)

    def _wait_for_cores(self, busy: list[int], then: Callable[[], None]) -> None:
        """Call ``then`` once every rank of ``busy`` has stopped computing or ``contention_delay`` has passed."""
        pending = set(busy)

        def release(rank: int | None) -> None:
            if not pending:
                return
            if rank is None:
                pending.clear()
            else:
                pending.discard(rank)
            if not pending:
                then()

        for rank in busy:
            self.idle_waiters.setdefault(rank, []).append(functools.partial(release, rank))
        self.env.timeout(self.contention_delay).callbacks.append(lambda _: release(None))

    def _compute_idle(self, rank: int, _: object = None) -> None:
        if self.network.any_computing((rank,)):
            return
        for waiter in self.idle_waiters.pop(rank, []):
            waiter()

    def _blocked(self) -> list[Blocked]:
        # In an SPMD plan every rank reaches a collective or none does, so plan cycles show up as
        # dependency waits; a rendezvous wait is named too, for programs where ranks differ.
        blocked = []
        for (rank, kind), cursor in self.cursors.items():
            order = self.plan.streams[kind]
            if cursor.position == len(order):
                continue
            task_id = order[cursor.position]
            if cursor.rendezvous is not None:
                arrived = set(cursor.rendezvous.arrived)
                absent = tuple(m for m in cursor.rendezvous.members if m not in arrived)
                blocked.append(Blocked(rank, kind, task_id, absent=absent))
            else:
                assert cursor.dependency is not None, "a stream stopped without waiting on anything"
                blocked.append(Blocked(rank, kind, task_id, dependency=cursor.dependency))
        return blocked

    def timeline(self) -> Timeline:
        """The spans of every executed task, sorted by (rank, start, stream order, task)."""
        self.records.sort()
        tasks, ops = self.plan.tasks, self.ops
        spans = []
        for rank, start, stream_index, task_id, end in self.records:
            task, op = tasks[task_id], ops[task_id]
            if op.kind.is_collective:
                flops = 0.0
                sent = accounting.sent_bytes(op, task, self.membership.of(op, rank))
            else:
                flops = accounting.compute_flops(op, task, rank)
                sent = accounting.compute_bytes(op, task, rank)
            spans.append(Span(
                rank=rank, stream=_STREAMS[stream_index], task=task_id, op=op.id, name=op.name, kind=op.kind,
                phase=op.phase, layer=op.layer, start=start, end=end, flops=flops, bytes=sent,
            ))
        num_ranks = self.plan.graph.num_ranks
        represents = {0: tuple(range(num_ranks))} if self.symmetric else {r: (r,) for r in self.ranks}
        return Timeline(
            spans=tuple(spans),
            num_ranks=num_ranks,
            represents=represents,
            task_deps=tuple(task.deps for task in self.plan.tasks),
            schedule=self.plan.schedule,
            source="predicted",
            meta={"symmetric": self.symmetric, "simulated_tasks": len(spans)},
        )
