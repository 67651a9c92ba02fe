"""Schedule policies. Each module defines ``SCHEDULE``; see registry.py. Policies never import simpy."""

from moesim.schedules.registry import Schedule, ScheduleConfig, get_schedule, registered

__all__ = ["Schedule", "ScheduleConfig", "get_schedule", "registered"]
