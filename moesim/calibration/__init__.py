"""Calibration: fit a node's cost parameters to microbenchmark measurements (numpy only, no torch).

``validation/microbench.py`` measures (under torchrun) what ``sweeps`` plans and writes a
``Measurements`` JSON; ``fit_node`` fits the cost model's own formulas to it; ``write_calibrated``
writes ``hardware_specs/calibrated/<name>.yaml``. ``moesim.validation.calibrate`` runs all three.
"""

from moesim.calibration.fit import CalibrationFit, fit_node
from moesim.calibration.measurements import (
    CommUnderComputeSample,
    KernelSample,
    Measurements,
    StreamHandoffSample,
    Sweep,
    TaskOverheadSample,
    load_measurements,
)
from moesim.calibration.report import FitReport, KeptParam, ParamFit, SweepError
from moesim.calibration.writer import calibrated_dir, check_name, render_calibrated, write_calibrated

__all__ = [
    "CalibrationFit",
    "CommUnderComputeSample",
    "FitReport",
    "KeptParam",
    "KernelSample",
    "Measurements",
    "ParamFit",
    "StreamHandoffSample",
    "Sweep",
    "SweepError",
    "TaskOverheadSample",
    "calibrated_dir",
    "check_name",
    "fit_node",
    "load_measurements",
    "render_calibrated",
    "write_calibrated",
]
