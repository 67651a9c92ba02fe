"""moesim's value for each published point (``published_points``): the collective, kernel or whole iteration it
describes, predicted on its node preset with optional overrides per preset (what a fit tries); torch-free.

``collective``: ``moesim.analysis.primitives.collective_rows`` over ``gpus / nodes`` GPUs of each of ``nodes``
nodes, with the algorithm the run forced. ``gemm``: ``gemm_row`` on the point's GPU. ``attention``: moesim's
attention op, forward and, for ``forward_backward``, its backward (2.5x the FLOPs), in FlashAttention's FLOP
count. ``end_to_end``: the configuration simulated under its schedule.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from moesim.errors import MoesimError

if TYPE_CHECKING:
    from moesim.hardware.specs import ClusterSpec

    from .published_points import Point

Overrides = Mapping[str, Mapping[str, Any]]   # node preset -> override key -> value


def predict_many(points: Sequence[Point], overrides: Overrides | None = None) -> list[float]:
    """``predict`` of each point; collectives of one configuration (node, count, kind, algorithm) in one call."""
    from moesim.analysis.primitives import collective_rows
    from moesim.workload.ops import OpKind

    out: dict[int, float] = {}
    batches: dict[tuple[object, ...], list[int]] = {}
    for i, point in enumerate(points):
        block = point.collective
        if block is None or point.node.startswith("other"):
            out[i] = predict(point, overrides)
        else:
            key = (point.node, point.nodes, point.gpus, block.kind, block.algorithm, point.gpu)
            batches.setdefault(key, []).append(i)
    for indices in batches.values():
        first = points[indices[0]]
        block = first.collective
        assert block is not None
        cluster = _cluster(first.node, first.nodes, _settings(first, overrides))
        sizes = [points[i].collective.bytes for i in indices]  # type: ignore[union-attr]
        rows = collective_rows(cluster, OpKind(block.kind), sizes, block.algorithm,
                               gpus_per_node=first.gpus // first.nodes)
        out.update((i, row.busbw_gb_s) for i, row in zip(indices, rows, strict=True))
    return [out[i] for i in range(len(points))]


def predict(point: Point, overrides: Overrides | None = None) -> float:
    """moesim's value for ``point`` in its unit, its node preset changed by ``overrides[point.node]``
    (``cost.*`` and ``hardware.*`` keys); MoesimError where moesim cannot express it."""
    from moesim.analysis.primitives import gemm_row

    if point.node.startswith("other"):
        raise MoesimError("no moesim preset for this hardware")
    if point.collective is not None:
        return predict_many([point], overrides)[0]
    if point.gemm is not None:
        g = point.gemm
        return gemm_row(_cluster(point.node, 1, _settings(point, overrides)), g.dtype, g.m, g.n, g.k).tflops
    if point.attention is not None:
        return _attention_tflops(point, _settings(point, overrides))
    return _end_to_end(point, _settings(point, overrides))


def _settings(point: Point, overrides: Overrides | None) -> dict[str, Any]:
    """The point's GPU in its node preset where the preset's differs (a GEMM on a PCIe card's sibling), and
    the overrides given for its node."""
    gpu = {} if _preset_gpu(point.node) == point.gpu else {"hardware.node.gpu": point.gpu}
    return {**gpu, **(overrides or {}).get(point.node, {})}


def _cluster(node: str, nodes: int, settings: Mapping[str, Any]) -> ClusterSpec:
    """``cluster_of(node, nodes, settings)`` with each preset read once per process (a fit tries many values)."""
    from moesim.overrides import apply_overrides

    gpu = settings.get("hardware.node.gpu")
    cost = {key.removeprefix("cost."): value for key, value in settings.items() if key.startswith("cost.")}
    hardware = {key.removeprefix("hardware."): value for key, value in settings.items()
                if key.startswith("hardware.") and key != "hardware.node.gpu"}
    if len(cost) + len(hardware) + (gpu is not None) != len(settings):
        raise MoesimError(f"published points: only hardware.* and cost.* settings apply, got {sorted(settings)}")
    cluster = apply_overrides(_base_cluster(node, nodes, gpu), hardware, where="hardware.")
    return cluster.with_cost(apply_overrides(cluster.cost, cost, where="cost.")) if cost else cluster


@functools.cache
def _base_cluster(node: str, nodes: int, gpu: str | None) -> ClusterSpec:
    from moesim.api import cluster_of

    return cluster_of(node, nodes, {} if gpu is None else {"hardware.node.gpu": gpu})


@functools.cache
def _preset_gpu(node: str) -> str:
    """The GPU a node preset names (each preset read once per process)."""
    from moesim.hardware.presets import load_cluster

    return load_cluster(node, 1).node.gpu.name


def _attention_tflops(point: Point, settings: Mapping[str, Any]) -> float:
    """TFLOP/s in FlashAttention's count (half the square when causal) from moesim's times."""
    from moesim.analysis.primitives import attention_row
    from moesim.hardware import RooflineCostModel
    from moesim.plan import StreamKind, Task
    from moesim.workload.builder import ATTENTION_BACKWARD_FLOPS
    from moesim.workload.ops import Op, OpKind, Phase, Role

    a = point.attention
    assert a is not None
    cluster = _cluster(point.node, 1, settings)
    forward = attention_row(cluster, a.dtype, a.batch, a.heads, a.seq, a.head_dim, causal=a.causal)
    seconds = forward.time_us * 1e-6
    if a.passes == "forward_backward":
        dims = {"b": a.batch, "heads": a.heads, "s": a.seq, "head_dim": a.head_dim}
        if a.causal:
            dims["causal"] = 1
        backward = Op(id=0, name="attention.dx", role=Role.ATTENTION, kind=OpKind.ATTENTION,
                      phase=Phase.BACKWARD_INPUT, layer=None, flops=ATTENTION_BACKWARD_FLOPS * forward.flops,
                      mem_bytes=2 * forward.bytes, dims=dims)
        task = Task(id=0, op=0, stream=StreamKind.COMPUTE)
        seconds += RooflineCostModel(cluster, a.dtype).compute_time(backward, task, 0)
    counted = forward.flops * (0.5 if a.causal else 1.0) * (1 + ATTENTION_BACKWARD_FLOPS
                                                           if a.passes == "forward_backward" else 1.0)
    return counted / seconds / 1e12


def _end_to_end(point: Point, settings: Mapping[str, Any]) -> float:
    from moesim.api import run_schedule, scenario

    block = point.end_to_end
    assert block is not None
    scn = scenario(block.preset, point.node, point.nodes, {**settings, **block.overrides})
    if scn.cluster.num_gpus != point.gpus:
        raise MoesimError(f"{point.nodes} x {point.node} is {scn.cluster.num_gpus} GPUs; the point ran on {point.gpus}")
    iteration = run_schedule(scn, block.schedule).metrics.iteration_time_s
    workload = scn.workload
    tokens = workload.tokens_per_gpu * workload.num_gpus
    match block.metric:
        case "tokens_per_s":
            return tokens / iteration
        case "samples_per_s":
            return workload.training.batch_per_gpu * workload.num_gpus / iteration
        case "iteration_s":
            return iteration
        case "tflops_per_gpu":
            flops = sum(op.flops for op in scn.graph.ops)  # per rank
            return flops / iteration / 1e12
