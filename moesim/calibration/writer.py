"""Write a calibrated node spec: ``<out_dir>/<name>.yaml``, a NodeSpec with its device inline.

Every fitted number carries a comment saying it was fitted by ``moesim calibrate``, when, with which
torch, backend and world size, and the fit's error on its sweep; every number kept from the base spec
says why. The file loads with ``moesim.hardware.presets.load_cluster(path)``, and by name when it lies
in the package's ``calibrated/`` folder (``calibrated_dir()``).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from moesim.calibration.fit import CalibrationFit
from moesim.calibration.report import SWEEP_WIDTH, FitReport, KeptParam, ParamFit
from moesim.errors import MoesimError
from moesim.files import write_text_atomically

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*")
_INDENT = "  "


def calibrated_dir() -> Path:
    """The package's ``calibrated/`` folder (in an editable checkout: ``hardware_specs/calibrated``)."""
    try:
        return Path(str(resources.files("moesim.hardware_specs"))) / "calibrated"
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "hardware_specs" / "calibrated"


def check_name(name: str) -> None:
    """A calibrated spec's name must be a plain file stem and must not be a hand-written node preset's
    (``nodes/`` resolves first, so such a file would never load by name)."""
    if not _NAME.fullmatch(name) or name.endswith((".yaml", ".yml")):
        raise MoesimError(f"name: {name!r} must be letters, digits, '.', '_' or '-' (no path, no .yaml)")
    if (calibrated_dir().parent / "nodes" / f"{name}.yaml").is_file():
        raise MoesimError(f"name: {name!r} is a hand-written node preset and would shadow the calibrated file; "
                          f"choose another, e.g. {name}-calibrated")


def write_calibrated(fit: CalibrationFit, out_dir: Path) -> Path:
    """Write ``fit`` as ``out_dir/<node name>.yaml`` (creating ``out_dir``), atomically: a reader sees
    the old file or the new one, never half of one. Returns the path."""
    check_name(fit.node.name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{fit.node.name}.yaml"
    write_text_atomically(path, render_calibrated(fit))
    return path


def render_calibrated(fit: CalibrationFit) -> str:
    """The YAML text of ``fit``: a header on provenance and fit errors, then the node with comments."""
    comments = _field_comments(fit.report)
    lines = _header(fit)
    _emit(fit.node.model_dump(mode="json"), "", 0, comments, lines)
    return "\n".join(lines) + "\n"


def _header(fit: CalibrationFit) -> list[str]:
    report, env = fit.report, fit.report.environment
    lines = [
        f"# Calibrated by `moesim calibrate` on {report.measured_at.date().isoformat()} from microbenchmarks run "
        f"with torch {env.torch},",
        f"# backend {env.backend}, world size {env.world_size} (ranks per host: {env.ranks_per_host}, threads per "
        f"rank: {env.threads_per_rank}), devices: {', '.join(env.devices) or 'unknown'}.",
        f"# Base spec: {report.base}. Fit error per sweep (relative RMS / max relative / R^2 of seconds):",
    ]
    for error in report.sweeps:
        r_squared = "n/a" if error.r_squared is None else f"{error.r_squared:.4f}"
        lines.append(f"#   {error.sweep.value:<{SWEEP_WIDTH}} {error.rms_relative_error:6.1%} / "
                     f"{error.max_relative_error:6.1%} / {r_squared}  ({error.samples} samples)")
    if fit.node.gpu.device == "cpu":
        lines += ["# CPU host: there is no datasheet peak, so the measured asymptotic rates are written as",
                  "# gpu.peak_tflops, gpu.hbm_gb_per_s and intra.bandwidth_gb_per_s, with efficiencies 1.0."]
    else:
        lines.append("# GPU: datasheet peaks are kept; the fitted efficiencies are fractions of them.")
    lines.append("# Values not fitted were kept from the base spec; each says why.")
    return lines


def _field_comments(report: FitReport) -> dict[str, str]:
    env = report.environment
    provenance = (f"fitted by moesim calibrate on {report.measured_at.date().isoformat()}, torch {env.torch}, "
                  f"{env.backend}, world size {env.world_size}")
    comments = {entry.path: _fitted_comment(entry, report, provenance) for entry in report.fitted}
    comments.update({entry.path: _kept_comment(entry, report.base) for entry in report.kept})
    return comments


def _fitted_comment(entry: ParamFit, report: FitReport, provenance: str) -> str:
    errors = [e for e in (report.error_of(s) for s in entry.sweeps) if e is not None]
    if errors:
        detail = "; ".join(f"{e.sweep.value} sweep rel. RMS error {e.rms_relative_error:.1%}" for e in errors)
    else:
        detail = "set from the run" if not entry.sweeps else "no sweep error"
    return "; ".join(part for part in (provenance, detail, entry.note) if part)


def _kept_comment(entry: KeptParam, base: str) -> str:
    return f"kept from {base}: {entry.reason}"


def _emit(data: dict[str, Any], prefix: str, depth: int, comments: dict[str, str], lines: list[str]) -> None:
    for key, value in data.items():
        path = f"{prefix}{key}"
        pad = _INDENT * depth
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            _emit(value, f"{path}.", depth + 1, comments, lines)
            continue
        comment = comments.get(path)
        text = f"{pad}{key}: {_scalar(value)}"
        lines.append(f"{text}  # {comment}" if comment else text)


def _scalar(value: Any) -> str:
    """A YAML scalar that reads back as exactly ``value`` (floats keep a '.', so YAML 1.1 sees a float)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, exp, exponent = text.partition("e")
        return text if "." in mantissa else f"{mantissa}.0{exp}{exponent}"
    if isinstance(value, dict):
        return "{}"
    text = str(value)
    plain = _PLAIN.fullmatch(text) and yaml.safe_load(text) == text
    return text if plain else json.dumps(text)
