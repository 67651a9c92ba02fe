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
        "sequential": 1.4000789632750017, "tutel": 1.1958532904189976, "lancet": 1.127771112123951},
    ("deepseek-v3", "p4de.24xlarge"): {
        "sequential": 16.47281720497463, "tutel": 14.117514214696538, "lancet": 13.172605868670884},
    ("gpt-moe-1.3b-128e", "p4de.24xlarge"): {
        "sequential": 0.6251340706638343, "tutel": 0.5436378791250848, "lancet": 0.5050718998149981},
    ("gpt2-l-moe", "p4de.24xlarge"): {
        "sequential": 2.2558670949110806, "tutel": 2.0999101640019626, "lancet": 2.073709120365615},
    ("gpt2-s-moe", "p4de.24xlarge"): {
        "sequential": 1.6017141998222386, "tutel": 1.4819241302426809, "lancet": 1.4641839375154033},
    ("mixtral-8x7b", "p4de.24xlarge"): {
        "sequential": 2.698285987115322, "tutel": 2.698285987115322, "lancet": 2.6861272710935666},
    ("qwen3-235b-a22b", "p4de.24xlarge"): {
        "sequential": 12.75437848059201, "tutel": 11.218507049356484, "lancet": 10.552213554907418},
    ("switch-base-128", "p4de.24xlarge"): {
        "sequential": 0.10031399786557862, "tutel": 0.091623426080614, "lancet": 0.07554886273992488},
    ("tiny-moe-a", "p4de.24xlarge"): {
        "sequential": 0.004782574968280178, "tutel": 0.004635994330940628, "lancet": 0.004267427585907299},
    ("tiny-moe-b", "p4de.24xlarge"): {
        "sequential": 0.011071141755643499, "tutel": 0.010488921097626443, "lancet": 0.009733291640532235},
    ("deepseek-v2-lite", "dgx-h100"): {
        "sequential": 0.2898782596692427, "tutel": 0.22281224320068085, "lancet": 0.20802085390176853},
    ("deepseek-v3", "dgx-h100"): {
        "sequential": 3.757217591682098, "tutel": 3.015360196991764, "lancet": 2.8056134642680064},
    ("gpt-moe-1.3b-128e", "dgx-h100"): {
        "sequential": 0.20363984236426172, "tutel": 0.19514468451021175, "lancet": 0.18860965309484823},
    ("gpt2-l-moe", "dgx-h100"): {
        "sequential": 0.6467950507255638, "tutel": 0.632485927276642, "lancet": 0.6245603149062456},
    ("gpt2-s-moe", "dgx-h100"): {
        "sequential": 0.4583227141651442, "tutel": 0.44656896248754474, "lancet": 0.44156454426823655},
    ("mixtral-8x7b", "dgx-h100"): {
        "sequential": 0.6584145405753308, "tutel": 0.6504313419490679, "lancet": 0.6422108507110259},
    ("qwen3-235b-a22b", "dgx-h100"): {
        "sequential": 2.5337792828061185, "tutel": 2.050420017614115, "lancet": 1.8176022581686206},
    ("switch-base-128", "dgx-h100"): {
        "sequential": 0.03764102379451246, "tutel": 0.03687012429888074, "lancet": 0.03435263584864156},
    ("tiny-moe-a", "dgx-h100"): {
        "sequential": 0.0024881678459713437, "tutel": 0.0024321012426031328, "lancet": 0.0023561312574052716},
    ("tiny-moe-b", "dgx-h100"): {
        "sequential": 0.0050025501789829644, "tutel": 0.004842483575614754, "lancet": 0.004328025773834075},
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
