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
        "sequential": 0.01114099778811633, "tutel": 0.010558777130099273, "lancet": 0.009803147673005065},
    ("deepseek-v2-lite", "dgx-h100"): {
        "sequential": 0.29703783193833583, "tutel": 0.2291417642219309, "lancet": 0.21515108558793228},
    ("deepseek-v3", "dgx-h100"): {
        "sequential": 3.8873699238051227, "tutel": 3.140064997068333, "lancet": 2.937405886835083},
    ("gpt-moe-1.3b-128e", "dgx-h100"): {
        "sequential": 0.2091407414093011, "tutel": 0.2006455835552512, "lancet": 0.1941105521398879},
    ("gpt2-l-moe", "dgx-h100"): {
        "sequential": 0.6572694194336435, "tutel": 0.6429602959847215, "lancet": 0.6351416778896714},
    ("gpt2-s-moe", "dgx-h100"): {
        "sequential": 0.46593143653405694, "tutel": 0.4541776848564575, "lancet": 0.44917326663714907},
    ("mixtral-8x7b", "dgx-h100"): {
        "sequential": 0.6863442343673787, "tutel": 0.6782110840948962, "lancet": 0.6699820442911946},
    ("qwen3-235b-a22b", "dgx-h100"): {
        "sequential": 2.6056369750869544, "tutel": 2.1220062915289457, "lancet": 1.8786936588798144},
    ("switch-base-128", "dgx-h100"): {
        "sequential": 0.03819104940468795, "tutel": 0.03742014990905623, "lancet": 0.035071770586735024},
    ("tiny-moe-a", "dgx-h100"): {
        "sequential": 0.002523489872980691, "tutel": 0.00246742326961248, "lancet": 0.002391453284414619},
    ("tiny-moe-b", "dgx-h100"): {
        "sequential": 0.005030734340464345, "tutel": 0.0048706677370961345, "lancet": 0.004356209935315454},
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
