"""`moesim trace` and `moesim validate --reference`: a real 2-rank trace of the reference model becomes a
traced workload that every schedule simulates; the reference report's errors and rendering."""

import json
import types

import pytest

pytest.importorskip("torch")

from moesim.api import run_schedule, scenario  # noqa: E402
from moesim.cli import main  # noqa: E402
from moesim.overrides import parse_assignments  # noqa: E402
from moesim.validation.reference.trace import device_of, trace_model  # noqa: E402
from moesim.validation.reference.validate import ReferenceReport, ReferenceRow  # noqa: E402
from moesim.workload.traced import read_traced  # noqa: E402

SMALL = ("model.num_layers=2", "training.batch_per_gpu=2", "training.seq_len=32")


@pytest.fixture(scope="module")
def traced_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trace")
    path = folder / "small.json"
    trace_model("tiny-moe-a", path, overrides=parse_assignments(list(SMALL)), settings=SMALL, nproc=2, steps=1,
                warmup=1, timeout_s=300, kineto_dir=folder / "kineto")
    return path


def test_the_same_step_imported_from_its_kineto_traces_gives_the_same_workload(traced_path, capsys):
    kineto = sorted((traced_path.parent / "kineto").glob("rank*.json"))
    assert len(kineto) == 2
    imported_path = traced_path.parent / "imported.json"
    settings = [arg for setting in SMALL for arg in ("--set", setting)]
    assert main(["trace", "--model", "tiny-moe-a", *settings, "--kineto", *map(str, kineto),
                 "--out", str(imported_path)]) == 0
    assert f"wrote {imported_path}" in capsys.readouterr().out
    live, imported = read_traced(traced_path), read_traced(imported_path)
    assert imported.recorded.device == "cpu-rank"
    assert [op.name for op in imported.ops] == [op.name for op in live.ops]
    for mine, theirs in zip(imported.ops, live.ops, strict=True):
        if mine.measured_s is not None:
            assert mine.measured_s == pytest.approx(theirs.measured_s, rel=1e-3, abs=1e-6), mine.name
    for mine, theirs in zip(imported.recorded.ranks, live.recorded.ranks, strict=True):
        assert mine.step_s == pytest.approx(theirs.step_s, rel=1e-6)
        assert mine.unattributed_s == pytest.approx(theirs.unattributed_s, rel=1e-3, abs=1e-6)
    (layer,) = imported.recorded.routing  # with a capacity the routing is the routing model's (uniform here)
    assert layer.capacity == 16 and layer.counts == ((16, 16, 16, 16), (16, 16, 16, 16))
    assert run_schedule(scenario(imported_path, "cpu-loopback", 1), "lancet").metrics.iteration_time_s > 0


def test_a_real_trace_measures_every_compute_op_and_records_the_routing(traced_path):
    traced = read_traced(traced_path)
    assert traced.recorded.device == "cpu-rank" and traced.recorded.world_size == 2
    compute = [op for op in traced.ops if not op.kind.is_collective]
    unmeasured = [op.name for op in compute if op.measured_s is None]
    assert unmeasured == []
    assert all(min(op.measured_s) >= 0 for op in compute)
    assert sum(max(op.measured_s) for op in compute) > 0
    layers = [r.layer for r in traced.recorded.routing]
    assert layers == [0]  # tiny-moe-a cut to 2 blocks: MoE in block 0
    tokens = 2 * 32
    for routing in traced.recorded.routing:
        assert [sum(row) for row in routing.counts] == [tokens, tokens]  # top-1: one assignment per token
    for rank in traced.recorded.ranks:
        assert 0 <= rank.unattributed_s < rank.step_s


def test_every_schedule_simulates_the_traced_workload_with_its_measured_times(traced_path):
    scn = scenario(traced_path, "cpu-loopback", 1)
    assert all(op.measured_s is not None for op in scn.graph.ops if not op.kind.is_collective)
    for schedule in ("sequential", "tutel", "lancet"):
        assert run_schedule(scn, schedule).metrics.iteration_time_s > 0


def test_trace_wants_a_json_output_and_a_config_model(tmp_path, capsys):
    assert main(["trace", "--out", str(tmp_path / "w.txt")]) == 2
    assert ".json" in capsys.readouterr().err
    with pytest.raises(Exception, match="not a traced file"):
        trace_model(tmp_path / "w.json", tmp_path / "x.json")


@pytest.mark.parametrize(("environment", "device"), [
    ({"backend": "gloo", "devices": ["x86_64"]}, "cpu-rank"),
    ({"backend": "nccl", "devices": ["NVIDIA H100 80GB HBM3"]}, "H100-SXM5-80GB"),
    ({"backend": "nccl", "devices": ["NVIDIA H200"]}, "H200-SXM-141GB"),
    ({"backend": "nccl", "devices": ["NVIDIA A100-SXM4-80GB"]}, "A100-SXM4-80GB"),
    ({"backend": "nccl", "devices": ["NVIDIA A100-SXM4-40GB"]}, "A100-SXM4-40GB"),
    ({"backend": "nccl", "devices": ["NVIDIA L4"]}, "NVIDIA L4"),
])
def test_the_device_a_run_used_maps_to_a_gpu_preset(environment, device):
    assert device_of(environment) == device


def test_the_reference_report_gives_both_errors_as_json_and_text(capsys, monkeypatch):
    import moesim.cli as cli

    row = ReferenceRow("small", SMALL, 0.40, 0.01, (0.39, 0.40, 0.41), 0.30, 0.38, 0.9)
    assert row.config_error == pytest.approx(-0.25) and row.trace_error == pytest.approx(-0.05)
    report = ReferenceReport("cpu-local", "tiny-moe-a", (row,), {"world_size": 2, "backend": "gloo", "torch": "2.13"})
    harness = types.SimpleNamespace(validate_reference=lambda *a, **k: report)
    monkeypatch.setattr(cli, "_validation", {"reference.validate": harness}.get)
    assert main(["validate", "--reference", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][0]["config_error"] == pytest.approx(-0.25)
    assert out["rows"][0]["trace_error"] == pytest.approx(-0.05)
    assert main(["validate", "--reference"]) == 0
    text = capsys.readouterr().out
    assert "-25.0%" in text and "-5.0%" in text and "small" in text


def test_several_profiled_steps_give_each_names_median():
    from moesim.validation.reference.attribution import StepAttribution
    from moesim.validation.reference.train import _median_attribution

    steps = [StepAttribution(0.30, {"L0.qkv": 0.010, "loss.dx": 0.050}, {"(python)": 0.001}),
             StepAttribution(0.20, {"L0.qkv": 0.012, "loss.dx": 0.007}, {}),
             StepAttribution(0.25, {"L0.qkv": 0.011}, {"(python)": 0.003})]
    median = _median_attribution(steps)
    assert median.step_s == 0.25
    assert median.op_seconds == {"L0.qkv": 0.011, "loss.dx": 0.007}  # a stalled step's 50 ms does not count
    assert median.unattributed == {"(python)": 0.001}
    assert _median_attribution(steps[:1]) is steps[0]
