"""Published measurements (``validation/published/*.yaml``), checked against moesim's predictions; torch-free.

A file holds ``format: moesim-published/1`` and ``points``. Every point names its source (URL, title, the
table row or sentence its number comes from), the hardware as moesim names it (a node preset, the GPU),
the software where the source states it, what was measured, and exactly one block for its category:

- ``collective``: nccl-tests' ``kind``, ``bytes`` (its size column), ``busbw_gb_s`` and the ``algorithm`` the
  run forced (``NCCL_ALGO``; absent: NCCL chose, and the prediction takes moesim's choice); predicted by
  ``moesim.analysis.primitives.collective_rows`` over ``gpus / nodes`` GPUs of each of ``nodes`` nodes.
- ``gemm``: ``m, n, k, dtype, tflops``; predicted by ``gemm_row`` on the point's GPU.
- ``attention``: ``batch, heads, seq, head_dim, causal, dtype, pass`` (forward or forward_backward),
  ``tflops`` as FlashAttention's benchmarks count them (4 b h s^2 d forward, half that when causal, 3.5x the
  forward for forward + backward). Predicted from moesim's attention op: a causal call costs
  ``cost.causal_attention_work`` of the full square, the backward 2.5x the forward's FLOPs
  (``moesim.workload.builder``).
- ``end_to_end``: a published training throughput (``metric``: tokens_per_s, samples_per_s, iteration_s or
  tflops_per_gpu, ``value``) of a configuration moesim can express, given as ``preset`` + ``overrides`` +
  ``schedule`` on ``nodes`` x ``node``; predicted by simulating it.

``held_out`` marks a third of the points (by a hash of their id, fixed before any fit): the points a fit must
not see, whose errors are reported apart. The predictions themselves are ``published_predict``'s.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from moesim.dtypes import DType
from moesim.errors import MoesimError

from .published_predict import Overrides, predict

FORMAT = "moesim-published/1"
DATA_DIR = Path(__file__).parent / "published"
Category = Literal["collective", "gemm", "attention", "end_to_end"]
CATEGORIES: tuple[Category, ...] = ("collective", "gemm", "attention", "end_to_end")

_STRICT = ConfigDict(extra="forbid", frozen=True)


class Source(BaseModel):
    model_config = _STRICT

    url: str = Field(pattern=r"^https?://\S+$")
    title: str = Field(min_length=1)
    quote: str = Field(min_length=1)
    note: str = ""


class CollectiveBlock(BaseModel):
    model_config = _STRICT

    kind: Literal["all_reduce", "all_to_all", "all_gather", "reduce_scatter"]
    bytes: PositiveInt
    busbw_gb_s: PositiveFloat
    algorithm: Literal["ring", "tree", "nvls"] | None = None   # what the run forced (NCCL_ALGO); None: NCCL's choice


class GemmBlock(BaseModel):
    model_config = _STRICT

    m: PositiveInt
    n: PositiveInt
    k: PositiveInt
    dtype: DType
    tflops: PositiveFloat


class AttentionBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    batch: PositiveInt
    heads: PositiveInt
    seq: PositiveInt
    head_dim: PositiveInt
    causal: bool
    dtype: DType
    passes: Literal["forward", "forward_backward"] = Field(alias="pass")
    tflops: PositiveFloat


class EndToEndBlock(BaseModel):
    model_config = _STRICT

    model: str = Field(min_length=1)            # the source's description
    config: dict[str, Any] = Field(default_factory=dict)
    preset: str = Field(min_length=1)           # moesim model preset (or YAML path) it is expressed as
    overrides: dict[str, Any] = Field(default_factory=dict)
    schedule: str = "sequential"
    metric: Literal["tokens_per_s", "samples_per_s", "iteration_s", "tflops_per_gpu"]
    value: PositiveFloat


class Point(BaseModel):
    model_config = _STRICT

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    category: Category
    gpu: str = Field(min_length=1)
    node: str = Field(min_length=1)             # a moesim node preset, or "other: <what the source ran on>"
    nodes: PositiveInt = 1
    gpus: PositiveInt
    software: dict[str, str] = Field(default_factory=dict)
    measured: str = Field(min_length=1)
    source: Source
    collective: CollectiveBlock | None = None
    gemm: GemmBlock | None = None
    attention: AttentionBlock | None = None
    end_to_end: EndToEndBlock | None = None

    @model_validator(mode="after")
    def _one_block(self) -> Point:
        present = [name for name in CATEGORIES if getattr(self, name) is not None]
        if present != [self.category]:
            raise ValueError(f"a {self.category} point carries exactly its own block ({self.category}:), "
                             f"found {', '.join(present) or 'none'}")
        if self.gpus % self.nodes:
            raise ValueError(f"gpus {self.gpus} is not a multiple of nodes {self.nodes}")
        return self

    @property
    def held_out(self) -> bool:
        return int(hashlib.sha256(self.id.encode()).hexdigest(), 16) % 3 == 0

    @property
    def measured_value(self) -> float:
        block = self.collective or self.gemm or self.attention
        if block is not None:
            return float(block.busbw_gb_s if isinstance(block, CollectiveBlock) else block.tflops)
        assert self.end_to_end is not None
        return self.end_to_end.value

    @property
    def unit(self) -> str:
        if self.collective is not None:
            return "busbw GB/s"
        if self.end_to_end is not None:
            return self.end_to_end.metric
        return "TFLOP/s"


class PublishedFile(BaseModel):
    model_config = _STRICT

    format: Literal["moesim-published/1"]
    points: tuple[Point, ...]


def load_points(paths: Iterable[Path] | None = None) -> list[Point]:
    """Every point of ``paths`` (default: the bundled files), ids unique. MoesimError names the file and field."""
    chosen = sorted(DATA_DIR.glob("*.yaml")) if paths is None else list(paths)
    points: list[Point] = []
    for path in chosen:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            points += PublishedFile.model_validate(document).points
        except OSError as err:
            raise MoesimError(f"{path}: cannot read it ({err.strerror})") from None
        except yaml.YAMLError as err:
            raise MoesimError(f"{path}: not YAML ({str(err).splitlines()[0]})") from None
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise MoesimError(f"{path}: {where}: {first['msg']}") from None
    seen: set[str] = set()
    for point in points:
        if point.id in seen:
            raise MoesimError(f"published points: id {point.id!r} appears twice")
        seen.add(point.id)
    return points


@dataclass(frozen=True, slots=True)
class Checked:
    """One point, its prediction (None: moesim cannot express it, ``why`` says so) and the error."""

    point: Point
    predicted: float | None
    why: str = ""

    @property
    def error(self) -> float | None:
        return None if self.predicted is None else self.predicted / self.point.measured_value - 1.0

    def to_dict(self) -> dict[str, object]:
        p = self.point
        return {"id": p.id, "category": p.category, "node": p.node, "nodes": p.nodes, "gpus": p.gpus,
                "gpu": p.gpu, "unit": p.unit, "measured": p.measured_value, "predicted": self.predicted,
                "error": self.error, "held_out": p.held_out, "why": self.why or None, "url": p.source.url}


def check(points: Sequence[Point], overrides: Overrides | None = None) -> list[Checked]:
    """Each point predicted (see the module docstring), with ``overrides[node]`` set on the points of ``node``."""
    return [_checked(point, overrides or {}) for point in points]


def _checked(point: Point, overrides: Overrides) -> Checked:
    try:
        return Checked(point, predict(point, overrides))
    except MoesimError as err:
        return Checked(point, None, str(err))


# Issue #16's targets: within 15 % for bus bandwidth at 1 MiB - 1 GiB and for GEMMs whose dimensions are all
# >= 1,024, within 20 % end to end; attention has none.
TARGETS: dict[str, float] = {"collective": 0.15, "gemm": 0.15, "end_to_end": 0.20}


def in_target_range(point: Point) -> bool:
    """Whether the point is at the sizes a target speaks of (``TARGETS``)."""
    if point.collective is not None:
        return 2**20 <= point.collective.bytes <= 2**30
    if point.gemm is not None:
        return min(point.gemm.m, point.gemm.n, point.gemm.k) >= 1024
    return point.end_to_end is not None


def summary(checked: Sequence[Checked]) -> dict[str, dict[str, float | int | None]]:
    """Per category: points, predicted points, MAPE over all, over the fit share and over the held-out share;
    where the category has a target, the points in its range, how many of those meet it (fit share / held out)
    and their MAPE."""
    out: dict[str, dict[str, float | int | None]] = {}
    for category in CATEGORIES:
        rows = [c for c in checked if c.point.category == category]
        errors = [(c.point.held_out, abs(c.error)) for c in rows if c.error is not None]
        entry: dict[str, float | int | None] = {
            "points": len(rows), "predicted": len(errors), "mape": _mean(e for _, e in errors),
            "mape_fit": _mean(e for h, e in errors if not h), "mape_held_out": _mean(e for h, e in errors if h)}
        target = TARGETS.get(category)
        if target is not None:
            ranged = [(c.point.held_out, abs(c.error)) for c in rows
                      if c.error is not None and in_target_range(c.point)]
            entry |= {"target": target, "in_range": len(ranged), "mape_in_range": _mean(e for _, e in ranged),
                      "within_target_fit": sum(1 for h, e in ranged if not h and e <= target),
                      "in_range_fit": sum(1 for h, _ in ranged if not h),
                      "within_target_held_out": sum(1 for h, e in ranged if h and e <= target),
                      "in_range_held_out": sum(1 for h, _ in ranged if h)}
        out[category] = entry
    return out


def _mean(values: Iterable[float]) -> float | None:
    chosen = list(values)
    return math.fsum(chosen) / len(chosen) if chosen else None


def render_text(checked: Sequence[Checked]) -> str:
    from moesim.analysis.tables import metrics_table

    rows = [{"id": c.point.id, "hardware": f"{c.point.nodes} x {c.point.node}", "unit": c.point.unit,
             "measured": f"{c.point.measured_value:.4g}",
             "predicted": "-" if c.predicted is None else f"{c.predicted:.4g}",
             "error": "-" if c.error is None else f"{c.error:+.1%}", "held": "held out" if c.point.held_out else "",
             "why": c.why} for c in checked]
    columns = [("id", "point"), ("hardware", "hardware"), ("unit", "unit"), ("measured", "published"),
               ("predicted", "predicted"), ("error", "error"), ("held", "split"), ("why", "not predicted")]
    lines = [metrics_table(rows, columns), "", "MAPE per category (the other points / the held-out third):"]
    results = summary(checked)
    for category, s in results.items():
        lines.append(f"  {category:<11} {s['predicted']} of {s['points']} points  {_pct(s['mape'])}  "
                     f"({_pct(s['mape_fit'])} / {_pct(s['mape_held_out'])})")
    lines.append("Within the target at the sizes it speaks of (the other points / the held-out third):")
    for category, s in results.items():
        if "target" in s:
            lines.append(f"  {category:<11} within {_pct(s['target'])}: {s['within_target_fit']} of "
                         f"{s['in_range_fit']} / {s['within_target_held_out']} of {s['in_range_held_out']}  "
                         f"(MAPE {_pct(s['mape_in_range'])})")
    return "\n".join(lines)


def _pct(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def to_dict(checked: Sequence[Checked]) -> dict[str, object]:
    return {"points": [c.to_dict() for c in checked], "summary": summary(checked)}


def by_category(points: Sequence[Point]) -> Mapping[str, int]:
    return {category: sum(p.category == category for p in points) for category in CATEGORIES}
