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
        "sequential": 2.0119756946759524, "tutel": 1.917392846663439, "lancet": 1.8744653384092138},
    ("deepseek-v3", "p4de.24xlarge"): {
        "sequential": 19.025703894747863, "tutel": 18.290467172519783, "lancet": 17.551871269811777},
    ("gpt-moe-1.3b-128e", "p4de.24xlarge"): {
        "sequential": 0.7095431999413102, "tutel": 0.6853598436252903, "lancet": 0.5888942573784948},
    ("gpt2-l-moe", "p4de.24xlarge"): {
        "sequential": 2.065250579552606, "tutel": 1.8613573247722115, "lancet": 1.7032892209992374},
    ("gpt2-s-moe", "p4de.24xlarge"): {
        "sequential": 1.452665281344564, "tutel": 1.3259974333114157, "lancet": 1.1988314573207968},
    ("mixtral-8x7b", "p4de.24xlarge"): {
        "sequential": 3.126149858122633, "tutel": 3.131122076555622, "lancet": 3.109304937766776},
    ("qwen3-235b-a22b", "p4de.24xlarge"): {
        "sequential": 16.432710915620792, "tutel": 16.159861227551435, "lancet": 15.817379467189095},
    ("switch-base-128", "p4de.24xlarge"): {
        "sequential": 0.16096406543933725, "tutel": 0.15985834344900024, "lancet": 0.14299764741218216},
    ("tiny-moe-a", "p4de.24xlarge"): {
        "sequential": 0.007596146369586751, "tutel": 0.007505111321708376, "lancet": 0.006914412155363318},
    ("tiny-moe-b", "p4de.24xlarge"): {
        "sequential": 0.029277389796488106, "tutel": 0.02909598306719379, "lancet": 0.028376090289765364},
    ("deepseek-v2-lite", "dgx-h100"): {
        "sequential": 0.32941158254243863, "tutel": 0.27518731550593967, "lancet": 0.25926476139441196},
    ("deepseek-v3", "dgx-h100"): {
        "sequential": 3.8859727573929903, "tutel": 3.2473797834820632, "lancet": 2.9119996500100336},
    ("gpt-moe-1.3b-128e", "dgx-h100"): {
        "sequential": 0.2066694558629943, "tutel": 0.1949452006211448, "lancet": 0.18247209032502118},
    ("gpt2-l-moe", "dgx-h100"): {
        "sequential": 0.6189013902573757, "tutel": 0.5962599510515271, "lancet": 0.5841011034763306},
    ("gpt2-s-moe", "dgx-h100"): {
        "sequential": 0.4370549989273748, "tutel": 0.41992063859581297, "lancet": 0.4120283426849337},
    ("mixtral-8x7b", "dgx-h100"): {
        "sequential": 0.6510691629080968, "tutel": 0.6396059691402723, "lancet": 0.6267549811467323},
    ("qwen3-235b-a22b", "dgx-h100"): {
        "sequential": 2.7560858013700686, "tutel": 2.3777820801999483, "lancet": 2.2020765400478233},
    ("switch-base-128", "dgx-h100"): {
        "sequential": 0.04282516084244267, "tutel": 0.041760012873055, "lancet": 0.0367027923019766},
    ("tiny-moe-a", "dgx-h100"): {
        "sequential": 0.002740177365690185, "tutel": 0.002686774402810892, "lancet": 0.002474409111797932},
    ("tiny-moe-b", "dgx-h100"): {
        "sequential": 0.006568197516691738, "tutel": 0.00641522780318272, "lancet": 0.005823652133273366},
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
