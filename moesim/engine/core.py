"""The engine: plays an ExecutionPlan on SimPy and returns the predicted Timeline.

Every simulated rank runs one SimPy process per stream, which walks that stream's tasks in order.
A task starts when its stream is free and its dependencies (same rank, any stream) are done; a
collective task also waits until every member of its group has reached it (the rendezvous), then a
process of its own runs it: stage by stage, the latency, then the transfer as one coflow on the shared
flow network. Compute slows down while a collective of its rank runs, and a transfer while a member
computes (interference). Whatever a host adds (hand-over between streams, waits for a core, a
collective's work on the cores, the wait for the last member) is the host component's
(``engine/host.py``; nothing on a GPU).

Under rank symmetry only rank 0 is simulated: every rank reaches each collective at the same
moment, so the rendezvous is trivial and the collective is one coflow over all sibling groups.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import simpy

from moesim.engine import accounting
from moesim.engine.checks import check_plan
from moesim.engine.deadlock import Blocked, deadlock_error
from moesim.engine.host import Resume, host_for, takes_compute
from moesim.engine.interference import RankCompute
from moesim.engine.network import FlowNetwork
from moesim.hardware.interface import CostModel
from moesim.plan import ExecutionPlan, StreamKind, Task
from moesim.timeline import Timeline
from moesim.workload.ops import Op


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
        self.network = FlowNetwork(self.env, cost.capacities, float(cost.comm_slowdown))
        charged = takes_compute(cost.host, plan)
        self.compute = {rank: RankCompute(self.env, float(cost.compute_slowdown), charged) for rank in self.ranks}
        self.host = host_for(self.env, cost.host, charged, self.compute)
        self.ops = [plan.op_of(task) for task in plan.tasks]
        self.membership = accounting.Membership()
        self.finished = {rank: [False] * len(plan.tasks) for rank in self.ranks}
        self.waiters: dict[int, dict[int, simpy.Event]] = {rank: {} for rank in self.ranks}
        self.cursors: dict[tuple[int, StreamKind], _Cursor] = {}
        self.meetings: dict[tuple[int, int], _Rendezvous] = {}
        self.records: list[tuple[int, float, int, float]] = []  # rank, start, task, end

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
        """One stream of one rank: each task in order, once its dependencies are done."""
        env, tasks, ops, host = self.env, self.plan.tasks, self.ops, self.host
        finished = self.finished[rank]
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
            yield from host.before_task(rank, op, handed_over)
            start = env.now
            if op.kind.is_collective:
                start = yield from self._collective(rank, op, task, cursor)
            else:
                seconds = self.cost.compute_time(op, task, rank)
                self.network.compute_started(rank)
                host.compute_started(rank)
                yield self.compute[rank].run(seconds)
                self.network.compute_ended(rank)
                host.compute_ended(rank, seconds)
            finished[task_id] = True
            waiter = self.waiters[rank].pop(task_id, None)
            if waiter is not None:
                waiter.succeed()
            self.records.append((rank, start, task_id, env.now))
        cursor.position = len(order)

    def _collective(
        self, rank: int, op: Op, task: Task, cursor: _Cursor
    ) -> Generator[simpy.Event, object, float]:
        """Run collective ``task`` on ``rank``; return when it started (after the rendezvous)."""
        assert op.comm is not None
        start = self.env.now
        if self.symmetric:  # every rank arrives now: one coflow over all sibling groups
            done = self.env.event()
            self.env.process(self._run(op, task, range(len(op.comm.groups)), (rank,), done))
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
            self.env.process(self._run(op, task, (group,), meeting.members, meeting.done))
        return meeting

    def _run(
        self, op: Op, task: Task, groups: Sequence[int], members: Sequence[int], done: simpy.Event
    ) -> Generator[simpy.Event, object, None]:
        """The process of collective ``task`` over ``groups`` once its members met; succeeds ``done`` at its end.

        The host's wait for the member that arrives last, then stage by stage: the host's wait before it
        moves bytes, the stage's latency and its transfer as one coflow. Every rank in ``members`` counts
        it as running (compute interference) from the end of the host's wait to the end of the stage.
        """
        demand = self.cost.collective_demand(op, task, groups)
        priority = self.plan.priority_of(task)
        skew = self.host.rendezvous_wait(members)
        if skew > 0:
            yield self.env.timeout(skew)
        for stage in demand.stages():
            yield from self.host.before_stage(members)
            self._communicating(members, True)
            self.host.stage_started(op, task, stage is demand, members)
            if stage.latency_s > 0:
                yield self.env.timeout(stage.latency_s)
            moved = Resume(self.env)
            self.network.transfer(stage.resources, stage.volume, moved.fire, tuple(members), priority)
            yield moved
            self._communicating(members, False)
        done.succeed()

    def _communicating(self, members: Sequence[int], running: bool) -> None:
        for member in members:
            if member in self.compute:
                if running:
                    self.compute[member].comm_started()
                else:
                    self.compute[member].comm_ended()

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
        spans = accounting.spans(self.plan, self.records)
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
