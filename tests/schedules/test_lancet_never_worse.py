"""Lancet is judged by the engine against where it started and never returns something slower.

Over every model preset on 4 nodes of p4de.24xlarge and of dgx-h100: lancet's iteration is no longer
than sequential's, Tutel's (its search holds Tutel's chunked plans), nor lancet's with either pass
switched off; its knobs name every plan the engine judged, with the kept one the fastest of them; and
the dW pass alone never loses to program order there but where its clock is known to miss (the one claim
here the construction does not guarantee: the pass's clock is not the engine).
"""

from dataclasses import replace

import pytest

from moesim.api import run_schedule, scenario
from moesim.workload.presets import list_model_presets

CLUSTERS = [("p4de.24xlarge", 4), ("dgx-h100", 4)]
# The dW pass's clock plays all-to-alls and gradient buckets on streams of their own, not sharing links as
# the engine does; with the small-message term making both heavier, two presets' dW plans lose 0.17 % and
# 0.02 % to program order (Lancet keeps another plan; docs/calibration-notes.md).
KNOWN_DW_CLOCK_MISSES = {("qwen3-235b-a22b", "p4de.24xlarge"), ("mixtral-8x7b", "dgx-h100")}


def _seconds(scn, schedule, **settings):
    return run_schedule(replace(scn, schedule_settings=settings), schedule)


@pytest.mark.parametrize(("hardware", "nodes"), CLUSTERS)
@pytest.mark.parametrize("model", list_model_presets())
def test_lancet_is_never_slower_than_sequential_or_its_ablations(model, hardware, nodes):
    scn = scenario(model, hardware, nodes)
    lancet = _seconds(scn, "lancet")
    tutel = _seconds(scn, "tutel")
    others = {name: _seconds(scn, schedule, **settings).metrics.iteration_time_s
              for name, schedule, settings in (("sequential", "sequential", {}),
                                               ("no dW scheduling", "lancet", {"dw_scheduling": False}),
                                               ("no partitioning", "lancet", {"partition": False}))}
    others["tutel"] = tutel.metrics.iteration_time_s
    assert lancet.metrics.iteration_time_s <= min(others.values()), others
    judged = {entry["candidate"]: entry["iteration_s"] for entry in lancet.knobs["judged"]}
    assert judged[lancet.knobs["kept"]] == lancet.metrics.iteration_time_s == min(judged.values())
    assert "program order" in judged
    # Lancet's search holds Tutel's: its 'chunks d' plans are Tutel's degrees, built by Lancet's own builder
    for degree, seconds in tutel.decisions.degree_search:
        assert judged.get(f"chunks {degree}", judged["program order"]) == pytest.approx(seconds, rel=1e-12)
    # the dW pass alone (its moves weighed against what they delay) does not lose to program order, except
    # where its clock is known to miss (strict: this fails once the clock learns what it misses)
    dw_holds = judged.get("dW", judged["program order"]) <= judged["program order"]
    assert dw_holds != ((model, hardware) in KNOWN_DW_CLOCK_MISSES), judged
