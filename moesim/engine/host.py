"""Host effects: what a host adds to the plan's semantics, rendezvous and flow sharing (the engine's core).

The core calls a ``Host`` at four points of each rank's streams and each collective: before a task starts
(``before_task``), around each compute kernel (``compute_started`` / ``compute_ended``), when a collective
launches (``rendezvous_wait``) and before each of its stages moves bytes (``before_stage``, then
``stage_started``). ``Host`` does nothing there, as on a GPU, where the host queues work ahead of the device.
``CpuHost`` plays a CPU host's ``HostCosts`` (the harness's gloo mode, each stream a thread of the rank's
process on the rank's cores):

- hand-over: a task woken by a task of another stream starts ``stream_handoff`` later;
- a compute task so woken while a collective of its rank runs waits for the core until no collective
  of the rank runs, at most ``compute_wait_under_comm``;
- a collective first waits for the member that arrives last: ``rendezvous_skew`` times the most compute
  its (played) members did since their previous collective, at most ``rendezvous_skew_cap``;
- then, stage by stage, where a member computes, for a core: until that member's compute stream goes
  idle, at most ``comm_latency_under_compute``; neither wait slows compute (a waiting thread takes no
  cycles);
- a collective that starts takes ``collective_cpu`` of the compute its members run then.

Every wait is a SimPy event the calling process yields. A wait that ends inside the handling of another
event (a rank going idle, a time limit) resumes its process ahead of the events already due at that
instant (``Resume``), as a direct call would, so a wait never reorders what happens at one moment.
Framework effects (autograd bookkeeping, the allocator) plug in here too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Sequence
from typing import Any

import simpy
from simpy.events import URGENT

from moesim.engine.interference import RankCompute
from moesim.hardware.interface import HostCosts
from moesim.plan import ExecutionPlan, Task
from moesim.workload.ops import Op

Wait = Generator[simpy.Event, Any, None]


class Resume(simpy.Event):
    """An event that, once ``fire``-d, resumes its waiter ahead of the other events due at the same instant,
    as a direct call would have run it (SimPy's URGENT priority, as a process's start uses)."""

    def fire(self) -> None:
        self._ok = True
        self._value = None
        self.env.schedule(self, URGENT)


class Host:
    """A host that adds nothing: the default, and every GPU preset."""

    def before_task(self, rank: int, op: Op, handed_over: bool) -> Wait:
        """Wait before a task of ``rank`` starts; ``handed_over``: it waited for a task of another stream."""
        yield from ()

    def compute_started(self, rank: int) -> None:
        """A compute kernel of ``rank`` started."""

    def compute_ended(self, rank: int, seconds: float) -> None:
        """A compute kernel of ``rank`` of ``seconds`` full-speed work ended."""

    def rendezvous_wait(self, members: Sequence[int]) -> float:
        """Seconds a collective of ``members`` launched now waits for the member that arrives last."""
        return 0.0

    def before_stage(self, members: Sequence[int]) -> Wait:
        """Wait before a stage of a collective of ``members`` starts moving its bytes."""
        yield from ()

    def stage_started(self, op: Op, task: Task, first: bool, members: Sequence[int]) -> None:
        """A stage of collective ``task`` (a part of ``op``) started; ``first``: the collective's first."""


def takes_compute(costs: HostCosts, plan: ExecutionPlan) -> bool:
    """Whether a collective of ``plan`` takes work from the compute it overlaps (``collective_cpu``)."""
    return any(costs.collective_cpu(plan.op_of(task), task) > 0 for task in plan.tasks
               if plan.op_of(task).kind.is_collective)


def host_for(env: simpy.Environment, costs: HostCosts, charged: bool, compute: dict[int, RankCompute]) -> Host:
    """``CpuHost`` where ``costs`` set a delay or the plan's collectives take compute (``charged``), else
    the no-op ``Host``."""
    delays = (costs.stream_handoff, costs.compute_wait_under_comm, costs.comm_latency_under_compute,
              costs.rendezvous_skew)
    return CpuHost(env, costs, compute) if charged or any(delays) else Host()


class CpuHost(Host):
    """A CPU host's delays (see the module docstring), for the ranks ``compute`` holds."""

    def __init__(self, env: simpy.Environment, costs: HostCosts, compute: dict[int, RankCompute]) -> None:
        self._env = env
        self._costs = costs
        self._compute = compute
        self._computing = dict.fromkeys(compute, 0)        # rank -> kernels running
        self._since_sync = dict.fromkeys(compute, 0.0)     # rank -> compute seconds since its last collective
        self._idle_waiters: dict[int, list[Callable[[], None]]] = {}  # rank -> called when its compute idles

    def before_task(self, rank: int, op: Op, handed_over: bool) -> Wait:
        costs = self._costs
        if handed_over and costs.stream_handoff:  # woken by another stream: the hand-over between them
            yield self._env.timeout(costs.stream_handoff)
        if handed_over and costs.compute_wait_under_comm and not op.kind.is_collective \
                and self._compute[rank].communicating:
            # woken while a collective of the rank runs: the compute thread waits for the core it holds
            yield self._env.any_of([self._compute[rank].comm_idle(), self._env.timeout(costs.compute_wait_under_comm)])

    def compute_started(self, rank: int) -> None:
        self._computing[rank] += 1

    def compute_ended(self, rank: int, seconds: float) -> None:
        self._computing[rank] -= 1
        self._since_sync[rank] += seconds
        if self._idle_waiters.get(rank):  # idle unless this stream starts another kernel at once
            self._env.timeout(0).callbacks.append(functools.partial(self._compute_idle, rank))

    def rendezvous_wait(self, members: Sequence[int]) -> float:
        drift = 0.0  # the most compute a (played) member did since its previous collective; reset for all
        for member in members:
            if member in self._since_sync:
                drift, self._since_sync[member] = max(drift, self._since_sync[member]), 0.0
        return min(self._costs.rendezvous_skew * drift, self._costs.rendezvous_skew_cap)

    def before_stage(self, members: Sequence[int]) -> Wait:
        limit = self._costs.comm_latency_under_compute
        busy = [m for m in members if self._computing.get(m, 0)] if limit else []
        if busy:  # the communication threads wait for a core: until each busy member's compute idles, at most z
            yield self._cores_free(busy, limit)

    def stage_started(self, op: Op, task: Task, first: bool, members: Sequence[int]) -> None:
        if not first:
            return
        work = self._costs.collective_cpu(op, task)  # its threads' work on the members' cores, taken from compute
        for member in members:
            if member in self._compute:
                self._compute[member].charge(work)

    def _cores_free(self, busy: list[int], limit: float) -> Resume:
        """An event fired once every rank of ``busy`` has stopped computing or ``limit`` seconds have passed."""
        free, pending = Resume(self._env), set(busy)

        def release(rank: int | None, _: object = None) -> None:
            if not pending:
                return
            if rank is None:
                pending.clear()
            else:
                pending.discard(rank)
            if not pending:
                free.fire()

        for rank in busy:
            self._idle_waiters.setdefault(rank, []).append(functools.partial(release, rank))
        self._env.timeout(limit).callbacks.append(functools.partial(release, None))
        return free

    def _compute_idle(self, rank: int, _: object = None) -> None:
        if self._computing.get(rank, 0):
            return
        for waiter in self._idle_waiters.pop(rank, []):
            waiter()
