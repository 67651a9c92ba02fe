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
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from moesim.errors import MoesimError
from moesim.hardware.interface import CostModel
from moesim.overrides import one_line
from moesim.plan import ExecutionPlan
from moesim.schedules.grad_sync import GradSync
from moesim.workload.ops import OpGraph


class ScheduleConfig(BaseModel):
    """Base of every policy's knobs (``--set schedule.<knob>=value``); ``grad_sync`` is every policy's
    (how gradient buckets are issued, see ``grad_sync.py``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grad_sync: GradSync = GradSync.DDP


PlanFn = Callable[[OpGraph, CostModel, Any], ExecutionPlan]


@dataclass(frozen=True, slots=True)
class KnobTable:
    """A table of a plan's decisions for people: a title, rows, and (key, header) columns."""

    title: str
    rows: list[dict[str, object]]
    columns: list[tuple[str, str]]


def no_tables(knobs: Mapping[str, object]) -> list[KnobTable]:
    return []


def plain_summary(knobs: Mapping[str, object]) -> str:
    """``k=v, ...`` of the scalar knobs but a default ``grad_sync``: what a table has room for."""
    shown = {k: v for k, v in knobs.items() if isinstance(v, str | int | float | bool)
             and not (k == "grad_sync" and v == GradSync.DDP.value)}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "-"


@dataclass(frozen=True, slots=True)
class Schedule:
    """A policy: its name, a one-line description, its knobs and the function that plans.

    ``summarize`` turns a plan's knobs into one short line for tables, ``tables`` into detail tables
    (`moesim run` prints them); ``order`` places the policy in listings (baseline first).
    """

    name: str
    description: str
    config: type[ScheduleConfig]
    plan: PlanFn
    summarize: Callable[[Mapping[str, object]], str] = plain_summary
    tables: Callable[[Mapping[str, object]], list[KnobTable]] = no_tables
    order: int = 100

    def make_config(self, settings: Mapping[str, Any] | None = None) -> ScheduleConfig:
        try:
            return self.config.model_validate(dict(settings or {}))
        except ValidationError as err:
            raise MoesimError(one_line(err, prefix="schedule.")) from None


@cache
def registered() -> Mapping[str, Schedule]:
    """Every schedule in moesim.schedules, by name, in listing order."""
    package = importlib.import_module("moesim.schedules")
    found: dict[str, Schedule] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"moesim.schedules.{module_info.name}")
        schedule = getattr(module, "SCHEDULE", None)
        if isinstance(schedule, Schedule):
            assert schedule.name not in found, f"two schedules named {schedule.name}"
            found[schedule.name] = schedule
    return MappingProxyType(dict(sorted(found.items(), key=lambda item: (item[1].order, item[0]))))


def get_schedule(name: str) -> Schedule:
    schedules = registered()
    if name not in schedules:
        raise MoesimError(f"unknown schedule {name!r}: choose one of {', '.join(schedules)}")
    return schedules[name]
