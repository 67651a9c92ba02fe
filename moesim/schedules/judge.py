"""The engine as judge: an optimising policy simulates the plans it could return and keeps the fastest."""

from __future__ import annotations

from collections.abc import Sequence

from moesim.engine import simulate_plan
from moesim.hardware.interface import CostModel
from moesim.plan import ExecutionPlan


def fastest(plans: Sequence[ExecutionPlan], cost: CostModel) -> tuple[int, list[float]]:
    """The index of the plan with the shortest simulated iteration (ties: the earliest) and every
    plan's iteration seconds, in order."""
    assert plans, "there is at least one plan to judge"
    seconds = [simulate_plan(plan, cost).makespan for plan in plans]
    return min(range(len(plans)), key=lambda index: (seconds[index], index)), seconds
