"""The calibrated YAML: loads by path and by name to the fitted node, and says where each number came from."""

from __future__ import annotations

from pathlib import Path

import pytest

import moesim.hardware.presets as presets_module
from moesim.calibration import CalibrationFit, check_name, fit_node, render_calibrated, write_calibrated
from moesim.calibration.report import SWEEP_WIDTH
from moesim.errors import MoesimError
from moesim.hardware import list_node_presets, load_cluster, load_node

PROVENANCE = "fitted by moesim calibrate on 2025-03-14, torch 2.13.0+synthetic, gloo, world size 4"


@pytest.fixture
def fit(cpu_measurements) -> CalibrationFit:
    return fit_node(cpu_measurements, load_node("cpu-loopback"), name="cpu-test")


def line_of(text: str, path: str) -> str:
    """The YAML line of dotted ``path`` (two spaces of indent per level, as the writer emits)."""
    lines = iter(text.splitlines())
    for depth, key in enumerate(path.split(".")):
        prefix = "  " * depth + key + ":"
        line = next(line for line in lines if line.startswith(prefix))
    return line


def test_the_file_loads_by_path_to_the_fitted_node(fit, tmp_path: Path) -> None:
    path = write_calibrated(fit, tmp_path / "calibrated")  # the folder does not exist yet
    assert path == tmp_path / "calibrated" / "cpu-test.yaml"
    cluster = load_cluster(path)
    assert cluster.node == fit.node
    assert cluster.node.gpu.peak_tflops == {"fp32": pytest.approx(0.05, rel=1e-3)}


def test_the_file_loads_by_name_from_the_calibrated_folder(fit, tmp_path: Path, monkeypatch) -> None:
    write_calibrated(fit, tmp_path / "calibrated")
    monkeypatch.setattr(presets_module, "_specs_root", lambda: tmp_path)
    monkeypatch.chdir(tmp_path / "calibrated")  # no ./hardware_specs/calibrated of the working directory
    assert list_node_presets() == ["cpu-test"]
    assert load_node("cpu-test") == fit.node


def test_every_fitted_number_says_how_and_every_kept_one_why(fit) -> None:
    text = render_calibrated(fit)
    for entry in fit.report.fitted:
        line = line_of(text, entry.path)
        assert PROVENANCE in line, line
        if entry.sweeps:
            assert "rel. RMS error 0.0%" in line, line
    for entry in fit.report.kept:
        assert "# kept from cpu-loopback: " + entry.reason in line_of(text, entry.path)
    assert "measured asymptotic rates" in text and "efficiencies 1.0" in text
    assert "#   matmul" + " " * (SWEEP_WIDTH - len("matmul")) + "   0.0% /   0.0% / 1.0000  (8 samples)" in text


def test_small_and_round_numbers_read_back_as_the_same_floats(fit, tmp_path: Path) -> None:
    cost = fit.node.cost.model_copy(update={"all_to_all_peer_latency_us": 1e-05, "launch_overhead_us": 3.0})
    odd = CalibrationFit(node=fit.node.model_copy(update={"cost": cost}), report=fit.report)
    assert "all_to_all_peer_latency_us: 1.0e-05" in render_calibrated(odd)
    assert load_node(write_calibrated(odd, tmp_path)) == odd.node


def test_writing_replaces_the_file_whole_and_leaves_no_temporary(fit, cpu_measurements, tmp_path: Path) -> None:
    write_calibrated(fit, tmp_path)
    slower = cpu_measurements.model_copy(update={"matmul": tuple(
        s.model_copy(update={"seconds": 2 * s.seconds}) for s in cpu_measurements.matmul)})
    refit = fit_node(slower, load_node("cpu-loopback"), name="cpu-test")
    path = write_calibrated(refit, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["cpu-test.yaml"]
    assert load_node(path) == refit.node and refit.node != fit.node


@pytest.mark.parametrize("name", ["cpu-loopback", "dgx-h100", "a/b", "x.yaml", "", "-x"])
def test_names_that_would_not_load_by_name_are_refused(name: str) -> None:
    with pytest.raises(MoesimError, match="^name: "):
        check_name(name)
