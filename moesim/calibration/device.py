"""How a fitted rate becomes spec fields, which differs by device.

A fit measures an achieved rate as a multiple of the base spec's raw figure (datasheet peak FLOP/s,
HBM bandwidth, fabric bandwidth). A GPU keeps its datasheet figure, and the multiple becomes the
efficiency field (at most 1: the model's efficiencies are fractions of a peak). A CPU host has no
datasheet peak to be a fraction of: the achieved rate itself is written as the raw figure, with
efficiency 1.0, so "peak" on a calibrated CPU spec means "the fastest rate measured".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from moesim.calibration.measurements import Sweep
from moesim.calibration.report import KeptParam, ParamFit, Step

Device = Literal["gpu", "cpu"]
SIGNIFICANT_DIGITS = 4  # timing noise is >= 0.1%; more digits would be noise written down as fact


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (0 stays 0)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def fitted(path: str, value: float, sweeps: tuple[Sweep, ...], note: str = "") -> ParamFit:
    return ParamFit(path=path, value=significant(value), sweeps=sweeps, note=note)


def kept(path: str, value: float | None, reason: str) -> KeptParam:
    return KeptParam(path=path, value=value, reason=reason)


def rate_step(device: Device, multiple: float, *, raw: Mapping[str, float], efficiency: str,
              sweeps: tuple[Sweep, ...]) -> Step:
    """Spec updates for an achieved rate of ``multiple`` times the raw figures ``raw`` (path -> base
    value, e.g. ``{"gpu.hbm_gb_per_s": 3350}``) whose efficiency field is at path ``efficiency``. The
    base efficiency is replaced, not combined: ``multiple`` is of the raw figure. The caller guarantees
    ``multiple > 0``."""
    assert multiple > 0, "an achieved rate is positive"
    if device == "cpu":
        entries = [fitted(path, value * multiple, sweeps, "the achieved rate: a CPU has no datasheet peak")
                   for path, value in raw.items()]
        entries.append(fitted(efficiency, 1.0, sweeps, "CPU: the rate above is the achieved one"))
        return Step(updates={e.path: e.value for e in entries}, fitted=tuple(entries))
    keeps = tuple(kept(path, value, "GPU: the datasheet figure; the fit sets the efficiency")
                  for path, value in raw.items())
    note = f"measured {multiple:.3g} of the datasheet figure, capped at 1" if multiple > 1 else ""
    entry = fitted(efficiency, min(1.0, multiple), sweeps, note)
    return Step(updates={efficiency: entry.value}, fitted=(entry,), kept=keeps)
