"""Preset efficiencies and latencies fitted to the published points (``validation/published/``); torch-free.

Each ``Group`` names the node presets one set of values goes to, the settings it fits (``Knob``: an override
key such as ``cost.matmul_efficiency`` with its bounds) and which points it learns from, chosen by hardware
and category alone: the points of those presets' GPU or fabric, never by how well they are predicted. A group
sees only the points outside the held-out third (``Point.held_out``) that moesim can predict; it minimises
the sum of squared log errors (so 2x too fast weighs as 2x too slow) by coordinate descent, each knob by a
golden-section search within its bounds, starting from the middle of the bounds (not from the presets, so
the fit gives the same values before and after the presets take them). Groups run in order, each on top of
the values fitted before it (a node's intra-node fabric before its network). ``moesim validate --published
--fit`` runs the fit, shows each value beside the preset's and predicts every point with the fitted values;
the presets in ``hardware_specs/nodes/`` carry them, marked ``fitted:`` with their group (docs/sources.md §7
lists each group's points). A fit of the bundled points takes under a minute.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moesim.errors import MoesimError
from moesim.validation import published_points
from moesim.validation.published_points import Category, Point
from moesim.validation.published_predict import predict, predict_many

Overrides = dict[str, dict[str, Any]]   # node preset -> override key -> value

A100_NODES = ("dgx-a100", "p4d.24xlarge", "p4de.24xlarge")
HOPPER_NODES = ("dgx-h100", "p5.48xlarge", "hgx-h200")
EFA_A100_NODES = ("p4d.24xlarge", "p4de.24xlarge")


@dataclass(frozen=True, slots=True)
class Knob:
    key: str                        # an override key (``cost.*`` or ``hardware.node.*``)
    low: float
    high: float
    nodes: tuple[str, ...] = ()     # the presets this value goes to; () = all of its group's
    digits: int = 3                 # significant digits the value is rounded to
    log: bool = False               # searched on a log scale (a size spanning decades)


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    nodes: tuple[str, ...]              # the presets the values go to
    category: Category
    knobs: tuple[Knob, ...]
    takes: Callable[[Point], bool]      # which of the category's points, by hardware alone


def _gpu_in(*prefixes: str) -> Callable[[Point], bool]:
    return lambda p: p.gpu.startswith(prefixes)


def _one_node_of(nodes: tuple[str, ...]) -> Callable[[Point], bool]:
    return lambda p: p.node in nodes and p.nodes == 1


def _several_nodes_of(nodes: tuple[str, ...]) -> Callable[[Point], bool]:
    return lambda p: p.node in nodes and p.nodes > 1


_EFFICIENCY = (0.05, 1.0)
NVSWITCH_NODES = A100_NODES + HOPPER_NODES + ("hgx-b200",)
GROUPS: tuple[Group, ...] = (
    Group("V100 matmul", ("p3dn.24xlarge",), "gemm", (Knob("cost.matmul_efficiency", *_EFFICIENCY),),
          _gpu_in("V100")),
    Group("A100 matmul", A100_NODES, "gemm", (Knob("cost.matmul_efficiency", *_EFFICIENCY),), _gpu_in("A100")),
    Group("Hopper matmul", HOPPER_NODES, "gemm", (Knob("cost.matmul_efficiency", *_EFFICIENCY),),
          _gpu_in("H100", "H200")),
    Group("A100 attention", A100_NODES, "attention", (Knob("cost.attention_efficiency", *_EFFICIENCY),),
          _gpu_in("A100")),
    Group("Hopper attention", HOPPER_NODES, "attention", (Knob("cost.attention_efficiency", *_EFFICIENCY),),
          _gpu_in("H100", "H200")),
    # NCCL's base latency and its small-message term are its software's (one table for every GPU:
    # src/graph/tuning.cc), so one value each for every NVIDIA NVSwitch node, B200's included (no point of
    # its own); each NVLink generation's efficiency, and NVLS on Hopper, apart.
    Group("NVSwitch collectives", NVSWITCH_NODES, "collective",
          (Knob("cost.intra_bandwidth_efficiency", *_EFFICIENCY, nodes=A100_NODES),
           Knob("cost.intra_bandwidth_efficiency", *_EFFICIENCY, nodes=HOPPER_NODES),
           Knob("cost.nvls_bandwidth_factor", *_EFFICIENCY, nodes=HOPPER_NODES),
           Knob("cost.collective_base_latency_us", 0, 500, digits=2),
           Knob("cost.collective_half_rate_kib", 1, 2**20, digits=2, log=True),
           Knob("cost.collective_rate_exponent", 0.2, 2, digits=2)),
          _one_node_of(NVSWITCH_NODES)),
    # Each network on top, from its multi-node points: its efficiency, the small-message term of collectives
    # across nodes and, where all-to-all points exist, the all-to-all's rate against the rings'.
    Group("p5 EFA", ("p5.48xlarge",), "collective",
          (Knob("cost.inter_bandwidth_efficiency", *_EFFICIENCY),
           Knob("cost.network_half_rate_kib", 1, 2**20, digits=2, log=True),
           Knob("cost.all_to_all_bandwidth_ratio", 0.3, 2)),
          _several_nodes_of(("p5.48xlarge",))),
    Group("A100 EFA", EFA_A100_NODES, "collective",
          (Knob("cost.inter_bandwidth_efficiency", *_EFFICIENCY),
           Knob("cost.network_half_rate_kib", 1, 2**20, digits=2, log=True)),
          _several_nodes_of(EFA_A100_NODES)),
    Group("DGX A100 InfiniBand", ("dgx-a100",), "collective",
          (Knob("cost.inter_bandwidth_efficiency", *_EFFICIENCY),
           Knob("cost.network_half_rate_kib", 1, 2**20, digits=2, log=True)),
          _several_nodes_of(("dgx-a100",))),
)


def _nodes(group: Group, knob: Knob) -> tuple[str, ...]:
    return knob.nodes or group.nodes


@dataclass(frozen=True, slots=True)
class Fitted:
    """One knob's value for ``group``'s presets, the value the presets had and the points it came from."""

    group: str
    nodes: tuple[str, ...]
    key: str
    value: float
    before: float | None        # None: the preset leaves it unset (its fallback applies)
    points: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"group": self.group, "nodes": list(self.nodes), "key": self.key, "value": self.value,
                "before": self.before, "points": list(self.points)}


@dataclass(slots=True)
class Fit:
    values: list[Fitted] = field(default_factory=list)
    overrides: Overrides = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)   # groups with no point to learn from


def fit(points: Sequence[Point], groups: Sequence[Group] = GROUPS) -> Fit:
    """Every group fitted in order on ``points`` outside the held-out third (see the module docstring)."""
    result = Fit()
    for group in groups:
        chosen = [p for p in points if p.category == group.category and not p.held_out and group.takes(p)
                  and _predictable(p, result.overrides)]
        if not chosen:
            result.skipped.append(group.name)
            continue
        start = [_current(_nodes(group, knob)[0], knob.key) for knob in group.knobs]
        values = _descend(group, chosen, result.overrides, [_middle(knob) for knob in group.knobs])
        for knob, value, before in zip(group.knobs, values, start, strict=True):
            for node in _nodes(group, knob):
                result.overrides.setdefault(node, {})[knob.key] = value
            taught = tuple(p.id for p in chosen if p.node in _nodes(group, knob))
            result.values.append(Fitted(group.name, _nodes(group, knob), knob.key, value, before, taught))
    return result


def _predictable(point: Point, overrides: Overrides) -> bool:
    try:
        predict(point, overrides)
    except MoesimError:  # what moesim cannot express is left out of the fit
        return False
    return True


def _middle(knob: Knob) -> float:
    """Where a knob's search starts: the middle of its bounds, whatever the preset holds, so that the fit
    gives the same values before and after the presets take them."""
    return math.sqrt(knob.low * knob.high) if knob.log else (knob.low + knob.high) / 2


def _with(group: Group, overrides: Overrides, values: Sequence[float]) -> Overrides:
    trial = {node: dict(settings) for node, settings in overrides.items()}
    for knob, value in zip(group.knobs, values, strict=True):
        for node in _nodes(group, knob):
            trial.setdefault(node, {})[knob.key] = value
    return trial


def _loss(group: Group, points: Sequence[Point], overrides: Overrides, values: Sequence[float]) -> float:
    trial = _with(group, overrides, values)
    return math.fsum(math.log(value / p.measured_value) ** 2
                     for p, value in zip(points, predict_many(points, trial), strict=True))


def _descend(group: Group, points: Sequence[Point], overrides: Overrides, values: list[float]) -> list[float]:
    """Coordinate descent: each knob by golden section in turn, until a sweep moves none (at most 20 sweeps)."""
    current = _loss(group, points, overrides, values)
    for _ in range(20):
        moved = False
        for i, knob in enumerate(group.knobs):
            def loss_at(x: float, i: int = i) -> float:
                return _loss(group, points, overrides, [*values[:i], x, *values[i + 1:]])

            if knob.log:
                x = math.exp(_golden(lambda y: loss_at(math.exp(y)), math.log(knob.low), math.log(knob.high)))
            else:
                x = _golden(loss_at, knob.low, knob.high)
            best = _round(x, knob.digits)
            if best != values[i] and (loss := loss_at(best)) < current:
                values[i], current, moved = best, loss, True
        if not moved:
            break
    return values


def _golden(f: Callable[[float], float], low: float, high: float, iterations: int = 24) -> float:
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def _round(value: float, digits: int) -> float:
    if value == 0:
        return 0.0
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def _current(node: str, key: str) -> float | None:
    """The preset's value of an override key (``cost.x`` or ``hardware.node.a.b``); None where unset."""
    from moesim.hardware.presets import load_cluster

    cluster = load_cluster(node, 1)
    scope, _, rest = key.partition(".")
    target: Any = cluster.cost if scope == "cost" else cluster
    for part in rest.split("."):
        target = getattr(target, part)
    return None if target is None else float(target)


def render_text(result: Fit) -> str:
    """The fitted values, one row a setting and group: the preset's value beside the fitted one."""
    from moesim.analysis.tables import metrics_table

    rows = [{"group": v.group, "key": v.key, "before": "-" if v.before is None else f"{v.before:g}",
             "value": f"{v.value:g}",
             "points": str(len(v.points))} for v in result.values]
    lines = [metrics_table(rows, [("group", "group"), ("key", "setting"), ("before", "preset"),
                                  ("value", "fitted"), ("points", "points")]),
             "(each value's points: --json, or docs/sources.md §7)"]
    if result.skipped:
        lines.append(f"no point to fit: {', '.join(result.skipped)}")
    return "\n".join(lines)


def to_dict(result: Fit) -> dict[str, object]:
    return {"fitted": [v.to_dict() for v in result.values], "skipped": result.skipped}


def report(*, refit: bool, as_json: bool) -> str:
    """``moesim validate --published [--fit] [--json]``: every bundled point predicted with the presets as they
    are, or with the values fitted first (the fit's table, then the points')."""
    points = published_points.load_points()
    result = fit(points) if refit else None
    checked = published_points.check(points, result.overrides if result else None)
    if as_json:
        document = published_points.to_dict(checked)
        if result is not None:
            document["fit"] = to_dict(result)
        return json.dumps(document, indent=2)
    text = published_points.render_text(checked)
    return f"{render_text(result)}\n\n{text}" if result is not None else text
