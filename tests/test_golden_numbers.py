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
        "sequential": 1.4149461577611557, "tutel": 1.2104306308591857, "lancet": 1.1426383066101045},
    ("deepseek-v3", "p4de.24xlarge"): {
        "sequential": 16.741527979390952, "tutel": 14.386224989112877, "lancet": 13.441316643087237},
    ("gpt-moe-1.3b-128e", "p4de.24xlarge"): {
        "sequential": 0.6357062978539884, "tutel": 0.5542101063152389, "lancet": 0.5156441270051514},
    ("gpt2-l-moe", "p4de.24xlarge"): {
        "sequential": 2.2875837764815428, "tutel": 2.1316268455724257, "lancet": 2.10542580193608},
    ("gpt2-s-moe", "p4de.24xlarge"): {
        "sequential": 1.6255017110000851, "tutel": 1.505711641420527, "lancet": 1.4879714486932498},
    ("mixtral-8x7b", "p4de.24xlarge"): {
        "sequential": 2.698285987115322, "tutel": 2.698285987115322, "lancet": 2.6861272710935666},
    ("qwen3-235b-a22b", "p4de.24xlarge"): {
        "sequential": 12.920010039904426, "tutel": 11.381250751802563, "lancet": 10.717802096038051},
    ("switch-base-128", "p4de.24xlarge"): {
        "sequential": 0.10105735758988624, "tutel": 0.09234117337996967, "lancet": 0.07627279466629237},
    ("tiny-moe-a", "p4de.24xlarge"): {
        "sequential": 0.004810106809921203, "tutel": 0.004663526172581653, "lancet": 0.004294959427548324},
    ("tiny-moe-b", "p4de.24xlarge"): {
        "sequential": 0.01112620543892555, "tutel": 0.010543984780908493, "lancet": 0.009788355323814285},
    ("deepseek-v2-lite", "dgx-h100"): {
        "sequential": 0.2945665199074479, "tutel": 0.22744073564198564, "lancet": 0.2127037962977621},
    ("deepseek-v3", "dgx-h100"): {
        "sequential": 3.8419535545059533, "tutel": 3.100096159815622, "lancet": 2.8903494270918615},
    ("gpt-moe-1.3b-128e", "dgx-h100"): {
        "sequential": 0.20697371631142966, "tutel": 0.19847855845737972, "lancet": 0.1919435270420162},
    ("gpt2-l-moe", "dgx-h100"): {
        "sequential": 0.6560398233806315, "tutel": 0.6417306999317096, "lancet": 0.6338050875613132},
    ("gpt2-s-moe", "dgx-h100"): {
        "sequential": 0.465256293656445, "tutel": 0.45350254197884554, "lancet": 0.4484981237595373},
    ("mixtral-8x7b", "dgx-h100"): {
        "sequential": 0.6670270482721825, "tutel": 0.6590438496459196, "lancet": 0.6508233584078772},
    ("qwen3-235b-a22b", "dgx-h100"): {
        "sequential": 2.5860099746450946, "tutel": 2.1023792910870855, "lancet": 1.8697830001215263},
    ("switch-base-128", "dgx-h100"): {
        "sequential": 0.03787543680642273, "tutel": 0.03710453731079102, "lancet": 0.03458704886055183},
    ("tiny-moe-a", "dgx-h100"): {
        "sequential": 0.002496192822234423, "tutel": 0.002440126218866212, "lancet": 0.002364156233668351},
    ("tiny-moe-b", "dgx-h100"): {
        "sequential": 0.005018600131509122, "tutel": 0.004858533528140911, "lancet": 0.004344075726360231},
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
