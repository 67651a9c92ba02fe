"""Flow-level network: in-flight coflows share every resource's capacity max-min fairly.

A coflow is one collective's transfer: ``volume[i]`` bytes across ``resources[i]`` for every i,
finished when the last byte of every resource has moved. Its progress is one number, the fraction
done; it advances at a rate ``p = lambda / D`` where ``D`` is its heaviest volume, so a coflow alone
takes ``max_i volume[i] / capacity[i]``. Rates come from progressive filling: raise one common
``lambda`` for all unfrozen coflows until some resource saturates, freeze the coflows crossing it,
repeat with the rest.

Priority classes: each coflow belongs to a class (the plan's priority of its stream); classes are
served in strict priority, so a lower-priority coflow moves only on what the higher ones leave and
waits, at rate 0, where they take everything.

Reverse interference: while any member rank of a coflow runs a compute kernel, the coflow moves at
``1 / (1 + comm_slowdown)`` of its max-min rate (on a CPU host the same cores move the bytes); the
share it leaves unused is not handed to other coflows, since the bottleneck is then the rank, not the
link.

Rates change only when a coflow starts or ends, and only inside the connected component (coflows
linked through shared resources) of that coflow, so only that component is recomputed and only
coflows whose rate changed are rescheduled (each coflow's progress is a ``Fluid``, ``fluid.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import simpy

from moesim.engine.fluid import Fluid
from moesim.errors import MoesimError

# Resources whose level lies within this relative distance of the minimum saturate together,
# so coflows with equal shares freeze in the same round whatever the rounding.
_SATURATION_RTOL = 1e-12


def max_min_rates(
    resources: Sequence[np.ndarray], volumes: Sequence[np.ndarray], capacities: np.ndarray,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Progress rates (fraction of the transfer per second) of coflows sharing ``capacities``.

    Coflow ``c`` moves ``volumes[c][i]`` bytes across resource ``resources[c][i]``; every volume is
    > 0 and every capacity used is > 0 (the caller guarantees both). Within a priority class the result
    is max-min fair in ``lambda = p * D``: no coflow can go faster without slowing one whose ``lambda``
    is not larger. Classes (``classes[c]``, all 0 when None) are served in strict priority, the lowest
    first: a class shares only what the classes before it left, so a coflow may get rate 0.
    """
    count = len(resources)
    heaviest = np.array([volume.max() for volume in volumes])
    used, column = np.unique(np.concatenate(resources), return_inverse=True)
    rows = np.repeat(np.arange(count), [len(res) for res in resources])
    weight = np.zeros((count, len(used)))
    weight[rows, column] = np.concatenate(volumes) / heaviest[rows]
    free = capacities[used].astype(np.float64)
    level = np.zeros(count)
    of_class = np.zeros(count, dtype=np.int64) if classes is None else np.asarray(classes, dtype=np.int64)
    for served in np.unique(of_class):
        unfrozen = of_class == served
        while unfrozen.any():
            load = weight[unfrozen].sum(axis=0)
            crossed = load > 0
            limit = np.full(len(used), np.inf)
            limit[crossed] = free[crossed] / load[crossed]
            lam = limit.min()
            saturated = crossed & (limit <= lam * (1 + _SATURATION_RTOL))
            freezing = unfrozen & (weight[:, saturated] > 0).any(axis=1)
            level[freezing] = lam
            free = np.maximum(free - lam * weight[freezing].sum(axis=0), 0.0)
            unfrozen &= ~freezing
    return level / heaviest


class Coflow:
    """One collective's transfer in flight; ``on_done`` is called once, when it completes. ``progress`` is
    the fraction of the transfer left (``Fluid``), moving at ``fair_rate * factor`` (reverse interference)."""

    __slots__ = ("seq", "resources", "volume", "solo_rate", "fair_rate", "factor", "members", "priority",
                 "progress", "on_done")

    def __init__(self, seq: int, resources: np.ndarray, volume: np.ndarray, solo_rate: float,
                 members: tuple[int, ...], priority: int, progress: Fluid, on_done: Callable[[], None]) -> None:
        self.seq = seq
        self.resources = resources
        self.volume = volume
        self.solo_rate = solo_rate
        self.members = members
        self.priority = priority
        self.fair_rate = 0.0  # the max-min rate
        self.factor = 1.0
        self.progress = progress
        self.on_done = on_done


class FlowNetwork:
    """The shared network of one simulation: resource capacities and the coflows crossing them."""

    def __init__(self, env: simpy.Environment, capacities: np.ndarray, comm_slowdown: float = 0.0) -> None:
        self._env = env
        self._capacities = np.asarray(capacities, dtype=np.float64)
        self._next_seq = 0
        self._active: dict[int, Coflow] = {}  # by seq, so in start order
        self._slow_factor = 1.0 / (1.0 + comm_slowdown)
        self._track = comm_slowdown != 0.0  # compute matters to transfers only through the slowdown
        self._computing: dict[int, int] = {}  # rank -> compute kernels running (when tracked)

    def compute_started(self, rank: int) -> None:
        """A compute kernel of ``rank`` started: its coflows slow down (if the model has that effect)."""
        if not self._track:
            return
        self._computing[rank] = self._computing.get(rank, 0) + 1
        if self._computing[rank] == 1:
            self._refactor(rank)

    def compute_ended(self, rank: int) -> None:
        if not self._track:
            return
        assert self._computing.get(rank, 0) > 0, "compute_ended without compute_started"
        self._computing[rank] -= 1
        if self._computing[rank] == 0:
            self._refactor(rank)

    def _any_computing(self, members: tuple[int, ...]) -> bool:
        """Whether a member rank runs a compute kernel now (always False when compute is not tracked)."""
        return any(self._computing.get(rank, 0) for rank in members)

    def _factor(self, members: tuple[int, ...]) -> float:
        return self._slow_factor if self._any_computing(members) else 1.0

    def _refactor(self, rank: int) -> None:
        if self._slow_factor == 1.0:
            return
        for coflow in self._active.values():
            if rank in coflow.members:
                factor = self._factor(coflow.members)
                if factor != coflow.factor:
                    coflow.factor = factor
                    coflow.progress.retime(self._env, coflow.fair_rate * factor)

    def transfer(self, resources: np.ndarray, volume: np.ndarray, on_done: Callable[[], None],
                 members: tuple[int, ...] = (), priority: int = 0) -> None:
        """Start moving ``volume[i]`` bytes across ``resources[i]`` now for the ranks ``members``, in
        priority class ``priority`` (see ``max_min_rates``); call ``on_done`` when all moved.

        Zero volumes are dropped; with nothing left to move ``on_done`` is called at once.
        """
        resources = np.asarray(resources, dtype=np.int64)
        volume = np.asarray(volume, dtype=np.float64)
        moving = volume > 0
        resources, volume = resources[moving], volume[moving]
        if len(resources) == 0:
            on_done()
            return
        self._check(resources)
        solo_rate = float(1.0 / (volume / self._capacities[resources]).max())
        progress = Fluid(1.0, self._env.now, lambda: self._finish(coflow))
        coflow = Coflow(self._next_seq, resources, volume, solo_rate, tuple(members), priority, progress, on_done)
        coflow.factor = self._factor(coflow.members)
        self._next_seq += 1
        self._active[coflow.seq] = coflow
        self._reallocate(self._component(resources))

    def _check(self, resources: np.ndarray) -> None:
        bad = resources[(resources < 0) | (resources >= len(self._capacities))]
        if len(bad):
            raise MoesimError(
                f"collective demand: resource id {int(bad[0])} is not one of the cost model's "
                f"{len(self._capacities)} resources (0..{len(self._capacities) - 1})"
            )
        dead = resources[self._capacities[resources] <= 0]
        if len(dead):
            raise MoesimError(
                f"capacities[{int(dead[0])}]: a resource a collective crosses must have capacity > 0 bytes/s"
            )

    def _component(self, start: np.ndarray) -> list[Coflow]:
        """In-flight coflows linked to ``start`` resources through shared resources, in start order."""
        pending = list(self._active.values())
        if len(pending) <= 1:  # a lone coflow's rate is its solo rate, linked to ``start`` or not
            return pending
        # Coflows may cross thousands of resources but few run at once: sweep the coflows with
        # vectorised membership tests rather than walking resource by resource.
        reached = np.zeros(len(self._capacities), dtype=bool)
        reached[start] = True
        found: list[Coflow] = []
        grew = True
        while grew:
            grew = False
            rest = []
            for coflow in pending:
                if reached[coflow.resources].any():
                    reached[coflow.resources] = True
                    found.append(coflow)
                    grew = True
                else:
                    rest.append(coflow)
            pending = rest
        return sorted(found, key=lambda coflow: coflow.seq)

    def _reallocate(self, component: list[Coflow]) -> None:
        if not component:
            return
        if len(component) == 1:
            rates = [component[0].solo_rate]
        else:
            rates = max_min_rates(
                [c.resources for c in component], [c.volume for c in component], self._capacities,
                [c.priority for c in component],
            ).tolist()
        for coflow, fair_rate in zip(component, rates, strict=True):
            coflow.fair_rate = fair_rate
            if fair_rate * coflow.factor != coflow.progress.rate:
                coflow.progress.retime(self._env, fair_rate * coflow.factor)

    def _finish(self, coflow: Coflow) -> None:
        coflow.progress.stop()
        del self._active[coflow.seq]
        self._reallocate(self._component(coflow.resources))
        coflow.on_done()
