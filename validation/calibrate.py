"""Calibrate this machine: run the microbenchmarks under torchrun, fit the cost model, write the spec.

``moesim calibrate`` calls ``calibrate``; ``fit_and_write`` does the same from measurements taken
elsewhere (e.g. ``torchrun ... -m moesim.validation.microbench --out m.json`` on a cluster node, then
``load_measurements``). Torch is not imported here: only the ranks run it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.calibration.fit import CalibrationFit, fit_node
from moesim.calibration.measurements import Measurements, load_measurements
from moesim.calibration.report import FitReport
from moesim.calibration.writer import check_name, write_calibrated
from moesim.dtypes import DType
from moesim.errors import MoesimError
from moesim.hardware.presets import load_node
from moesim.hardware.specs import NodeSpec
from moesim.validation.launch import torchrun

MICROBENCH = "moesim.validation.microbench"
MEASURABLE = (DType.FP32, DType.BF16, DType.FP16)  # the formats the microbenchmark has kernels for


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """The file written, the fit (calibrated node and report) and the measurements it came from."""

    path: Path
    fit: CalibrationFit
    measurements: Measurements

    @property
    def report(self) -> FitReport:
        return self.fit.report

    def summary(self) -> str:
        """What the CLI prints: the file, where the numbers came from, and the fit report."""
        env = self.measurements.environment
        head = (f"wrote {self.path} (base {self.report.base}; torch {env.torch}, {env.backend}, "
                f"world size {env.world_size})")
        return "\n".join([head, *self.report.summary_lines()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the path, the calibrated node, the fit report and the raw measurements."""
        return {"path": str(self.path), "node": self.fit.node.model_dump(mode="json"),
                "report": self.report.model_dump(mode="json"),
                "measurements": self.measurements.model_dump(mode="json")}


def calibrate(name: str, *, base: str = "cpu-loopback", nproc: int = 2, out_dir: Path, quick: bool = False,
              timeout_s: float = 600, dtype: DType | None = None,
              measurements_out: Path | None = None) -> CalibrationResult:
    """Microbenchmark ``nproc`` ranks on this machine, fit ``base``'s parameters, and write
    ``out_dir/<name>.yaml``.

    ``name`` and ``base`` are checked before anything runs (MoesimError for a name that is not a plain
    file stem or would shadow a hand-written node preset, or an unknown base). A failed or timed-out
    run raises MoesimError with the ranks' last lines. ``dtype`` is the compute sweeps' format
    (default: the first of bf16, fp16, fp32 that ``base`` has a peak for on a GPU; fp32 on a CPU).
    ``measurements_out``: also keep the microbenchmark's JSON there (``load_measurements`` reads it).
    """
    check_name(name)
    base_node = load_node(base)
    chosen = dtype or default_dtype(base_node)
    if chosen not in MEASURABLE:
        raise MoesimError(f"dtype: the microbenchmark measures {', '.join(d.value for d in MEASURABLE)}, "
                          f"not {chosen.value}")
    args = [*(["--quick"] if quick else []), "--dtype", chosen.value]
    with tempfile.TemporaryDirectory(prefix="moesim-calibrate-") as scratch:
        measured = Path(scratch) / "measurements.json"
        # The fit models an all-reduce as a ring (moesim.calibration.comm_fit): NCCL must run it as one, not as
        # NVLS or a tree (gloo ignores the variable).
        torchrun(MICROBENCH, ["--out", str(measured), *args], nproc, timeout_s=timeout_s, env={"NCCL_ALGO": "Ring"})
        measurements = load_measurements(measured)
        if measurements_out is not None:
            shutil.copyfile(measured, measurements_out)
    return fit_and_write(measurements, name, base=base_node, out_dir=out_dir)


def default_dtype(base: NodeSpec) -> DType:
    """The format to measure a base in: what GPUs train in (bf16, else fp16: a V100 has no bf16),
    fp32 on a CPU, where the eager kernels of the harness run fp32."""
    preferred = (DType.BF16, DType.FP16, DType.FP32) if base.gpu.device == "gpu" else (DType.FP32,)
    return next((d for d in preferred if d in base.gpu.peak_tflops), DType.FP32)


def fit_and_write(measurements: Measurements, name: str, *, base: str | NodeSpec = "cpu-loopback",
                  out_dir: Path) -> CalibrationResult:
    """Fit ``base`` (a node preset name, path or spec) to ``measurements`` and write the calibrated spec."""
    check_name(name)
    base_node = base if isinstance(base, NodeSpec) else load_node(base)
    fit = fit_node(measurements, base_node, name=name)
    return CalibrationResult(path=write_calibrated(fit, Path(out_dir)), fit=fit, measurements=measurements)
