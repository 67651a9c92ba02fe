"""Golden numbers: the predicted iteration time of every model preset x schedule on two clusters.

A change to the cost model, the engine or a schedule that moves any prediction fails here, and the new
numbers land as a reviewed diff of ``GOLDEN`` below. To regenerate the table after a deliberate change:

    python tests/test_golden_numbers.py

prints it in this file's format; paste it over ``GOLDEN`` and say in the commit body why each number moved.
Every preset runs at its full size (defaults: uniform routing, each schedule's default knobs).
"""

from __future__ import annotations

import pytest

from moesim.api import compare
from moesim.schedules import registered
from moesim.workload.presets import list_model_presets

CLUSTERS = (("p4de.24xlarge", 2), ("dgx-h100", 2))  # 16 A100s over EFA; 16 H100s over InfiniBand

# (model, hardware) -> seconds per iteration, by schedule
GOLDEN: dict[tuple[str, str], dict[str, float]] = {
    ("deepseek-v2-lite", "p4de.24xlarge"): {
        "sequential": 1.4183907632344253, "tutel": 1.2126620190355935, "lancet": 1.1439822866216967},
    ("deepseek-v3", "p4de.24xlarge"): {
        "sequential": 16.786181388523808, "tutel": 14.422566732295365, "lancet": 13.477658386269711},
    ("gpt-moe-1.3b-128e", "p4de.24xlarge"): {
        "sequential": 0.6381479414047482, "tutel": 0.5566517498659987, "lancet": 0.5181799916313412},
    ("gpt2-l-moe", "p4de.24xlarge"): {
        "sequential": 2.2889311129405905, "tutel": 2.1329741820314725, "lancet": 2.106773138395127},
    ("gpt2-s-moe", "p4de.24xlarge"): {
        "sequential": 1.626009475433631, "tutel": 1.5062194058540728, "lancet": 1.4884792131267954},
    ("mixtral-8x7b", "p4de.24xlarge"): {
        "sequential": 2.6989368321177745, "tutel": 2.7090007439521724, "lancet": 2.686778116096019},
    ("qwen3-235b-a22b", "p4de.24xlarge"): {
        "sequential": 12.940382567771106, "tutel": 11.40162327966922, "lancet": 10.721046443110033},
    ("switch-base-128", "p4de.24xlarge"): {
        "sequential": 0.10154236812446206, "tutel": 0.09282618391454545, "lancet": 0.07704091499704978},
    ("tiny-moe-a", "p4de.24xlarge"): {
        "sequential": 0.004849811135571031, "tutel": 0.004703230498231481, "lancet": 0.004334663753198153},
    ("tiny-moe-b", "p4de.24xlarge"): {
        "sequential": 0.01109743083159459, "tutel": 0.010515210173577533, "lancet": 0.009759580716483324},
    ("deepseek-v2-lite", "dgx-h100"): {
        "sequential": 0.2963802645466151, "tutel": 0.22899381798000126, "lancet": 0.21512910199912252},
    ("deepseek-v3", "dgx-h100"): {
        "sequential": 3.889713312981345, "tutel": 3.140532170946069, "lancet": 2.9367053044323366},
    ("gpt-moe-1.3b-128e", "dgx-h100"): {
        "sequential": 0.20868757712424912, "tutel": 0.2004304322320284, "lancet": 0.19396944173304143},
    ("gpt2-l-moe", "dgx-h100"): {
        "sequential": 0.6571979595332614, "tutel": 0.6428888360843396, "lancet": 0.635069291357971},
    ("gpt2-s-moe", "dgx-h100"): {
        "sequential": 0.46590453382895713, "tutel": 0.4541507821513577, "lancet": 0.44914636393204926},
    ("mixtral-8x7b", "dgx-h100"): {
        "sequential": 0.6861930564640606, "tutel": 0.678059906191579, "lancet": 0.6698308663878771},
    ("qwen3-235b-a22b", "dgx-h100"): {
        "sequential": 2.6055962844255207, "tutel": 2.1219656008675067, "lancet": 1.8834613795318331},
    ("switch-base-128", "dgx-h100"): {
        "sequential": 0.03816454469583985, "tutel": 0.03738502943048761, "lancet": 0.03502519182006514},
    ("tiny-moe-a", "dgx-h100"): {
        "sequential": 0.0024722643657343144, "tutel": 0.0024161977623661035, "lancet": 0.0023402277771682424},
    ("tiny-moe-b", "dgx-h100"): {
        "sequential": 0.004972871972136314, "tutel": 0.004812805368768104, "lancet": 0.004298347566987423},
}


def predicted(model: str, hardware: str, nodes: int) -> dict[str, float]:
    return {r.schedule: r.metrics.iteration_time_s for r in compare(model, hardware, nodes)}


def test_the_table_covers_every_model_preset_schedule_and_cluster() -> None:
    assert set(GOLDEN) == {(model, hardware) for model in list_model_presets() for hardware, _ in CLUSTERS}
    assert all(list(times) == list(registered()) for times in GOLDEN.values())


@pytest.mark.parametrize(("model", "hardware", "nodes"),
                         [(model, hardware, nodes) for hardware, nodes in CLUSTERS for model in list_model_presets()])
def test_iteration_times_are_the_golden_numbers(model: str, hardware: str, nodes: int) -> None:
    assert predicted(model, hardware, nodes) == pytest.approx(GOLDEN[model, hardware], rel=1e-9)


if __name__ == "__main__":
    print("GOLDEN: dict[tuple[str, str], dict[str, float]] = {")
    for hardware, nodes in CLUSTERS:
        for model in list_model_presets():
            times = ", ".join(f"{name!r}: {value!r}" for name, value in predicted(model, hardware, nodes).items())
            print(f"    ({model!r}, {hardware!r}): {{\n        {times}}},".replace("'", '"'))
    print("}")
