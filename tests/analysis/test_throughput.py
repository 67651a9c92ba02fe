"""Throughput and cost: closed forms over the simulated iteration, the CLI's columns and --train-tokens."""

import json

import pytest

import moesim
from moesim.cli import main
from moesim.errors import MoesimError

PRICE = {"hardware.node.price_per_hour": 40.0}


@pytest.fixture(scope="module")
def lancet():
    return moesim.simulate(model="tiny-moe-a", hardware="p4de.24xlarge", nodes=2, schedule="lancet", **PRICE)


def test_rates_are_the_iterations_tokens_and_flops_over_its_time(lancet):
    m, rate = lancet.metrics, lancet.throughput
    tokens = lancet.scenario.workload.tokens_per_gpu * 16
    assert rate.tokens_per_s == pytest.approx(tokens / m.iteration_time_s)
    assert rate.tflops_per_gpu == pytest.approx(m.flops_per_gpu / m.iteration_time_s / 1e12)
    peak = lancet.scenario.cluster.node.gpu.peak_flops(lancet.scenario.cost.dtype)
    assert rate.mfu == pytest.approx(m.flops_per_gpu / m.iteration_time_s / peak)
    assert 0 < rate.mfu < 1


def test_cost_is_gpu_hours_at_the_node_price(lancet):
    rate = lancet.throughput
    hours = 1e9 / rate.tokens_per_s / 3600                       # wall clock for a billion tokens
    assert rate.train_gpu_hours(1e9) == pytest.approx(hours * 16)
    assert rate.train_usd(1e9) == pytest.approx(hours * 2 * 40.0)  # two nodes at $40 an hour
    assert rate.usd_per_million_tokens == pytest.approx(rate.train_usd(1e6))
    unpriced = moesim.simulate(model="tiny-moe-a", hardware="p4de.24xlarge", nodes=2, schedule="sequential")
    assert unpriced.throughput.usd_per_million_tokens is None and unpriced.throughput.train_usd(1e9) is None
    with pytest.raises(MoesimError, match="tokens: a positive, finite number"):
        rate.train_seconds(float("nan"))


def test_run_prints_the_rates_and_the_training_line(capsys):
    args = ["run", "--model", "tiny-moe-a", "--hardware", "p4de.24xlarge", "--train-tokens", "1e9",
            "--set", "hardware.node.price_per_hour=40"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "MFU" in out
    assert "sequential: 1e+09 tokens in " in out and "GPU-hours, $" in out
    assert main([*args, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["train"]["usd"] == pytest.approx(document["train"]["gpu_hours"] / 8 * 40)
    assert document["usd_per_million_tokens"] > 0 and 0 < document["mfu"] < 1


@pytest.mark.parametrize("value", ["abc", "inf", "0", "-5"])
def test_a_bad_token_count_is_one_line(capsys, value):
    assert main(["compare", "--train-tokens", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesim: error: moesim compare: argument --train-tokens:") and err.count("\n") == 1
