"""The SimPy mechanism: plays an ExecutionPlan against a cost model and returns a Timeline.

The engine never imports a schedule policy (policies emit plans; the engine only plays them).
"""

from moesim.engine.core import simulate_plan

__all__ = ["simulate_plan"]
