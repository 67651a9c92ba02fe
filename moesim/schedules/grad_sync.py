"""How a plan issues the gradient buckets' all-reduces: ``schedule.grad_sync``, for every schedule.

Policies place the buckets on the ``dp_comm`` stream; ``arrange_grad_sync`` then applies the mode:

- ``ddp`` (default): the ``dp_comm`` stream issues the buckets in the order they become ready, the order
  of their last gradient on the compute stream, as DDP does once it has rebuilt its buckets.
- ``priority``: the same order, and the MoE all-to-all stream becomes a higher network priority class
  than ``dp_comm``: on a link they share, the engine serves the all-to-alls first and the buckets move
  on what is left.
- ``packed``: Lancet's communication reordering. The buckets ride the all-to-all stream, each placed in
  a gap between two all-to-alls (never before the first) where it fits: on a list schedule of the plan
  in which buckets take no time (``estimate.list_schedule``), the gap lasts from one all-to-all's end to
  the next one's start, and a bucket fits if, started once it is ready and the gap's earlier buckets
  are done, it ends before the next all-to-all starts. Each gap takes the largest bucket that fits,
  again and again; buckets that fit nowhere follow the last all-to-all in ready order. The public
  Lancet code packs the same way, best fit by size, on its own simulation of the schedule.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from moesim.hardware.interface import CostModel
from moesim.plan import ExecutionPlan, GradSync, StreamKind, list_schedule
from moesim.schedules.estimate import task_seconds

PRIORITY_CLASSES = MappingProxyType({StreamKind.COMM: 0, StreamKind.DP_COMM: 1})


def arrange_grad_sync(plan: ExecutionPlan, mode: GradSync, cost: CostModel) -> ExecutionPlan:
    """``plan`` with its ``dp_comm`` tasks issued as ``mode`` says (see the module docstring).

    Every ``dp_comm`` task must depend only on compute tasks (a bucket waits for its gradients).
    """
    ready = ready_order(plan)
    if not ready:
        return plan
    plan = replace(plan, streams={**plan.streams, StreamKind.DP_COMM: ready})
    if mode is GradSync.PRIORITY:
        return replace(plan, priority=PRIORITY_CLASSES)
    if mode is GradSync.PACKED:
        return _packed(plan, cost)
    return plan


def ready_order(plan: ExecutionPlan) -> tuple[int, ...]:
    """The ``dp_comm`` tasks by the compute-stream position of their last dependency (ties: plan order)."""
    position = {tid: index for index, tid in enumerate(plan.streams.get(StreamKind.COMPUTE, ()))}
    buckets = plan.streams.get(StreamKind.DP_COMM, ())
    assert all(dep in position for tid in buckets for dep in plan.tasks[tid].deps), \
        "a gradient bucket depends only on compute tasks"
    ready_at = {tid: max((position[dep] for dep in plan.tasks[tid].deps), default=-1) for tid in buckets}
    return tuple(sorted(buckets, key=lambda tid: ready_at[tid]))


def _packed(plan: ExecutionPlan, cost: CostModel) -> ExecutionPlan:
    buckets = list(plan.streams[StreamKind.DP_COMM])
    seconds = task_seconds(plan, cost)
    free = list(seconds)
    for tid in buckets:
        free[tid] = 0.0
    start, end = list_schedule(plan, free)
    ready = {tid: max((end[dep] for dep in plan.tasks[tid].deps), default=0.0) for tid in buckets}
    comm = plan.streams.get(StreamKind.COMM, ())
    order: list[int] = []
    for index, tid in enumerate(comm):
        if index > 0:
            order += _fill_gap(buckets, end[comm[index - 1]], start[tid], ready, seconds)
        order.append(tid)
    order += buckets  # what fits nowhere, in ready order
    tasks = tuple(replace(task, stream=StreamKind.COMM) if task.stream is StreamKind.DP_COMM else task
                  for task in plan.tasks)
    streams: dict[StreamKind, tuple[int, ...]] = {kind: ids for kind, ids in plan.streams.items()
                                                  if kind is not StreamKind.DP_COMM}
    streams[StreamKind.COMM] = tuple(order)
    return replace(plan, tasks=tasks, streams=streams)


def _fill_gap(left: list[int], opens: float, closes: float, ready: dict[int, float],
              seconds: list[float]) -> list[int]:
    """Take from ``left`` (in place) the buckets packed into the gap [opens, closes], in run order."""
    packed: list[int] = []
    cursor = opens
    while True:
        fitting = [tid for tid in left if max(cursor, ready[tid]) + seconds[tid] <= closes]
        if not fitting:
            return packed
        best = max(fitting, key=lambda tid: seconds[tid])  # the largest; ties: the first ready
        left.remove(best)
        packed.append(best)
        cursor = max(cursor, ready[best]) + seconds[best]
