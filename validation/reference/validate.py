"""`moesim validate --reference`: predict the reference PyTorch model's real training step, run it, compare.

For each size of the reference model, one job (``trace_model``): warm-up steps, timed steps (the measured
median), then as many profiled steps (the traced workload: each op's median over them), so that the host's
speed, which drifts between jobs on a shared machine, weighs on the measurement and the trace alike -> predict
the step with the calibrated spec twice, from its configuration (the op graph priced by the cost model) and
from its trace (the recorded op times and routing) -> the error of each against the measured median step. The reference
model is plain PyTorch: its all-to-alls block compute and DDP overlaps the gradient all-reduce with
backward, which is moesim's ``sequential`` schedule with ``grad_sync=ddp``. The calibration behind the spec
saw microbenchmarks only, never these models.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moesim.analysis.tables import metrics_table
from moesim.api import run_schedule, scenario
from moesim.overrides import parse_assignments
from moesim.validation.reference.trace import trace_model

BASE_MODEL = "tiny-moe-a"
# Sizes of the reference model, as --set strings on BASE_MODEL; none is a calibration model.
SIZES: Mapping[str, tuple[str, ...]] = {
    "small": ("model.num_layers=4", "model.hidden=256", "model.num_heads=8", "model.vocab_size=8192",
              "training.batch_per_gpu=4", "training.seq_len=128"),
    "wide": ("model.num_layers=2", "model.hidden=512", "model.num_heads=8", "model.ffn_hidden=2048",
             "model.expert_ffn_hidden=2048", "training.batch_per_gpu=4", "training.seq_len=128"),
    "deep": ("model.num_layers=8", "model.hidden=192", "model.num_heads=4", "model.ffn_hidden=768",
             "model.expert_ffn_hidden=768", "training.batch_per_gpu=8", "training.seq_len=64"),
}
SCHEDULE = "sequential"


@dataclass(frozen=True)
class ReferenceRow:
    """One size: the measured median step and its spread, the two predictions and their errors."""

    size: str
    settings: tuple[str, ...]
    measured_s: float
    measured_spread_s: float
    measured_steps_s: tuple[float, ...]
    from_config_s: float
    from_trace_s: float
    trace_coverage: float        # share of the traced step inside the graph's ops (mean over ranks)

    @property
    def config_error(self) -> float:
        return self.from_config_s / self.measured_s - 1.0

    @property
    def trace_error(self) -> float:
        return self.from_trace_s / self.measured_s - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config_error": self.config_error, "trace_error": self.trace_error}


@dataclass(frozen=True)
class ReferenceReport:
    hardware: str
    model: str
    rows: tuple[ReferenceRow, ...]
    environment: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"hardware": self.hardware, "model": self.model, "schedule": SCHEDULE,
                "rows": [row.to_dict() for row in self.rows], "environment": dict(self.environment)}

    def text(self) -> str:
        rows = [{"size": r.size, "measured": f"{r.measured_s * 1e3:.1f}", "spread": f"±{r.measured_spread_s * 1e3:.1f}",
                 "config": f"{r.from_config_s * 1e3:.1f}", "config_error": f"{r.config_error:+.1%}",
                 "trace": f"{r.from_trace_s * 1e3:.1f}", "trace_error": f"{r.trace_error:+.1%}",
                 "coverage": f"{r.trace_coverage:.0%}"} for r in self.rows]
        columns = [("size", "size"), ("measured", "measured ms"), ("spread", "spread"),
                   ("config", "from config ms"), ("config_error", "error"), ("trace", "from trace ms"),
                   ("trace_error", "error"), ("coverage", "traced step in ops")]
        head = (f"reference model ({self.model}, plain PyTorch, DDP) on {self.hardware}: "
                f"{self.environment.get('world_size')} ranks, {self.environment.get('backend')}, "
                f"torch {self.environment.get('torch')}; predicted as {SCHEDULE}")
        return "\n".join([head, metrics_table(rows, columns)])


def validate_reference(hardware: str, *, model: str = BASE_MODEL, sizes: Mapping[str, Sequence[str]] = SIZES,
                       nproc: int = 2, warmup: int = 2, steps: int = 5, timeout_s: float = 900) -> ReferenceReport:
    """Trace, time and predict every size of the reference model on one host of ``nproc`` ranks."""
    rows = []
    environment: Mapping[str, Any] = {}
    for size, settings in sizes.items():
        overrides = parse_assignments(list(settings))
        with tempfile.TemporaryDirectory(prefix="moesim-reference-") as scratch:
            traced_path = Path(scratch) / f"{size}.json"
            traced = trace_model(model, traced_path, overrides=overrides, settings=settings, nproc=nproc,
                                 steps=steps, warmup=warmup, timeout_s=timeout_s, trace_steps=steps)
            from_trace = run_schedule(scenario(traced_path, hardware, 1), SCHEDULE).metrics.iteration_time_s
        from_config = run_schedule(scenario(model, hardware, 1, overrides), SCHEDULE).metrics.iteration_time_s
        times = traced.source.step_times_s
        ranks = traced.recorded.ranks
        coverage = statistics.fmean(1.0 - r.unattributed_s / r.step_s for r in ranks)
        rows.append(ReferenceRow(size, tuple(settings), statistics.median(times), (max(times) - min(times)) / 2,
                                 times, from_config, from_trace, coverage))
        environment = {"world_size": nproc, "backend": traced.source.backend, "torch": traced.source.torch}
    return ReferenceReport(hardware, model, tuple(rows), environment)
