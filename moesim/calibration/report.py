"""The fit report: which parameter was fitted from which sweep, which kept the base spec's value and
why, and how well the fitted spec predicts every sweep (through the cost model itself)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from moesim.calibration.lsq import relative_rms
from moesim.calibration.measurements import KIND_SWEEPS, Environment, Measurements, Sweep
from moesim.calibration.predict import (
    ComputeSample,
    kernel_node,
    predict_collectives,
    predict_comm_under_compute,
    predict_compute,
    predict_interference,
)
from moesim.hardware.specs import NodeSpec
from moesim.workload.ops import OpKind

SWEEP_WIDTH = max(len(sweep.value) for sweep in Sweep)
_RATIO_SWEEPS = frozenset({Sweep.INTERFERENCE, Sweep.COMM_UNDER_COMPUTE})  # errors of time ratios, not seconds


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamFit(_Record):
    """``path`` is the dotted NodeSpec field (as ``--set hardware.node.<path>=...`` names it)."""

    path: str
    value: float
    sweeps: tuple[Sweep, ...]  # empty: set from the run itself (ranks per host), not fitted
    note: str = ""


class KeptParam(_Record):
    path: str
    value: float | None  # None: the base spec leaves it unset (e.g. no cap)
    reason: str


class SweepError(_Record):
    """Predicted vs measured over one sweep: relative errors, and R^2 of the seconds (None with fewer
    than two samples, no spread, or for the two interference sweeps, whose errors are of time ratios)."""

    sweep: Sweep
    samples: int = Field(ge=1)
    rms_relative_error: float
    max_relative_error: float
    r_squared: float | None


class FitReport(_Record):
    base: str
    measured_at: datetime
    environment: Environment
    fitted: tuple[ParamFit, ...]
    kept: tuple[KeptParam, ...]
    sweeps: tuple[SweepError, ...]

    def error_of(self, sweep: Sweep) -> SweepError | None:
        return next((s for s in self.sweeps if s.sweep == sweep), None)

    def fitted_value(self, path: str) -> float:
        """The fitted value at ``path``; KeyError when it was not fitted."""
        for entry in self.fitted:
            if entry.path == path:
                return entry.value
        raise KeyError(path)

    def kept_paths(self) -> list[str]:
        return [entry.path for entry in self.kept]

    def summary_lines(self) -> list[str]:
        """The report as aligned text: fitted values with their sweeps, kept values with the reason,
        and each sweep's error."""
        lines = ["fitted:"]
        lines += [f"  {e.path:<36} {e.value:<10.4g} {', '.join(s.value for s in e.sweeps) or 'from the run'}"
                  + (f" ({e.note})" if e.note else "") for e in self.fitted]
        lines.append(f"kept from {self.base}:")
        lines += [f"  {e.path:<36} {'none' if e.value is None else format(e.value, '<10.4g'):<10} {e.reason}"
                  for e in self.kept]
        lines.append("fit error per sweep (relative RMS / max relative):")
        lines += [f"  {e.sweep.value:<{SWEEP_WIDTH}} {e.rms_relative_error:6.1%} / {e.max_relative_error:6.1%}  "
                  f"({e.samples} samples)" for e in self.sweeps]
        return lines


@dataclass(frozen=True, slots=True)
class Step:
    """What one fit step decided: dotted NodeSpec updates, and the entries it adds to the report."""

    updates: Mapping[str, Any] = field(default_factory=dict)
    fitted: tuple[ParamFit, ...] = ()
    kept: tuple[KeptParam, ...] = ()

    def plus(self, other: Step) -> Step:
        """Both steps' updates (``other`` wins on a shared path) and entries."""
        return Step(updates={**self.updates, **other.updates}, fitted=self.fitted + other.fitted,
                    kept=self.kept + other.kept)


def sweep_errors(node: NodeSpec, measurements: Measurements) -> tuple[SweepError, ...]:
    """Each non-empty sweep's error when ``node`` predicts it (the interference sweeps: the time ratio
    with the other kind of work running over the time alone).

    Kernel samples of matmul and attention count in those sweeps; each memory-bound kind's kernel
    samples form a sweep of their own. Sweep samples are predicted without the executor's bookkeeping
    (they time the kernel call alone). The task-overhead sample has no error of its own: the launch it
    sets is the sweeps' (cold) dispatch plus its bookkeeping, while its own tasks reran one kernel on
    operands left in cache, so no prediction of the model is comparable with it.
    """
    m, world = measurements, measurements.environment.world_size
    samples_node = kernel_node(node, m.bookkeeping_seconds)
    compute: list[tuple[Sweep, Sequence[ComputeSample]]] = [
        (Sweep.MATMUL, (*m.matmul, *m.kernels_of(OpKind.MATMUL))), (Sweep.ELEMENTWISE, m.elementwise),
        (Sweep.ATTENTION, (*m.attention, *m.kernels_of(OpKind.ATTENTION))), (Sweep.LAYERNORM, m.layernorm)]
    compute += [(sweep, m.kernels_of(kind)) for kind, sweep in KIND_SWEEPS.items()]
    pairs: list[tuple[Sweep, np.ndarray, np.ndarray]] = [
        (sweep, predict_compute(samples, samples_node), _seconds(samples)) for sweep, samples in compute]
    if m.environment.ranks_per_host == world:
        for sweep, kind in ((Sweep.ALL_TO_ALL, OpKind.ALL_TO_ALL), (Sweep.ALL_REDUCE, OpKind.ALL_REDUCE)):
            samples = m.collectives_of(kind)
            pairs.append((sweep, predict_collectives(samples, node, world), _seconds(samples)))
    ratios = np.array([s.ratio for s in m.interference])
    pairs.append((Sweep.INTERFERENCE, predict_interference(m.interference, node, world), ratios))
    pairs.append((Sweep.COMM_UNDER_COMPUTE, predict_comm_under_compute(m.comm_under_compute, node, world),
                  np.array([s.ratio for s in m.comm_under_compute])))
    return tuple(_error(sweep, predicted, measured) for sweep, predicted, measured in pairs if measured.size)


def _error(sweep: Sweep, predicted: np.ndarray, measured: np.ndarray) -> SweepError:
    """R^2 only where the sweep's sizes spread its times (not for the interference ratios, which the model
    predicts as a constant, or nearly: ``1 + y * f`` with ``f`` near 1)."""
    relative = predicted / measured - 1.0
    spread = float(np.sum((measured - measured.mean()) ** 2))
    explained = sweep not in _RATIO_SWEEPS and measured.size >= 2 and spread > 0
    r_squared = 1.0 - float(np.sum((predicted - measured) ** 2)) / spread if explained else None
    return SweepError(sweep=sweep, samples=int(measured.size), rms_relative_error=relative_rms(predicted, measured),
                      max_relative_error=float(np.max(np.abs(relative))), r_squared=r_squared)


def _seconds(samples: Any) -> np.ndarray:
    return np.array([s.seconds for s in samples], dtype=np.float64)

