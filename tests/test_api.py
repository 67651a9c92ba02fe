"""The notebook API: simulate / compare and what a result offers."""

import json

import pytest

import moesim
from moesim.engine import simulate_plan
from moesim.errors import MoesimError

SMALL = {"model.num_layers": 2}


@pytest.fixture(scope="module")
def result():
    return moesim.simulate(model="gpt2-s-moe", hardware="p3dn.24xlarge", nodes=2, schedule="sequential", **SMALL)


def test_result_offers_metrics_timeline_table_trace_and_plot(result, tmp_path):
    assert result.metrics.num_gpus == 16
    assert result.metrics.iteration_time_s == pytest.approx(result.timeline.makespan)
    frame = result.to_dataframe()
    assert len(frame) == len(result.timeline.spans)
    trace = json.loads(result.write_chrome_trace(tmp_path / "t.json").read_text())
    assert trace["traceEvents"]
    figure = result.plot_timeline(path=tmp_path / "g.png")
    assert figure is not None and (tmp_path / "g.png").stat().st_size > 0


def test_both_override_spellings_agree():
    dotted = moesim.simulate(nodes=1, **{"model.num_layers": 2, "training.batch_per_gpu": 4})
    keyword = moesim.simulate(nodes=1, model__num_layers=2, training__batch_per_gpu=4)
    assert dotted.metrics.iteration_time_s == keyword.metrics.iteration_time_s
    assert dotted.scenario.workload.training.batch_per_gpu == 4


def test_same_inputs_same_timeline(result):
    again = moesim.simulate(model="gpt2-s-moe", hardware="p3dn.24xlarge", nodes=2, schedule="sequential", **SMALL)
    assert again.timeline.spans == result.timeline.spans


def test_bad_override_is_a_moesim_error():
    with pytest.raises(MoesimError, match="training.batch_per_gpu"):
        moesim.simulate(nodes=1, **{"training.batch_per_gpu": 0})


def test_symmetric_simulation_matches_every_rank_played():
    # EP groups of 4 inside each node, so several groups run each all-to-all side by side.
    scn = moesim.scenario("gpt2-s-moe", "p4de.24xlarge", 2, {"model.num_layers": 2, "training.ep_size": 4})
    policy = moesim.api.get_schedule("sequential")
    plan = policy.plan_with(scn.graph, scn.cost)
    symmetric = simulate_plan(plan, scn.cost, symmetric=True)
    full = simulate_plan(plan, scn.cost, symmetric=False)
    assert len(full.represents) == 16
    assert full.makespan == pytest.approx(symmetric.makespan, rel=1e-6)


def test_compare_runs_every_schedule_on_the_same_inputs():
    results = moesim.compare(nodes=1, **SMALL)
    assert [r.schedule for r in results] == list(moesim.api.registered())
    assert len({id(r.scenario.graph) for r in results}) == 1
