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
        "sequential": 1.3670291649547124, "tutel": 1.1615531252165485, "lancet": 1.1066097041405134},
    ("deepseek-v3", "p4de.24xlarge"): {
        "sequential": 15.851826837010956, "tutel": 13.486277581535814, "lancet": 12.788536343842472},
    ("gpt-moe-1.3b-128e", "p4de.24xlarge"): {
        "sequential": 0.6011451462392101, "tutel": 0.5196489547004611, "lancet": 0.4792477207197413},
    ("gpt2-l-moe", "p4de.24xlarge"): {
        "sequential": 2.177922727443971, "tutel": 2.021965796534849, "lancet": 1.9957647528985063},
    ("gpt2-s-moe", "p4de.24xlarge"): {
        "sequential": 1.5427531863111688, "tutel": 1.422963116731611, "lancet": 1.405222924004333},
    ("mixtral-8x7b", "p4de.24xlarge"): {
        "sequential": 2.6707442262773644, "tutel": 2.680808138111762, "lancet": 2.6585404689463363},
    ("qwen3-235b-a22b", "p4de.24xlarge"): {
        "sequential": 12.360672110177706, "tutel": 10.829463949695228, "lancet": 10.30425891522329},
    ("switch-base-128", "p4de.24xlarge"): {
        "sequential": 0.10067511511276975, "tutel": 0.09195893090285315, "lancet": 0.07634801468489269},
    ("tiny-moe-a", "p4de.24xlarge"): {
        "sequential": 0.004753449689827442, "tutel": 0.004606869052487894, "lancet": 0.004238302307454565},
    ("tiny-moe-b", "p4de.24xlarge"): {
        "sequential": 0.01090470794010741, "tutel": 0.010322487282090355, "lancet": 0.009578336740803328},
    ("deepseek-v2-lite", "dgx-h100"): {
        "sequential": 0.279971353712898, "tutel": 0.21261039943754162, "lancet": 0.199957676049341},
    ("deepseek-v3", "dgx-h100"): {
        "sequential": 3.593137443097861, "tutel": 2.843956301062579, "lancet": 2.6461114608745913},
    ("gpt-moe-1.3b-128e", "dgx-h100"): {
        "sequential": 0.1970190183091612, "tutel": 0.18876187341694048, "lancet": 0.1827696611363361},
    ("gpt2-l-moe", "dgx-h100"): {
        "sequential": 0.6248412552405257, "tutel": 0.6105321317916043, "lancet": 0.6027125870652356},
    ("gpt2-s-moe", "dgx-h100"): {
        "sequential": 0.4416370056094054, "tutel": 0.42988325393180576, "lancet": 0.42487883571249746},
    ("mixtral-8x7b", "dgx-h100"): {
        "sequential": 0.6550768996238268, "tutel": 0.6469437493513432, "lancet": 0.6387147095476424},
    ("qwen3-235b-a22b", "dgx-h100"): {
        "sequential": 2.422788862989132, "tutel": 1.9396709444406124, "lancet": 1.7307675785742076},
    ("switch-base-128", "dgx-h100"): {
        "sequential": 0.03789106284861124, "tutel": 0.037111547583258984, "lancet": 0.03475170997283651},
    ("tiny-moe-a", "dgx-h100"): {
        "sequential": 0.0024441769488135374, "tutel": 0.0023881103454453266, "lancet": 0.002312140360247465},
    ("tiny-moe-b", "dgx-h100"): {
        "sequential": 0.0049166971382947604, "tutel": 0.0047566305349265505, "lancet": 0.004242172733145871},
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
