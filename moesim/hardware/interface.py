"""The contract between the cost model (hardware/) and the engine (engine/).

The engine knows nothing of GPUs, links or algorithms: it asks the cost model how long a compute
task takes at full speed, and what a collective puts on which network resource. Resources are
integer ids (a GPU's NVLink egress, a NIC's ingress, ...) with a capacity in bytes/second; the
engine shares each resource's capacity among the collectives crossing it (flow-level model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from moesim.workload.ops import A2AAlgorithm, Op


class Task(Protocol):
    """The part of an op the cost model prices, as a plan's task carries it (``moesim.plan.Task`` is one):
    ``fraction`` of the op's work (per rank: ``fraction_on``) and, for an all-to-all, the byte matrix
    ``traffic`` that overrides the op's and the ``algorithm`` that moves it."""

    @property
    def fraction(self) -> float: ...

    @property
    def traffic(self) -> np.ndarray | None: ...

    @property
    def algorithm(self) -> A2AAlgorithm: ...

    def fraction_on(self, rank: int) -> float: ...


@dataclass(frozen=True, slots=True, eq=False)
class CollectiveDemand:
    """What one collective (over one or more sibling groups) needs from the network.

    The collective takes ``latency_s`` (fixed, alpha terms) plus the time to move ``volume[i]``
    bytes across resource ``resources[i]`` for every i, at the bandwidth the engine's flow model
    grants; then, if ``then`` is set, that next stage the same way (hierarchical algorithms run
    their phases one after another). All members finish together. An empty demand (a group of one
    rank) takes only the latency.
    """

    latency_s: float
    resources: np.ndarray  # int64 resource ids, unique
    volume: np.ndarray     # float64 bytes per resource (at the rings' rate; see cost.py), > 0
    then: CollectiveDemand | None = None

    def stages(self) -> list[CollectiveDemand]:
        stages: list[CollectiveDemand] = []
        stage: CollectiveDemand | None = self
        while stage is not None:
            stages.append(stage)
            stage = stage.then
        return stages

    def uncontended_s(self, capacities: np.ndarray) -> float:
        """Seconds on an idle network: each stage's latency plus its bottleneck volume / capacity."""
        total = 0.0
        for stage in self.stages():
            total += stage.latency_s
            if stage.resources.size:
                total += float(np.max(stage.volume / capacities[stage.resources]))
        return total


class HostCosts(Protocol):
    """What a host adds between the plan's tasks beyond compute, transfers and interference: all zero on a
    GPU (``NO_HOST_COSTS``); a calibrated CPU host (the harness's gloo mode) sets them. ``engine/host.py``
    plays them."""

    @property
    def stream_handoff(self) -> float:
        """Seconds a task that waited for a task of another stream starts after that task ended."""
        ...

    @property
    def compute_wait_under_comm(self) -> float:
        """At most how many seconds a compute task woken by another stream while a collective of its rank
        runs waits for that to end (the compute thread waiting for the core)."""
        ...

    @property
    def comm_latency_under_compute(self) -> float:
        """At most how many seconds a collective stage waits, before moving bytes, for a member rank that
        computes when it starts to stop (the communication thread waiting for a core)."""
        ...

    @property
    def rendezvous_skew(self) -> float:
        """A collective starts this fraction of its members' compute time since their previous collective
        later (the expected wait for the last member to arrive), at most ``rendezvous_skew_cap``."""
        ...

    @property
    def rendezvous_skew_cap(self) -> float:
        """The most seconds of that wait (inf: no cap)."""
        ...

    def collective_cpu(self, op: Op, task: Task) -> float:
        """Seconds of compute collective ``op`` (this task's part of it) takes from a member rank whose
        compute runs when it starts (its threads' work on the rank's cores)."""
        ...


@dataclass(frozen=True, slots=True)
class NoHostCosts:
    """A host that adds nothing (every GPU preset)."""

    stream_handoff: float = 0.0
    compute_wait_under_comm: float = 0.0
    comm_latency_under_compute: float = 0.0
    rendezvous_skew: float = 0.0
    rendezvous_skew_cap: float = float("inf")

    def collective_cpu(self, op: Op, task: Task) -> float:
        return 0.0


NO_HOST_COSTS = NoHostCosts()


class CostModel(Protocol):
    """What the engine needs from hardware + cost parameters."""

    @property
    def num_ranks(self) -> int: ...

    @property
    def capacities(self) -> np.ndarray:
        """Bytes/second of every resource id (index = id); already scaled by bandwidth efficiency."""
        ...

    @property
    def compute_slowdown(self) -> float:
        """Interference: while a collective of a GPU runs (not while it waits for a peer or for a core),
        its compute runs ``1 + compute_slowdown`` times slower."""
        ...

    @property
    def comm_slowdown(self) -> float:
        """The reverse interference: while a member rank of a collective computes, the collective's
        transfer runs ``1 + comm_slowdown`` times slower."""
        ...

    @property
    def host(self) -> HostCosts:
        """The host's own delays (``NO_HOST_COSTS`` on a GPU)."""
        ...

    def resource_name(self, resource: int) -> str: ...

    def compute_time(self, op: Op, task: Task, rank: int) -> float:
        """Seconds ``task`` (a part of compute ``op``) takes on ``rank`` with no interference."""
        ...

    def collective_demand(self, op: Op, task: Task, groups: Sequence[int]) -> CollectiveDemand:
        """Network demand of ``task`` (a part of collective ``op``) run by the groups
        ``op.comm.groups[i] for i in groups`` at the same time (one coflow)."""
        ...

    def collective_time(self, op: Op, task: Task, groups: Sequence[int]) -> float:
        """Seconds ``collective_demand(op, task, groups)`` takes on an idle network: each stage's latency
        plus its bottleneck volume over capacity (what a policy's list scheduler may use)."""
        ...
