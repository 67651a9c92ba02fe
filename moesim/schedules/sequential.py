"""`sequential`: DeepSpeed-MoE order, nothing overlaps the MoE all-to-alls.

Every op runs in program order. An all-to-all waits for the compute before it and the compute after it
waits for the all-to-all, as when the collective is issued on the compute stream and blocks it. Gradient
all-reduce buckets are issued as ``schedule.grad_sync`` says, as in every schedule.
"""

from __future__ import annotations

from moesim.hardware.interface import CostModel
from moesim.plan import BaseDecisions, ExecutionPlan, StreamKind
from moesim.schedules.builder import PlanBuilder, default_stream
from moesim.schedules.grad_sync import arrange_grad_sync
from moesim.schedules.registry import Schedule, ScheduleConfig
from moesim.workload.ops import OpGraph


class SequentialConfig(ScheduleConfig):
    """No knobs of its own (``grad_sync`` is every schedule's): the baseline."""


def plan(graph: OpGraph, cost: CostModel, config: SequentialConfig) -> ExecutionPlan:
    builder = PlanBuilder(graph, SCHEDULE.name)
    last_compute: int | None = None
    unawaited_a2a: int | None = None  # an all-to-all the compute stream has not yet waited for
    for op in graph.ops:
        stream = default_stream(op)
        if stream is StreamKind.COMM:
            # Blocking all-to-all: it waits for the compute issued before it ...
            unawaited_a2a = builder.add_whole(op, extra_deps=[last_compute] if last_compute is not None else [])
        elif stream is StreamKind.COMPUTE:
            # ... and the compute after it waits for it, so the two never overlap.
            barrier = [unawaited_a2a] if unawaited_a2a is not None else []
            last_compute = builder.add_whole(op, extra_deps=barrier)
            unawaited_a2a = None
        else:
            builder.add_whole(op)
    return arrange_grad_sync(builder.build(BaseDecisions(config.grad_sync)), config.grad_sync, cost)


SCHEDULE = Schedule(
    name="sequential",
    description="DeepSpeed-MoE order: all-to-alls block compute, nothing overlaps them",
    config=SequentialConfig,
    plan=plan,
    order=0,
)
