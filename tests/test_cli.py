"""The CLI's contract: command names, JSON keys, tables, one-line errors with exit code 2, nothing half-written."""

import json
import shutil
import subprocess

import pytest

from moesim.cli import main

SMALL = ["--model", "gpt2-s-moe", "--hardware", "p3dn.24xlarge", "--nodes", "1",
         "--set", "model.num_layers=2"]
RUN_KEYS = {"schedule", "num_gpus", "iteration_time_s", "compute_busy_s", "comm_busy_s", "exposed_comm_s",
            "overlap_ratio", "flops_per_gpu", "a2a_bytes_per_gpu", "knobs"}


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_presets_and_schedules(capsys):
    code, out, _ = run_cli(capsys, "list", "--json")
    listing = json.loads(out)
    assert code == 0
    assert {"gpt2-s-moe", "gpt2-l-moe", "gpt-moe-1.3b-128e", "switch-base-128", "mixtral-8x7b",
            "deepseek-v2-lite", "deepseek-v3", "qwen3-235b-a22b"} <= set(listing["models"])
    assert {"p3dn.24xlarge", "p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "dgx-a100", "dgx-h100",
            "hgx-h200", "hgx-b200", "mi300x-8"} <= set(listing["hardware"])
    assert "sequential" in listing["schedules"]


def test_run_json_has_the_documented_keys(capsys):
    code, out, _ = run_cli(capsys, "run", *SMALL, "--schedule", "sequential", "--json")
    result = json.loads(out)
    assert code == 0
    assert set(result) >= RUN_KEYS
    assert result["num_gpus"] == 8 and result["schedule"] == "sequential"
    assert result["iteration_time_s"] > result["exposed_comm_s"] > 0


def test_compare_json_is_a_list_over_every_schedule(capsys):
    from moesim.schedules import registered

    code, out, _ = run_cli(capsys, "compare", *SMALL, "--json")
    results = json.loads(out)
    assert code == 0
    assert [r["schedule"] for r in results] == list(registered())
    assert all(set(r) >= RUN_KEYS for r in results)


def test_no_arguments_compares_gpt2_s_on_two_p3dn_nodes(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 0
    assert "gpt2-s-moe on 2 x p3dn.24xlarge (16 GPUs" in out
    assert "sequential" in out and "iteration ms" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["run", "--model", "no-such-model"], "no-such-model"),
    (["run", "--hardware", "no-such-node"], "no-such-node"),
    (["run", "--nodes", "0"], "nodes"),
    (["run", "--schedule", "nope"], "nope"),
    (["run", "--set", "training.ep_size=3"], "ep_size"),
    (["run", "--set", "training.no_such_knob=1"], "no_such_knob"),
    (["run", "--set", "weird.key=1"], "weird.key"),
    (["run", "--set", "novalue"], "novalue"),
    (["run", "--layers", "3-1", "--plot", "x.png"], "--layers"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_bad_input_writes_nothing(capsys, tmp_path):
    trace, plot = tmp_path / "t.json", tmp_path / "t.png"
    code, _, _ = run_cli(capsys, "run", "--set", "training.ep_size=3", "--trace", str(trace), "--plot", str(plot))
    assert code == 2
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(capsys, "run", "--trace", str(tmp_path / "file" / "t.json"))
    assert code == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1


def test_missing_output_folders_are_made_once_the_run_succeeds(capsys, tmp_path):
    # the README's own `--trace out/trace.json --plot out/gantt.png` on a fresh clone
    trace, plot = tmp_path / "out" / "trace.json", tmp_path / "out" / "deep" / "gantt.png"
    assert run_cli(capsys, "run", *SMALL, "--trace", str(trace), "--plot", str(plot))[0] == 0
    assert json.loads(trace.read_text())["traceEvents"] and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run that fails makes no folder
    assert run_cli(capsys, "run", "--set", "training.ep_size=3", "--trace", str(tmp_path / "new" / "t.json"))[0] == 2
    assert not (tmp_path / "new").exists()


def test_trace_and_plot_are_written_and_deterministic(capsys, tmp_path):
    first, second, plot = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "g.png"
    assert run_cli(capsys, "run", *SMALL, "--trace", str(first), "--plot", str(plot), "--layers", "0-1")[0] == 0
    assert run_cli(capsys, "run", *SMALL, "--trace", str(second))[0] == 0
    assert first.read_bytes() == second.read_bytes()
    trace = json.loads(first.read_text())
    assert any(e["ph"] == "X" for e in trace["traceEvents"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "g.png"]


@pytest.mark.skipif(shutil.which("moesim") is None, reason="console script not installed")
def test_console_script_is_installed():
    proc = subprocess.run(["moesim", "run", "--hardware", "nowhere"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_validate_calibrate_json_keeps_stdout_one_json_document(capsys, monkeypatch):
    """With --calibrate, the calibration's summary goes to stderr under --json (stand-ins for the harness)."""
    import types

    import moesim.cli as cli

    calibration = types.SimpleNamespace(summary=lambda: "fitted: everything", to_dict=lambda: {})
    report = types.SimpleNamespace(to_dict=lambda: {"mape": 0.05})
    harness = {"calibrate": types.SimpleNamespace(calibrate=lambda *a, **k: calibration),
               "report": types.SimpleNamespace(validate=lambda *a, **k: report)}
    monkeypatch.setattr(cli, "_validation", harness.__getitem__)
    code, out, err = run_cli(capsys, "validate", "--calibrate", "--json")
    assert code == 0 and json.loads(out) == {"mape": 0.05} and "fitted: everything" in err


def _validate_text(capsys, monkeypatch, measured_row):
    """``moesim validate``'s text for a stand-in report of tiny-moe-a: ``measured_row`` and a lancet row that has
    neither parts nor calls (checked to show nothing). Returns ``measured_row``'s lines: one per section
    of the report that has something of it to show."""
    import types

    import moesim.cli as cli
    from moesim.validation.report import Ranking, Row, ValidationReport, render_text

    rows = (measured_row, Row("tiny-moe-a", "lancet", 0.29, 0.31, 0.01, (0.30, 0.31, 0.32)))
    report = ValidationReport("cpu-local", rows, (Ranking("tiny-moe-a", ("lancet", "sequential"),
                                                          ("lancet", "sequential"), True, True),),
                              {"world_size": 2, "backend": "gloo", "torch": "2.13.0"})
    harness = types.SimpleNamespace(validate=lambda *a, **k: report, render_text=render_text)
    monkeypatch.setattr(cli, "_validation", {"report": harness}.get)
    code, out, _ = run_cli(capsys, "validate")
    assert code == 0
    assert "tiny-moe-a lancet:" not in out  # a row without measured parts or calls has nothing to show
    return [line for line in out.splitlines() if line.startswith("  tiny-moe-a sequential:")]


def test_validate_prints_the_parts_where_the_error_is(capsys, monkeypatch):
    """The text report names, per schedule, the parts whose measured time differs most from the prediction."""
    from moesim.validation.report import Row

    parts = (("not computing", 0.010, 0.018), ("expert_fc1:forward", 0.012, 0.014), ("qkv:forward", 0.02, 0.0195),
             ("ln1:forward", 0.001, 0.0011), ("loss:forward", 0.001, 0.001))
    row = Row("tiny-moe-a", "sequential", 0.30, 0.32, 0.01, (0.31, 0.32, 0.33), parts)
    assert _validate_text(capsys, monkeypatch, row) == [
        "  tiny-moe-a sequential: not computing +8.0, expert_fc1:forward +2.0, qkv:forward -0.5, ln1:forward +0.1"]


def test_validate_prints_each_schedules_collective_calls(capsys, monkeypatch):
    """The text report gives, per schedule, the predicted mean call beside the measured calls' mean, median
    and 90th percentile for the collective parts with the most measured time."""
    from moesim.validation.report import CollectiveCalls, Row

    calls = (CollectiveCalls("dispatch:forward", 0.0014, 16, 0.0012, 0.0006, 0.0029),
             CollectiveCalls("combine:forward", 0.0014, 16, 0.0010, 0.0005, 0.0021),
             CollectiveCalls("grad_sync:grad_sync", 0.0079, 2, 0.0001, 0.0001, 0.0001))
    row = Row("tiny-moe-a", "sequential", 0.30, 0.32, 0.01, (0.31, 0.32, 0.33), (), calls)
    assert _validate_text(capsys, monkeypatch, row) == [
        "  tiny-moe-a sequential: dispatch:forward 1.40 / 1.20, 0.60, 2.90; combine:forward 1.40 / 1.00, 0.50, 2.10"]
