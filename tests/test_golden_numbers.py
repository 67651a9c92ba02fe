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
        "sequential": 2.0285287908648164, "tutel": 1.9288986844428173, "lancet": 1.8831777755959296},
    ("deepseek-v3", "p4de.24xlarge"): {
        "sequential": 19.254644850084375, "tutel": 18.37637724684216, "lancet": 17.644927502226274},
    ("gpt-moe-1.3b-128e", "p4de.24xlarge"): {
        "sequential": 0.7269506701592224, "tutel": 0.69747718434361, "lancet": 0.5958523541869141},
    ("gpt2-l-moe", "p4de.24xlarge"): {
        "sequential": 2.1762841129744235, "tutel": 1.9607318503444287, "lancet": 1.8185868528963878},
    ("gpt2-s-moe", "p4de.24xlarge"): {
        "sequential": 1.5302211387376166, "tutel": 1.3969844144282284, "lancet": 1.2764290859114902},
    ("mixtral-8x7b", "p4de.24xlarge"): {
        "sequential": 3.1541966489650064, "tutel": 3.1610864203186573, "lancet": 3.1378932339569303},
    ("qwen3-235b-a22b", "p4de.24xlarge"): {
        "sequential": 16.574491051935148, "tutel": 16.279866802876434, "lancet": 15.88959810852508},
    ("switch-base-128", "p4de.24xlarge"): {
        "sequential": 0.16289110274405086, "tutel": 0.16160195630660756, "lancet": 0.14348956643413982},
    ("tiny-moe-a", "p4de.24xlarge"): {
        "sequential": 0.007743229000070573, "tutel": 0.007645973728629371, "lancet": 0.007019406013652217},
    ("tiny-moe-b", "p4de.24xlarge"): {
        "sequential": 0.029448893032309752, "tutel": 0.029256294122342996, "lancet": 0.028504223825481248},
    ("deepseek-v2-lite", "dgx-h100"): {
        "sequential": 0.3208044306305767, "tutel": 0.2642981316755101, "lancet": 0.24844649232689797},
    ("deepseek-v3", "dgx-h100"): {
        "sequential": 3.835824766570137, "tutel": 3.1973255109200047, "lancet": 2.8604514500778015},
    ("gpt-moe-1.3b-128e", "dgx-h100"): {
        "sequential": 0.20481277677094417, "tutel": 0.19365739530273482, "lancet": 0.18216122093282064},
    ("gpt2-l-moe", "dgx-h100"): {
        "sequential": 0.6164824892765571, "tutel": 0.5952325619650674, "lancet": 0.5837816425846553},
    ("gpt2-s-moe", "dgx-h100"): {
        "sequential": 0.43548102014972706, "tutel": 0.41924823026306046, "lancet": 0.41185073511101883},
    ("mixtral-8x7b", "dgx-h100"): {
        "sequential": 0.6492545266733213, "tutel": 0.6383657023243321, "lancet": 0.6261512932332652},
    ("qwen3-235b-a22b", "dgx-h100"): {
        "sequential": 2.7005895368490536, "tutel": 2.306795552337716, "lancet": 2.1282158713703256},
    ("switch-base-128", "dgx-h100"): {
        "sequential": 0.04209652927878023, "tutel": 0.04108009768644285, "lancet": 0.03623276834506561},
    ("tiny-moe-a", "dgx-h100"): {
        "sequential": 0.002710973605296648, "tutel": 0.002657570642417355, "lancet": 0.002457084055308195},
    ("tiny-moe-b", "dgx-h100"): {
        "sequential": 0.0063866242699600236, "tutel": 0.006233654556451006, "lancet": 0.005642078886541651},
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
