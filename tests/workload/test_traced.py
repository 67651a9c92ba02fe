"""Traced workload files: written, read back and simulated wherever a preset goes; bad files refused."""

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from moesim.api import run_schedule, scenario
from moesim.cli import main
from moesim.errors import MoesimError
from moesim.workload.builder import build_graph
from moesim.workload.presets import load_workload
from moesim.workload.recorded import RecordedRun
from moesim.workload.routing import route
from moesim.workload.traced import TraceSource, read_traced, write_traced

CPU = "cpu-loopback"  # a committed CPU spec: 2 ranks per node of device cpu-rank
NO_INTERFERENCE = {"cost.compute_slowdown_under_comm": 0.0}


def recorded_for(workload, *, skew=False, seconds=lambda rank, op: 1e-3 * (rank + 1)):
    """A hand-made record for ``workload``: every compute op timed by ``seconds``, routing uniform or skewed."""
    graph = build_graph(workload)
    layers = []
    for layer in route(workload):
        counts = layer.counts.copy()
        if skew:  # every rank sends a quarter of expert 2's share (rank 1's) to expert 0 (rank 0's) instead
            moved = counts[:, 2] // 4
            counts[:, 2] -= moved
            counts[:, 0] += moved
        capacity = layer.capacity
        kept = counts if capacity is None else np.minimum(counts, capacity)
        layers.append({"layer": layer.layer, "counts": counts.tolist(), "kept": kept.tolist(), "capacity": capacity})
    ranks = [{"rank": r, "step_s": 0.5, "unattributed_s": 0.01,
              "op_seconds": {op.name: seconds(r, op) for op in graph.ops if not op.kind.is_collective}}
             for r in range(workload.num_gpus)]
    return RecordedRun.model_validate({"device": "cpu-rank", "world_size": workload.num_gpus, "routing": layers,
                                       "ranks": ranks})


def traced_file(tmp_path, name="tiny", overrides=None, **record):
    workload = load_workload("tiny-moe-a", num_gpus=2, gpu="cpu-rank", overrides=overrides)
    workload = workload.model_copy(update={"recorded": recorded_for(workload, **record)})
    path = tmp_path / f"{name}.json"
    source = TraceSource(tool="test", traced_at=datetime(2026, 12, 3, tzinfo=UTC))
    write_traced(path, name=name, workload=workload, source=source)
    return path


def test_a_traced_file_reads_back_and_its_measured_times_drive_the_compute(tmp_path):
    path = traced_file(tmp_path)
    scn = scenario(path, CPU, 1, NO_INTERFERENCE)
    compute = [op for op in scn.graph.ops if not op.kind.is_collective]
    assert all(op.measured_s == (1e-3, 2e-3) for op in compute)
    result = run_schedule(scn, "sequential")
    busy = {m.rank: m.compute_busy_s for m in result.metrics.per_rank}
    assert busy[0] == pytest.approx(len(compute) * 1e-3, rel=1e-9)
    assert busy[1] == pytest.approx(len(compute) * 2e-3, rel=1e-9)
    assert result.metrics.slowest_rank == 1


def test_every_schedule_runs_a_traced_workload_and_parts_take_their_fraction(tmp_path):
    scn = scenario(traced_file(tmp_path), CPU, 1, NO_INTERFERENCE)
    for schedule in ("sequential", "tutel", "lancet"):
        result = run_schedule(scn, schedule)
        assert result.metrics.iteration_time_s > 0
    tutel = run_schedule(scn, "tutel")  # chunked expert matmuls: the parts add up to the measured op
    expert = [s for s in tutel.timeline.spans if s.rank == 0 and s.name.startswith("L0.expert_fc1")
              and s.phase.value == "forward"]
    assert len(expert) > 1
    assert sum(s.end - s.start for s in expert) == pytest.approx(1e-3, rel=1e-9)


def test_recorded_routing_makes_a_dropless_all_to_all_uneven_and_pads_a_capped_one(tmp_path):
    same = {"seconds": lambda rank, op: 1e-3}
    dropless = {"training.capacity_factor": None}
    even = scenario(traced_file(tmp_path, "even", dropless, **same), CPU, 1, NO_INTERFERENCE)
    skewed = scenario(traced_file(tmp_path, "skewed", dropless, skew=True, **same), CPU, 1, NO_INTERFERENCE)
    assert even.graph.rank_symmetric
    assert not skewed.graph.rank_symmetric
    traffic = skewed.graph.by_name("L0.dispatch").comm.traffic
    assert traffic[0, 0, 0] > traffic[0, 0, 1]  # rank 0 (experts 0, 1) receives more than rank 1 (2, 3)
    capped = scenario(traced_file(tmp_path, "capped", skew=True, **same), CPU, 1, NO_INTERFERENCE)
    routing = capped.graph.facts.routing[0]
    assert routing.dropped_fraction > 0  # the skew overflows expert 0's capacity; buffers stay padded
    assert capped.graph.rank_symmetric


def test_measured_times_apply_only_on_the_device_traced(tmp_path):
    path = traced_file(tmp_path)
    a100 = tmp_path / "a100-pair.yaml"
    a100.write_text("name: a100-pair\ngpu: A100-SXM4-80GB\ngpus_per_node: 2\n"
                    "intra: {topology: nvswitch, bandwidth_gb_per_s: 300, latency_us: 3.4}\n"
                    "network: {nics_per_node: 1, nic_gbps: 100, latency_us: 9.6}\n")
    scn = scenario(path, a100, 1)
    assert all(op.measured_s is None for op in scn.graph.ops)
    config = scenario("tiny-moe-a", a100, 1)
    assert run_schedule(scn, "sequential").metrics.iteration_time_s == pytest.approx(
        run_schedule(config, "sequential").metrics.iteration_time_s, rel=1e-12)


def test_the_file_holds_the_graph_with_shapes_dependencies_and_phases(tmp_path):
    traced = read_traced(traced_file(tmp_path))
    by_name = {op.name: op for op in traced.ops}
    assert by_name["L0.qkv.dw"].phase.value == "backward_weight"
    assert by_name["L0.qkv.dx"].phase.value == "backward_input"
    assert by_name["L0.qkv"].dims == {"m": 1024, "n": 768, "k": 256}
    assert "L0.ln1" in by_name["L0.qkv"].deps
    assert traced.recorded.world_size == 2 and len(traced.recorded.routing) == 2


def _rewrite(path, change):
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda raw: raw.update(version=7), "version: 7 is not supported; allowed: 1"),
    (lambda raw: raw.update(format="chrome"), "format: expected 'moesim-workload'"),
    (lambda raw: raw["ops"][2]["dims"].update(n=1), "ops do not match the graph of its model config (op L0.qkv: dims)"),
    (lambda raw: raw["recorded"]["routing"][0]["counts"][0].__setitem__(0, 0), "recorded.routing.0.counts.0"),
    (lambda raw: raw["model"].update(hidden=-1), "model.hidden"),
])
def test_a_bad_file_is_refused_with_one_line(tmp_path, change, message):
    path = _rewrite(traced_file(tmp_path), change)
    with pytest.raises(MoesimError) as err:
        scenario(path, CPU, 1)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_traced_workload_fixes_its_world_size_and_config(tmp_path, capsys):
    path = traced_file(tmp_path)
    with pytest.raises(MoesimError, match="traced on 2 ranks"):
        scenario(path, CPU, 2)
    with pytest.raises(MoesimError, match="a traced workload fixes its model and training"):
        scenario(path, CPU, 1, {"training.batch_per_gpu": 4})
    assert main(["run", "--model", str(path), "--hardware", CPU, "--nodes", "2"]) == 2
    assert "traced on 2 ranks" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main(["run", "--model", str(tmp_path / "broken.json"), "--hardware", CPU, "--nodes", "1"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_the_bundled_traced_workloads_load_by_name_and_simulate():
    from moesim.workload.presets import list_traced_presets

    names = list_traced_presets()
    assert names == ["traced/tiny-moe-a", "traced/tiny-moe-a-dropless"]
    for name in names:
        result = run_schedule(scenario(name, CPU, 1), "lancet")
        assert result.metrics.iteration_time_s > 0
        assert result.scenario.graph.facts.routing  # the recorded routing
    dropless = scenario("traced/tiny-moe-a-dropless", CPU, 1).graph.facts.routing[0]
    assert dropless.capacity is None and len(set(dropless.counts.sum(axis=0).tolist())) > 1  # a real, uneven router
    with pytest.raises(MoesimError, match="unknown traced workload; allowed: traced/tiny-moe-a"):
        scenario("traced/nothing", CPU, 1)


def test_measured_op_times_take_no_further_compute_interference(tmp_path):
    """What a concurrent collective took from the compute is inside a measured time: the CPU host's charge
    for it applies to config-built ops only."""
    path = traced_file(tmp_path)
    stolen = {"cost.comm_cpu_us": 500.0, "cost.comm_cpu_us_per_mib": 300.0}
    traced = [run_schedule(scenario(path, CPU, 1, overrides), "tutel").metrics.iteration_time_s
              for overrides in ({}, stolen)]
    assert traced[0] == traced[1]
    config = [run_schedule(scenario("tiny-moe-a", CPU, 1, overrides), "tutel").metrics.iteration_time_s
              for overrides in ({}, stolen)]
    assert config[1] > config[0]
