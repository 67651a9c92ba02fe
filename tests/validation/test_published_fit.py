"""The published-point fit: it recovers planted values from points the model itself predicts, skips the
held-out third, and ``moesim validate --fit`` needs ``--published``."""

import pytest

from moesim.cli import main
from moesim.validation.published_fit import Group, Knob, fit, render_text
from moesim.validation.published_points import Point
from moesim.validation.published_predict import predict

SOURCE = {"url": "https://example.org/table", "title": "a table", "quote": "row 3"}


def point(point_id: str, block: str, values: dict, node: str = "dgx-a100", nodes: int = 1) -> Point:
    return Point.model_validate({"id": point_id, "category": block, "gpu": "A100-SXM4-80GB", "node": node,
                                 "nodes": nodes, "gpus": 8 * nodes if block == "collective" else 1,
                                 "measured": "planted", "source": SOURCE, block: values})


def planted(points: list[Point], settings: dict) -> list[Point]:
    """Each point with the value moesim predicts for it under ``settings``."""
    out = []
    for p in points:
        value = predict(p, {p.node: settings})
        field = "busbw_gb_s" if p.collective is not None else "tflops"
        block = getattr(p, p.category).model_dump(by_alias=True) | {field: value}
        out.append(point(p.id, p.category, block, p.node, p.nodes))
    return out


def test_a_fit_recovers_planted_collective_values_from_the_fit_share_only():
    sizes = [2**k for k in range(18, 34, 2)]
    grid = [point(f"ar-{size}", "collective", {"kind": "all_reduce", "bytes": size, "busbw_gb_s": 1.0})
            for size in sizes]
    truth = {"cost.intra_bandwidth_efficiency": 0.7, "cost.collective_base_latency_us": 31.0}
    points = planted(grid, truth)
    outlier = point("ar-outlier-2", "collective", {"kind": "all_reduce", "bytes": 2**26, "busbw_gb_s": 1.0})
    assert outlier.held_out  # a wild value the fit must not see
    group = Group("planted", ("dgx-a100",), "collective",
                  (Knob("cost.intra_bandwidth_efficiency", 0.05, 1.0), Knob("cost.collective_base_latency_us", 0, 500)),
                  lambda p: True)
    result = fit([*points, outlier], (group,))
    values = {v.key: v.value for v in result.values}
    assert values["cost.intra_bandwidth_efficiency"] == pytest.approx(0.7, rel=0.01)
    assert values["cost.collective_base_latency_us"] == pytest.approx(31.0, rel=0.03)
    taught = result.values[0].points
    assert "ar-outlier-2" not in taught and set(taught) == {p.id for p in points if not p.held_out}
    assert result.overrides["dgx-a100"] == values
    assert "planted" in render_text(result)


def test_a_group_without_points_is_skipped_and_a_knob_goes_only_to_its_presets():
    gemm = point("g-1", "gemm", {"m": 4096, "n": 4096, "k": 4096, "dtype": "bf16", "tflops": 1.0})
    points = planted([gemm], {"cost.matmul_efficiency": 0.5})
    assert not points[0].held_out
    groups = (Group("gemm", ("dgx-a100", "p4de.24xlarge"), "gemm",
                    (Knob("cost.matmul_efficiency", 0.05, 1.0, nodes=("p4de.24xlarge",)),), lambda p: True),
              Group("none", ("dgx-h100",), "attention", (Knob("cost.attention_efficiency", 0.05, 1.0),),
                    lambda p: True))
    result = fit(points, groups)
    assert result.skipped == ["none"]
    assert set(result.overrides) == {"p4de.24xlarge"}


def test_fit_needs_published(capsys):
    assert main(["validate", "--fit"]) == 2
    assert "--fit fits the presets to the published points" in capsys.readouterr().err
