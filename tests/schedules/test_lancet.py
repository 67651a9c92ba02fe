"""The lancet policy end to end: its knobs, its ablations, and its gate rule."""

import json
from dataclasses import replace

import pytest

from moesim.api import run_schedule, scenario
from moesim.cli import main
from moesim.errors import MoesimError
from moesim.schedules import get_schedule
from moesim.workload.ops import Axis

SMALL = {"model.num_layers": 4}


@pytest.fixture(scope="module")
def scn():
    return scenario("gpt2-s-moe", "p3dn.24xlarge", 2, SMALL)


def with_settings(scn, **settings):
    return replace(scn, schedule_settings=settings)


def test_with_both_passes_off_lancet_is_tutel(scn):
    # No dW moves, no partitions: program order with all-to-alls on their own stream (Tutel at degree 1 on a
    # model without shared experts) and Tutel's chunked plans, judged by the engine: Tutel's own search.
    bare = run_schedule(with_settings(scn, dw_scheduling=False, partition=False), "lancet")
    tutel = run_schedule(scn, "tutel")
    assert bare.metrics.iteration_time_s == tutel.metrics.iteration_time_s
    degree = tutel.knobs["degree"]
    assert bare.knobs["kept"] == ("program order" if degree == 1 else f"chunks {degree}")
    judged = {e["candidate"]: e["iteration_s"] for e in bare.knobs["judged"]}
    assert judged["program order"] == dict(tutel.decisions.degree_search)[1]


def test_ranges_hold_their_moe_layer_and_k_divides_the_batch(scn):
    result = run_schedule(scn, "lancet")
    graph, ranges = result.plan.graph, result.knobs["ranges"]
    assert ranges, "gpt2-s-moe on p3dn has all-to-all worth hiding"
    batch = graph.facts.batch_per_gpu
    for entry in ranges:
        assert 2 <= entry["k"] <= 8 and batch % entry["k"] == 0
        first, last = graph.by_name(entry["first"]).id, graph.by_name(entry["last"]).id
        layer = entry["layer"]
        assert first <= graph.by_name(f"L{layer}.dispatch").id < graph.by_name(f"L{layer}.combine").id <= last
        parts = [t for t in result.plan.tasks if first <= t.op <= last]
        assert {t.parts for t in parts} == {entry["k"]}


def test_dw_placement_moves_only_backward_ops_behind_backward_all_to_alls(scn):
    result = run_schedule(scn, "lancet")
    graph = result.plan.graph
    placements = result.knobs["dw_placement"]
    assert placements
    for entry in placements:
        assert graph.by_name(entry["all_to_all"]).phase.value == "backward_input"
        assert all(graph.by_name(name).phase.value.startswith("backward") for name in entry["placed"])
        assert entry["covered_s"] > 0


def test_ablations_switch_their_pass_off(scn):
    dw_only = run_schedule(with_settings(scn, partition=False), "lancet")
    part_only = run_schedule(with_settings(scn, dw_scheduling=False), "lancet")
    assert "ranges" not in dw_only.knobs and dw_only.knobs["dw_placement"]
    assert "dw_placement" not in part_only.knobs and part_only.knobs["ranges"]
    assert all(t.axis is None for t in dw_only.plan.tasks)  # no partition (Tutel's chunks may cut the MoE)


def test_batch_prioritized_gate_never_partitions_the_router():
    scn = scenario("gpt2-s-moe", "p3dn.24xlarge", 2, {**SMALL, "training.gate": "batch_prioritized"})
    result = run_schedule(scn, "lancet")
    routers = {op.id for op in result.plan.graph.ops if op.role == "router"}
    assert all(t.parts == 1 for t in result.plan.tasks if t.op in routers)
    assert result.knobs["ranges"], "ranges may still start at the permute"


def test_batch_of_one_is_partitioned_along_the_sequence():
    scn = scenario("gpt2-s-moe", "p3dn.24xlarge", 2, {**SMALL, "training.batch_per_gpu": 1})
    result = run_schedule(with_settings(scn, dw_scheduling=False), "lancet")
    ranges = result.knobs["ranges"]
    assert ranges and all(entry["axis"] == "sequence" for entry in ranges)
    plan = result.plan
    split = [t for t in plan.tasks if t.axis is not None]  # Lancet's parts (Tutel's chunks carry no axis)
    assert split and all(t.axis is Axis.SEQUENCE for t in split)
    parts_of: dict[str, dict[int, object]] = {}
    for task in split:
        parts_of.setdefault(plan.op_of(task).name, {})[task.part] = task
    attention = [name for name in parts_of if name.endswith(".attention")]
    assert attention, "a range holds the causal attention"
    for name in attention:
        tasks, qkv = parts_of[name], parts_of[name.replace("attention", "qkv")]
        k = len(tasks)
        assert [tasks[p].fraction for p in range(k)] == [(2 * p + 1) / k**2 for p in range(k)]
        for p in range(k):  # part p waits for the keys and values of spans 0..p
            assert {qkv[q].id for q in range(p + 1)} <= set(tasks[p].deps)


def test_bad_knob_values_are_rejected():
    with pytest.raises(MoesimError, match="schedule.max_partitions"):
        get_schedule("lancet").make_config({"max_partitions": 16})


def test_knobs_reach_json_and_the_human_tables(capsys):
    argv = ["run", "--schedule", "lancet", "--nodes", "2", "--set", "model.num_layers=4"]
    assert main([*argv, "--json"]) == 0
    knobs = json.loads(capsys.readouterr().out)["knobs"]
    assert knobs["ranges"] and knobs["dw_placement"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "forward partitions" in out and "backward dW placement" in out
