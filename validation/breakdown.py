"""Where an iteration's time goes, per part: the compute of each op role and phase, and the time a rank does
not compute (waiting for a collective, a peer, a hand-over), mean over ranks. The validation report sets
the measured parts (median over iterations) beside the predicted ones, so a prediction error can be traced
to the ops that make it.

Parts are keyed ``role:phase`` (``expert_fc1:backward_weight``): the layers of an op and the parts a
schedule splits it into add up. This module imports neither torch nor simpy: the executor, the worker and
the report all use it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from moesim.plan import ExecutionPlan, StreamKind
from moesim.timeline import Timeline
from moesim.workload.ops import Op

IDLE = "not computing"


def part_of(op: Op) -> str:
    """The part an op's compute counts in: its role and phase."""
    return f"{op.role}:{op.phase.value}"


def rank_parts(plan: ExecutionPlan, seconds_by_task: Iterable[tuple[int, float]],
               iteration_s: float) -> dict[str, float]:
    """One rank's parts in one iteration: each compute task's seconds (``(task id, seconds)``) summed by part,
    and the rest of the iteration (``iteration_s``, the slowest rank's end) as ``IDLE``."""
    parts: dict[str, float] = defaultdict(float)
    for task_id, seconds in seconds_by_task:
        task = plan.tasks[task_id]
        if task.stream is StreamKind.COMPUTE:
            parts[part_of(plan.op_of(task))] += seconds
    parts[IDLE] = max(0.0, iteration_s - sum(parts.values()))
    return dict(parts)


def mean_over_ranks(per_rank: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each part over ranks (a part a rank lacks counts 0 there)."""
    keys = sorted({key for parts in per_rank for key in parts})
    return {key: sum(parts.get(key, 0.0) for parts in per_rank) / len(per_rank) for key in keys}


def timeline_parts(plan: ExecutionPlan, timeline: Timeline) -> dict[str, float]:
    """A timeline's parts (a predicted one: its ranks as the timeline represents them), mean over ranks."""
    end = timeline.makespan
    by_rank: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for span in timeline.spans:
        by_rank[span.rank].append((span.task, span.end - span.start))
    return mean_over_ranks([rank_parts(plan, spans, end) for _, spans in sorted(by_rank.items())])
