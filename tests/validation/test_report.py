"""The validation report is produced end to end: prediction, a real 2-rank gloo run, errors, ranking, traces."""

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from moesim.validation.report import Variant, validate, write_report  # noqa: E402

SMALL = {"model.num_layers": 2, "training.batch_per_gpu": 2}


def test_report_compares_predicted_and_measured_per_schedule(tmp_path):
    variants = (Variant("sequential", "sequential"), Variant("tutel-d2", "tutel", {"degree": 2}))
    report = validate("cpu-loopback", workloads=["tiny-moe-a"], variants=variants, nproc=2, warmup=1,
                      iterations=2, overrides=SMALL, trace_dir=tmp_path / "traces", timeout_s=300)
    assert [r.variant for r in report.rows] == ["sequential", "tutel-d2"]
    for row in report.rows:
        assert row.predicted_s > 0 and row.measured_s > 0 and len(row.measured_iterations_s) == 2
        assert row.error == pytest.approx(row.predicted_s / row.measured_s - 1)
    assert report.mape == pytest.approx(sum(abs(r.error) for r in report.rows) / 2)
    (ranking,) = report.rankings
    assert sorted(ranking.predicted) == sorted(ranking.measured) == ["sequential", "tutel-d2"]
    assert report.environment["backend"] == "gloo" and report.environment["world_size"] == 2
    assert len(report.traces) == 4
    for path in report.traces:
        trace = json.loads(Path(path).read_text())
        assert any(event["ph"] == "X" for event in trace["traceEvents"])
    saved = json.loads(write_report(report, tmp_path / "report.json").read_text())
    assert saved["mape"] == pytest.approx(report.mape) and len(saved["rows"]) == 2
