"""The real microbenchmark on 2 gloo ranks (--quick): its JSON validates and makes physical sense, it
fits, and the calibrated spec loads. One torchrun for the JSON checks, one through ``calibrate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from moesim.calibration import Sweep, load_measurements  # noqa: E402
from moesim.errors import MoesimError  # noqa: E402
from moesim.hardware import load_cluster  # noqa: E402
from moesim.validation.calibrate import MICROBENCH, calibrate, fit_and_write  # noqa: E402
from moesim.validation.launch import torchrun  # noqa: E402
from moesim.workload.ops import OpKind  # noqa: E402


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("microbench") / "measurements.json"
    torchrun(MICROBENCH, ["--out", str(path), "--quick"], 2, timeout_s=120)
    return path


def test_the_json_validates_and_describes_the_run(measured: Path) -> None:
    m = load_measurements(measured)
    env = m.environment
    assert (env.backend, env.device, env.world_size, env.ranks_per_host) == ("gloo", "cpu", 2, 2)
    assert env.torch.startswith("2.") and env.threads_per_rank >= 1
    for sweep in (m.matmul, m.elementwise, m.attention, m.layernorm, m.collectives):
        assert sweep and all(s.seconds > 0 and len(s.rank_seconds) == 2 for s in sweep)
    assert {(s.kind, s.group_size) for s in m.collectives} == {(OpKind.ALL_TO_ALL, 2), (OpKind.ALL_REDUCE, 2)}
    assert m.interference and all(s.seconds_alone > 0 and s.seconds_with_comm > 0 for s in m.interference)


def test_bigger_work_takes_longer(measured: Path) -> None:
    m = load_measurements(measured)
    squares = sorted((s.m, s.seconds) for s in m.matmul if s.m == s.n == s.k and s.m >= 64)
    assert len(squares) >= 4
    assert [t for _, t in squares] == sorted(t for _, t in squares), squares  # 8x the FLOPs per doubling
    for samples, size in ((m.elementwise, "numel"), (m.layernorm, "tokens"), (m.attention, "batch")):
        smallest, largest = min(samples, key=lambda s: s.flops), max(samples, key=lambda s: s.flops)
        assert largest.seconds > smallest.seconds, size
    for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
        runs = sorted((s.bytes_per_rank, s.seconds) for s in m.collectives_of(kind))
        assert runs[-1][1] > runs[0][1], kind  # 4 MB against 1 KB


def test_the_measurements_fit_and_the_spec_loads(measured: Path, tmp_path: Path) -> None:
    result = fit_and_write(load_measurements(measured), "cpu-microbench-test", base="cpu-loopback",
                           out_dir=tmp_path)
    node = load_cluster(result.path).node
    assert node == result.fit.node and node.gpu.device == "cpu" and node.gpus_per_node == 2
    assert node.gpu.peak_tflops["fp32"] > 0 and node.intra.bandwidth_gb_per_s > 0
    assert result.report.error_of(Sweep.MATMUL).rms_relative_error < 0.5  # GEMMs are what a roofline fits best


def test_calibrate_runs_end_to_end(tmp_path: Path) -> None:
    result = calibrate("cpu-calibrate-test", nproc=2, out_dir=tmp_path, quick=True, timeout_s=120)
    assert result.path == tmp_path / "cpu-calibrate-test.yaml"
    assert load_cluster(result.path).node == result.fit.node
    assert result.measurements.environment.world_size == 2
    assert "fitted by moesim calibrate" in result.path.read_text()
    assert result.summary().startswith(f"wrote {result.path}") and "fit error per sweep" in result.summary()
    assert json.loads(json.dumps(result.to_dict()))["node"]["name"] == "cpu-calibrate-test"


def test_calibrate_refuses_a_bad_name_before_running_anything(tmp_path: Path) -> None:
    with pytest.raises(MoesimError, match="^name: 'cpu-loopback' is a hand-written node preset"):
        calibrate("cpu-loopback", out_dir=tmp_path, timeout_s=1)
    assert list(tmp_path.iterdir()) == []
