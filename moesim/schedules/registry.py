"""The schedule registry: every module in this package that defines ``SCHEDULE`` is a policy.

Adding a policy is one new file with a ``SCHEDULE = Schedule(...)`` at its end; nothing else changes.
Discovery walks the package once per process and returns an immutable mapping (no global mutable
registry to keep in sync).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from moesim.errors import MoesimError
from moesim.hardware.interface import CostModel
from moesim.overrides import one_line
from moesim.plan import ExecutionPlan, GradSync
from moesim.workload.ops import OpGraph


class ScheduleConfig(BaseModel):
    """Base of every policy's knobs (``--set schedule.<knob>=value``); ``grad_sync`` is every policy's
    (how gradient buckets are issued, see ``grad_sync.py``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grad_sync: GradSync = GradSync.DDP


C = TypeVar("C", bound=ScheduleConfig)


@dataclass(frozen=True, slots=True)
class Schedule(Generic[C]):
    """A policy: its name, a one-line description, its knobs (``config``) and the function that plans with
    them; ``order`` places it in listings (baseline first). Its plans carry their own ``Decisions``."""

    name: str
    description: str
    config: type[C]
    plan: Callable[[OpGraph, CostModel, C], ExecutionPlan]
    order: int = 100

    def make_config(self, settings: Mapping[str, object] | None = None) -> C:
        """The knobs ``settings`` set (the others at their defaults); MoesimError naming a bad one."""
        try:
            return self.config.model_validate(dict(settings or {}))
        except ValidationError as err:
            raise MoesimError(one_line(err, prefix="schedule.")) from None

    def plan_with(self, graph: OpGraph, cost: CostModel, settings: Mapping[str, object] | None = None
                  ) -> ExecutionPlan:
        """Plan ``graph`` with the knobs ``settings`` set (see ``make_config``)."""
        return self.plan(graph, cost, self.make_config(settings))


class Policy(Protocol):
    """A registered schedule whatever its config type: what callers outside the policy use."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def config(self) -> type[ScheduleConfig]: ...

    @property
    def order(self) -> int: ...

    def make_config(self, settings: Mapping[str, object] | None = None) -> ScheduleConfig: ...

    def plan_with(self, graph: OpGraph, cost: CostModel, settings: Mapping[str, object] | None = None
                  ) -> ExecutionPlan: ...


@cache
def registered() -> Mapping[str, Policy]:
    """Every schedule in moesim.schedules, by name, in listing order."""
    package = importlib.import_module("moesim.schedules")
    found: dict[str, Policy] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"moesim.schedules.{module_info.name}")
        schedule = getattr(module, "SCHEDULE", None)
        if isinstance(schedule, Schedule):
            assert schedule.name not in found, f"two schedules named {schedule.name}"
            found[schedule.name] = schedule
    return MappingProxyType(dict(sorted(found.items(), key=lambda item: (item[1].order, item[0]))))


def get_schedule(name: str) -> Policy:
    schedules = registered()
    if name not in schedules:
        raise MoesimError(f"unknown schedule {name!r}: choose one of {', '.join(schedules)}")
    return schedules[name]
