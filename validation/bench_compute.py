"""Compute microbenchmarks: shape sweeps, the harness's own kernels, and synthetic plans through the
executor (task overhead, hand-over between streams, a task woken under a collective, rendezvous skew)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moesim.calibration import sweeps
from moesim.calibration.measurements import (
    AttentionSample,
    ElementwiseSample,
    KernelSample,
    LayernormSample,
    MatmulSample,
    RendezvousSample,
    StreamHandoffSample,
    TaskOverheadSample,
    WokenUnderCommSample,
)
from moesim.dtypes import DType
from moesim.plan import ExecutionPlan, StreamKind, Task
from moesim.timeline import Span
from moesim.validation.bench_timing import TORCH_DTYPE, Clock, cache_bytes, cold_case, gathered
from moesim.validation.dist import RankContext
from moesim.validation.executor import MeasuredRun, execute_plan
from moesim.validation.kernels import Kernel, TensorPool, compute_kernel
from moesim.workload.ops import Op

_OVERHEAD_WARMUP, _OVERHEAD_ITERATIONS = 2, 9
_SKEW_ROUNDS = 12


def compute_sweeps(ctx: RankContext, clock: Clock, sizes: sweeps.Sizes, dtype: DType) -> dict[str, list[Any]]:
    """The four shape sweeps as samples (see ``measurements`` for their FLOP / byte conventions)."""
    torch_dtype, dev, cache = TORCH_DTYPE[dtype], ctx.device, cache_bytes(ctx.device)
    width = torch.tensor([], dtype=torch_dtype).element_size()

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch_dtype, device=dev)

    def gemm(m: int, n: int, k: int, _: int) -> Kernel:
        return partial(torch.mm, randn(m, k), randn(k, n), out=torch.empty(m, n, dtype=torch_dtype, device=dev))

    def add(numel: int, _: int) -> Kernel:
        return partial(torch.add, randn(numel), randn(numel), out=torch.empty(numel, dtype=torch_dtype, device=dev))

    def attention(batch: int, heads: int, seq: int, dim: int, _: int) -> Kernel:
        q, k, v = (randn(batch, heads, seq, dim) for _ in range(3))
        return partial(F.scaled_dot_product_attention, q, k, v)

    def layernorm(tokens: int, hidden: int, _: int) -> Kernel:
        weight, bias = torch.ones(hidden, dtype=torch_dtype, device=dev), randn(hidden)
        return partial(F.layer_norm, randn(tokens, hidden), (hidden,), weight, bias)

    def case(build: Callable[[int], Kernel], elements: int) -> dict[str, Any]:
        return {"dtype": dtype, **cold_case(clock, sizes, build, elements * width, cache)}

    return {
        "matmul": [MatmulSample(m=m, n=n, k=k, **case(partial(gemm, m, n, k), m * k + k * n + m * n))
                   for m, n, k in sizes.matmul],
        "elementwise": [ElementwiseSample(numel=numel, **case(partial(add, numel), 3 * numel))
                        for numel in sizes.elementwise],
        "attention": [AttentionSample(batch=b, heads=h, seq=s, head_dim=d,
                                      **case(partial(attention, b, h, s, d), 4 * b * h * s * d))
                      for b, h, s, d in sizes.attention],
        "layernorm": [LayernormSample(tokens=t, hidden=h, **case(partial(layernorm, t, h), 2 * t * h))
                      for t, h in sizes.layernorm],
    }


@dataclass(slots=True)
class _CopiedPool(TensorPool):
    """An independent operand set for the same kernel: copies of ``template``'s tensors (one per template
    tensor, shared as the template shares them), at the cost of a copy instead of fresh random draws."""

    template: TensorPool | None = None
    _copies: dict[int, torch.Tensor] = field(default_factory=dict)

    def get(self, slot: str, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        assert self.template is not None, "a copied pool needs its template"
        return self._copy(self.template.get(slot, *shape, dtype=dtype))

    def indices(self, slot: str, length: int, high: int) -> torch.Tensor:
        assert self.template is not None, "a copied pool needs its template"
        return self._copy(self.template.indices(slot, length, high))

    def _copy(self, original: torch.Tensor) -> torch.Tensor:
        return self._copies.setdefault(id(original), original.clone())


def kernel_sweep(ctx: RankContext, clock: Clock, sizes: sweeps.Sizes, dtype: DType) -> list[KernelSample]:
    """Every kernel case of the calibration models, run by the harness's ``compute_kernel`` exactly as a
    plan's task of that op would run (whole op, one part), each operand set in a pool of its own. Set 0
    is the template the others copy, so it is read last of all before timing: the warm-up calls use it."""
    cache, samples = cache_bytes(ctx.device), []
    for case in sweeps.kernel_cases(sizes, ctx.world_size, dtype):
        op = case.op
        task = Task(id=0, op=op.id, stream=StreamKind.COMPUTE)
        template = TensorPool.for_training(dtype, ctx.device)

        def build(index: int, op: Op = op, task: Task = task, template: TensorPool = template) -> Kernel:
            pool = template if index == 0 else _CopiedPool(template.device, template.dtype, template.wire_dtype,
                                                           template=template)
            return compute_kernel(op, task, ctx.rank, pool)

        timed = cold_case(clock, sizes, build, op.mem_bytes_on(ctx.rank), cache)
        samples.append(KernelSample(model=case.model, name=op.name, kind=op.kind, phase=op.phase, dims=dict(op.dims),
                                    flops=op.flops, mem_bytes=op.mem_bytes, dtype=dtype, **timed))
    return samples


def task_overhead(ctx: RankContext, clock: Clock, sizes: sweeps.Sizes, dtype: DType) -> TaskOverheadSample:
    """Per task: the executor's median iteration of ``overhead_plan`` over its tasks, and the same kernel
    timed alone by the sweeps' clock (their difference is the executor's bookkeeping)."""
    plan = sweeps.overhead_plan(sizes.overhead_tasks, ctx.world_size, dtype)
    run = execute_plan(plan, ctx, warmup=_OVERHEAD_WARMUP, iterations=_OVERHEAD_ITERATIONS)
    op, task = plan.graph.ops[0], plan.tasks[0]
    kernel = compute_kernel(op, task, ctx.rank, TensorPool.for_training(dtype, ctx.device))
    dist.barrier()
    alone = statistics.median(gathered(statistics.median(clock.times([kernel], sizes.warmup, 10 * sizes.repeats))))
    return TaskOverheadSample(tasks=len(plan.tasks), seconds_per_task=run.median_s / len(plan.tasks),
                              kernel_seconds=alone, flops=op.flops, mem_bytes=op.mem_bytes, dtype=dtype)


def stream_handoff(ctx: RankContext, sizes: sweeps.Sizes, dtype: DType) -> StreamHandoffSample | None:
    """The executor's hand-over between streams on ``handoff_plan``: in its median iteration, the mean of
    start minus the dependency's end over every task woken by the other stream, on every rank."""
    if ctx.world_size < 2:
        return None
    plan = sweeps.handoff_plan(sizes.handoff_rounds, ctx.world_size, dtype)
    run = execute_plan(plan, ctx, warmup=_OVERHEAD_WARMUP, iterations=_OVERHEAD_ITERATIONS)
    gaps = [span.start - dep_end for span, dep_end in _woken_by_other_stream(plan, run, _span_ends(run))]
    return StreamHandoffSample(rounds=sizes.handoff_rounds, seconds=max(0.0, statistics.fmean(gaps)))


def woken_under_comm(ctx: RankContext, sizes: sweeps.Sizes, dtype: DType) -> WokenUnderCommSample | None:
    """``woken_plan`` through the executor, median iteration, every rank: how long after the small
    all-to-all's end the add it wakes starts, while the busy all-to-all behind it runs, and how long that
    one runs on from the same moment."""
    if ctx.world_size < 2:
        return None
    plan = sweeps.woken_plan(sizes.handoff_rounds, sizes.woken_bytes, ctx.world_size, dtype)
    run = execute_plan(plan, ctx, warmup=_OVERHEAD_WARMUP, iterations=_OVERHEAD_ITERATIONS)
    ends = _span_ends(run)
    gaps, busy = [], []
    for span, small_end in _woken_by_other_stream(plan, run, ends):
        if span.stream is StreamKind.COMPUTE:  # the woken add; the busy all-to-all follows the small one
            small = plan.tasks[span.task].deps[0]
            gaps.append(span.start - small_end)
            busy.append(ends[span.rank, small + 1] - small_end)
    return WokenUnderCommSample(rounds=sizes.handoff_rounds, busy_bytes=float(sizes.woken_bytes),
                                seconds=max(0.0, statistics.fmean(gaps)),
                                collective_seconds=max(0.0, statistics.fmean(busy)))


def _woken_by_other_stream(plan: ExecutionPlan, run: MeasuredRun,
                           ends: dict[tuple[int, int], float]) -> list[tuple[Span, float]]:
    """Each measured span whose task waits for a task of another stream, with that task's end on its rank
    (``ends``: ``_span_ends(run)``)."""
    return [(span, ends[span.rank, dep]) for span in run.timeline.spans
            for dep in plan.tasks[span.task].deps if plan.tasks[dep].stream is not span.stream]


def _span_ends(run: MeasuredRun) -> dict[tuple[int, int], float]:
    """Each measured span's end by (rank, task)."""
    return {(span.rank, span.task): span.end for span in run.timeline.spans}


def rendezvous_skew(ctx: RankContext, sizes: sweeps.Sizes, dtype: DType) -> list[RendezvousSample]:
    """``skew_plan`` at each segment length of ``skew_segments``: in the median iteration, the mean compute
    per segment and the mean wait from a segment's end to its collective's rendezvous plus that
    collective's time, over every round and rank."""
    if ctx.world_size < 2:
        return []
    samples = []
    for segment in sizes.skew_segments:
        plan = sweeps.skew_plan(_SKEW_ROUNDS, segment, sizes.skew_matmul, ctx.world_size, dtype)
        run = execute_plan(plan, ctx, warmup=_OVERHEAD_WARMUP, iterations=_OVERHEAD_ITERATIONS)
        computed = [span.duration for span in run.timeline.spans if span.stream is StreamKind.COMPUTE]
        waits = [span.end - dep_end for span, dep_end in _woken_by_other_stream(plan, run, _span_ends(run))
                 if span.stream is StreamKind.COMM]
        samples.append(RendezvousSample(segment=segment, segment_seconds=segment * statistics.fmean(computed),
                                        wait_seconds=statistics.fmean(waits)))
    return samples
