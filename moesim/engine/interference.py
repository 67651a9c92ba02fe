"""Compute/communication interference on one rank: a fluid model with exact piecewise rates.

While any collective of the rank runs (any stream; the engine does not count its waits for a peer or
a core), every compute kernel of that rank progresses at ``1 / (1 + slowdown)`` of full speed; otherwise
at full speed. A collective that starts may also ``charge`` the running kernels a fixed time (its
threads' work on a CPU host's cores). Rates change exactly when the rank's running collective count
moves between zero and non-zero, and only the running compute kernels of that rank are rescheduled
(each kernel's progress is a ``Fluid``, ``fluid.py``). The host may also wait on the count reaching zero
(``comm_idle``): a compute task woken while a collective holds the rank's core.
"""

from __future__ import annotations

import simpy

from moesim.engine.fluid import Fluid


class RankCompute:
    """The compute units of one rank, slowed while that rank communicates.

    Callers pair every ``comm_started`` with one later ``comm_ended``.
    """

    def __init__(self, env: simpy.Environment, slowdown: float, charged: bool = False) -> None:
        self._env = env
        self._slow_rate = 1.0 / (1.0 + slowdown)
        self._slows = slowdown != 0.0  # the rate moves with the collective count
        self._interferes = self._slows or charged  # kernels are tracked (their rate moves, or they are charged)
        self._comm_in_flight = 0
        self._next_id = 0
        self._running: dict[int, Fluid] = {}
        self._idle_waiters: list[simpy.Event] = []

    @property
    def communicating(self) -> bool:
        """Whether a collective of this rank runs now."""
        return self._comm_in_flight > 0

    def comm_idle(self) -> simpy.Event:
        """An event that succeeds when no collective of this rank runs any more (now if none does)."""
        event = self._env.event()
        if self._comm_in_flight:
            self._idle_waiters.append(event)
        else:
            event.succeed()
        return event

    def run(self, seconds: float) -> simpy.Event:
        """An event that succeeds when a kernel of ``seconds`` full-speed work started now is done."""
        if not self._interferes:
            return self._env.timeout(seconds)
        done = self._env.event()
        kernel_id = self._next_id
        self._next_id += 1

        def end() -> None:
            del self._running[kernel_id]
            done.succeed()

        kernel = self._running[kernel_id] = Fluid(seconds, self._env.now, end)
        kernel.retime(self._env, self._slow_rate if self._comm_in_flight else 1.0)
        return done

    def comm_started(self) -> None:
        self._comm_in_flight += 1
        if self._comm_in_flight == 1:
            self._set_rate(self._slow_rate)

    def comm_ended(self) -> None:
        assert self._comm_in_flight > 0, "comm_ended without comm_started"
        self._comm_in_flight -= 1
        if self._comm_in_flight == 0:
            self._set_rate(1.0)
            waiters, self._idle_waiters = self._idle_waiters, []
            for event in waiters:
                event.succeed()

    def charge(self, seconds: float) -> None:
        """Every kernel running now ends ``seconds`` later (at its current rate): work taken from it now."""
        if not seconds or not self._running:
            return
        assert self._interferes, "charge on a RankCompute built without charged=True"
        self._reschedule(None, seconds)

    def _set_rate(self, rate: float) -> None:
        if self._slows:  # charged only, the rate stays 1: nothing to reschedule
            self._reschedule(rate, 0.0)

    def _reschedule(self, rate: float | None, extra_s: float) -> None:
        """Give every running kernel ``rate`` (None: keep its own) and ``extra_s`` more seconds of work at that
        rate, from now."""
        for kernel in list(self._running.values()):
            kernel.retime(self._env, kernel.rate if rate is None else rate, extra_s)
