"""Fluid progress: an amount of work done at a piecewise-constant rate, waking its owner once, at its end.

Both of the engine's rate models use it: a coflow's transfer (``network.py``: the fraction of it left,
at its max-min share) and a compute kernel (``interference.py``: full-speed seconds left, slowed while
its rank communicates). Rates change only at events; each change first brings the amount up to now at
the old rate, then schedules one wake-up at the end the new rate predicts. An earlier wake-up is made
stale by a version number, so time moves only by SimPy events and never by ticks.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy


class Fluid:
    """``amount`` of work left as of ``since``, done at ``rate`` per second; ``on_end`` is called once the
    current rate's wake-up arrives. A rate of 0 schedules no wake-up (the owner waits for a new rate)."""

    __slots__ = ("amount", "rate", "since", "version", "on_end")

    def __init__(self, amount: float, since: float, on_end: Callable[[], None]) -> None:
        self.amount = amount
        self.rate = 0.0
        self.since = since
        self.version = 0
        self.on_end = on_end

    def retime(self, env: simpy.Environment, rate: float, extra: float = 0.0) -> None:
        """From now on progress at ``rate``, with ``extra`` more seconds' worth of work at that rate."""
        now = env.now
        self.amount = max(0.0, self.amount - (now - self.since) * self.rate)
        self.since = now
        self.rate = rate
        self.amount += extra * rate
        self.version += 1
        if rate > 0:
            env.timeout(self.amount / rate).callbacks.append(self._waker(self.version))

    def stop(self) -> None:
        """Nothing left; any pending wake-up is stale."""
        self.amount = 0.0
        self.version += 1

    def _waker(self, version: int) -> Callable[[simpy.Event], None]:
        def wake(_: simpy.Event) -> None:
            if self.version == version:
                self.on_end()

        return wake
