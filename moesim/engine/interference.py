"""Compute/communication interference on one rank: a fluid model with exact piecewise rates.

While any collective of the rank runs (any stream; the engine does not count its waits for a peer or
a core), every compute kernel of that rank progresses at ``1 / (1 + slowdown)`` of full speed; otherwise
at full speed. A collective that starts may also ``charge`` the running kernels a fixed time (its
threads' work on a CPU host's cores). Rates change exactly when the rank's running collective count
moves between zero and non-zero, and only the running compute kernels of that rank are rescheduled: each
keeps one valid wake-up, invalidated by a version number when its rate changes. The engine also waits on the count
reaching zero (``comm_idle``): a compute task woken while a collective holds the rank's core.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy


class _Kernel:
    __slots__ = ("work_left", "rate", "updated_at", "version", "done")

    def __init__(self, work_left: float, rate: float, updated_at: float, done: simpy.Event) -> None:
        self.work_left = work_left  # full-speed seconds still to do, as of ``updated_at``
        self.rate = rate
        self.updated_at = updated_at
        self.version = 0
        self.done = done


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
        self._running: dict[int, _Kernel] = {}
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
        rate = self._slow_rate if self._comm_in_flight else 1.0
        kernel = _Kernel(seconds, rate, self._env.now, done)
        kernel_id = self._next_id
        self._next_id += 1
        self._running[kernel_id] = kernel
        self._schedule(kernel_id, kernel)
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
        """Bring every running kernel's work up to now, give it ``rate`` (None: keep its own) and ``extra_s``
        more seconds of work at that rate, and give it a new wake-up."""
        now = self._env.now
        for kernel_id, kernel in self._running.items():
            kernel.work_left = max(0.0, kernel.work_left - (now - kernel.updated_at) * kernel.rate)
            kernel.updated_at = now
            if rate is not None:
                kernel.rate = rate
            kernel.work_left += extra_s * kernel.rate
            kernel.version += 1
            self._schedule(kernel_id, kernel)

    def _schedule(self, kernel_id: int, kernel: _Kernel) -> None:
        wake = self._env.timeout(kernel.work_left / kernel.rate)
        wake.callbacks.append(self._waker(kernel_id, kernel.version))

    def _waker(self, kernel_id: int, version: int) -> Callable[[simpy.Event], None]:
        def wake(_: simpy.Event) -> None:
            kernel = self._running.get(kernel_id)
            if kernel is not None and kernel.version == version:
                del self._running[kernel_id]
                kernel.done.succeed()

        return wake
