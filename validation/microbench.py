"""Microbenchmarks for calibration, run on every rank of a torchrun job; rank 0 writes the JSON.

    torchrun --nproc-per-node N -m moesim.validation.microbench --out PATH [--quick] [--dtype fp32]

Every rank runs every sweep at the same time as the others, sharing the host as the ranks of a real
run do. Compute: matmul, add, attention and layernorm shapes, and the harness's own kernels
(``validation/kernels.py``) on the ops of the calibration models (``moesim.calibration.sweeps``); each
case: warm-up, ``repeats`` timed calls (perf_counter on a CPU, CUDA events on a GPU), each rank's
median, the median over ranks. Operands are cold: consecutive ops of a training step touch different
tensors, so timing calls on the same operands would measure the cache, not the kernel. Each case
cycles through independent operand sets spanning twice the last-level cache (L3, a GPU's L2) where
memory allows. Task overhead: a synthetic plan of tiny tasks through the executor, against the same
kernel alone; the hand-over between streams, the wait of a compute task woken while a collective runs
and the wait for the last rank at a rendezvous: synthetic two-stream plans through it. Collectives:
all-to-all and all-reduce at every group size (powers of two up to the world size), issued from a second
thread as the executor's communication streams issue them, each rank's mean, the slowest rank; some
sizes also while every rank's calling thread runs a matmul loop (each of a few kernel lengths).
Interference: a matmul alone, then under a loop of collectives in a second thread.
The JSON follows ``moesim.calibration.measurements.Measurements``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moesim import units
from moesim.calibration import predict, sweeps
from moesim.calibration.measurements import (
    AttentionSample,
    CollectiveSample,
    CommUnderComputeSample,
    ElementwiseSample,
    Environment,
    InterferenceSample,
    KernelSample,
    LayernormSample,
    MatmulSample,
    Measurements,
    RendezvousSample,
    StreamHandoffSample,
    TaskOverheadSample,
    WokenUnderCommSample,
)
from moesim.dtypes import DType
from moesim.plan import ExecutionPlan, StreamKind, Task
from moesim.timeline import Span
from moesim.validation.dist import RankContext, environment, finish, init
from moesim.validation.executor import MeasuredRun, execute_plan
from moesim.validation.kernels import Kernel, TensorPool, compute_kernel
from moesim.workload.ops import Op, OpKind

_TORCH_DTYPE = {DType.FP32: torch.float32, DType.BF16: torch.bfloat16, DType.FP16: torch.float16}
_WIRE = torch.float32  # collectives move float32 words; only their bytes matter
_PAIRED_BLOCKS = 3  # alternating blocks of each side of a pair
_LOOP_START_TIMEOUT_S = 120.0
_OVERHEAD_WARMUP, _OVERHEAD_ITERATIONS = 2, 9
_SKEW_ROUNDS = 12


class Clock:
    """Times calls on one device: perf_counter on a CPU, CUDA events on the current stream of a GPU."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"

    def times(self, calls: Sequence[Callable[[], object]], warmup: int, repeats: int,
              before: Callable[[], object] | None = None) -> list[float]:
        """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones, cycling through ``calls``
        (independent operand sets of one case); ``before`` runs untimed ahead of each timed call (e.g. a
        barrier, so a collective starts together on every rank)."""
        for index in range(warmup):
            calls[index % len(calls)]()
        if self._cuda:
            torch.cuda.synchronize()
        seconds = []
        for index in range(warmup, warmup + repeats):
            if before is not None:
                before()
            seconds.append(self._time_one(calls[index % len(calls)]))
        return seconds

    def _time_one(self, call: Callable[[], object]) -> float:
        if not self._cuda:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) * units.MS


def _gathered(value: float) -> list[float]:
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    return [float(v) for v in everyone]


def cache_bytes(device: torch.device) -> int:
    """The last-level cache a rank's operand sets must outgrow: a GPU's L2, or the host's L3."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    return sweeps.host_cache_bytes()


def _cold_case(clock: Clock, sizes: sweeps.Sizes, build: Callable[[int], Kernel], set_bytes: float,
               cache: int) -> dict[str, Any]:
    """A case whose ``build(i)`` makes the kernel on operand set ``i``, timed on every rank at the same
    moment: ``seconds`` (median over ranks), ``rank_seconds`` (each rank's median) and ``operand_sets``.
    The sets are built oldest first and the cycle starts at the oldest, so no timed call finds its
    operands left in cache by the set-up."""
    count = sweeps.operand_sets(set_bytes, cache)
    calls = [build(index) for index in range(count)]
    dist.barrier()
    ranks = tuple(_gathered(statistics.median(clock.times(calls, sizes.warmup, sizes.repeats))))
    return {"seconds": statistics.median(ranks), "rank_seconds": ranks, "operand_sets": count}


def compute_sweeps(ctx: RankContext, clock: Clock, sizes: sweeps.Sizes, dtype: DType) -> dict[str, list[Any]]:
    """The four shape sweeps as samples (see ``measurements`` for their FLOP / byte conventions)."""
    torch_dtype, dev, cache = _TORCH_DTYPE[dtype], ctx.device, cache_bytes(ctx.device)
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
        return {"dtype": dtype, **_cold_case(clock, sizes, build, elements * width, cache)}

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

        timed = _cold_case(clock, sizes, build, op.mem_bytes_on(ctx.rank), cache)
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
    alone = statistics.median(_gathered(statistics.median(clock.times([kernel], sizes.warmup, 10 * sizes.repeats))))
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


def collective_groups(ctx: RankContext) -> dict[int, Any]:
    """This rank's group at every size of ``group_sizes``: consecutive ranks, as the fit assumes
    (``predict.collective_groups``). Every rank creates every group, in order (``new_group`` is collective).

    A group of its own even at the world size, as the executor gives each plan stream one: the barrier
    that starts each timed call runs on the default group, and on gloo a collective issued on that same
    group while the calling thread computes waited 1.6-3.4 ms (median) where one on a group of its own
    took 0.12-0.19 ms (256 KiB all-to-all, 2 ranks, under matmul loops of 0.2-5 ms kernels)."""
    mine: dict[int, Any] = {}
    for size in sweeps.group_sizes(ctx.world_size):
        for members in predict.collective_groups(size, ctx.world_size):
            group = dist.new_group(list(members))
            if ctx.rank in members:
                mine[size] = group
    return mine


def _collective(kind: OpKind, numel: int, device: torch.device, group: Any) -> Callable[[], object]:
    send = torch.zeros(numel, dtype=_WIRE, device=device)
    if kind is OpKind.ALL_TO_ALL:
        recv = torch.empty_like(send)
        return lambda: dist.all_to_all_single(recv, send, group=group)
    return lambda: dist.all_reduce(send, group=group)


@contextmanager
def _running(step: Callable[[bool], bool], device: torch.device) -> Iterator[None]:
    """The body runs while ``step(stopping)`` loops in a second thread (on a GPU, on a stream of its own) that has
    made its first step; then ``stopping`` turns True, ``step`` ends the loop by returning True; errors are raised."""
    running, stop, errors = threading.Event(), threading.Event(), []

    def loop() -> None:
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            with torch.cuda.stream(torch.cuda.Stream()) if device.type == "cuda" else nullcontext():
                while not step(stop.is_set()):
                    running.set()
        except BaseException as err:  # reported by the main thread
            errors.append(err)
        running.set()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    if not running.wait(_LOOP_START_TIMEOUT_S) or errors:
        raise RuntimeError(f"the background loop did not start: {errors[:1]!r}")
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if errors:
            raise RuntimeError(f"the background loop failed: {errors[0]!r}")


def _paired(clock: Clock, call: Callable[[], object], step: Callable[[bool], bool], device: torch.device,
            sizes: sweeps.Sizes, before: Callable[[], object] | None = None) -> tuple[float, float]:
    """This rank's median time of ``call`` alone and while ``step`` loops (``_running``), in alternating blocks:
    a drift of the host's speed during the case (other work starting or ending) biases neither side."""
    alone, busy, repeats = list[float](), list[float](), sizes.paired_repeats // _PAIRED_BLOCKS
    for _ in range(_PAIRED_BLOCKS):
        alone += clock.times([call], sizes.warmup, repeats, before)
        with _running(step, device):
            busy += clock.times([call], sizes.warmup, repeats, before)
            if before is not None:  # every rank's last call has ended before any rank stops its loop
                before()
    return statistics.median(alone), statistics.median(busy)


def collective_sweeps(ctx: RankContext, sizes: sweeps.Sizes,
                      dtype: DType) -> tuple[list[CollectiveSample], list[CommUnderComputeSample]]:
    """All-to-all and all-reduce on every group of ``collective_groups`` (``bytes_per_rank`` rounded to whole
    equal chunks), each call issued from a second thread as the executor issues it (``_thread_issued``). At
    ``comm_under_compute_bytes`` also under a loop of each matmul of ``comm_under_compute_matmuls`` on the
    calling thread, whose length alone is timed in the same blocks."""
    swept, under_compute = [], []
    loops = [(shape, _matmul(*shape, dtype, ctx.device)) for shape in sizes.comm_under_compute_matmuls]
    hosts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(hosts, socket.gethostname())
    shared_clock = len(set(hosts)) == 1  # perf_counter is the host's monotonic clock, the same in every rank
    for size, group in collective_groups(ctx).items():
        issue = partial(_thread_issued, device=ctx.device, sizes=sizes, shared_clock=shared_clock, group_size=size)
        for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
            for nbytes in sizes.collective_bytes:
                numel = max(size, nbytes // _WIRE.itemsize // size * size)  # whole equal chunks
                call = _collective(kind, numel, ctx.device, group)
                alone = tuple(_gathered(issue(call, None).alone_s))
                swept.append(CollectiveSample(kind=kind, group_size=size, bytes_per_rank=numel * _WIRE.itemsize,
                                              seconds=max(alone), rank_seconds=alone))
                if nbytes not in sizes.comm_under_compute_bytes:
                    continue
                for (m, n, k), matmul in loops:
                    issued = issue(call, _stepper(matmul, ctx.device))
                    quiet, busy = tuple(_gathered(issued.alone_s)), tuple(_gathered(issued.busy_s or 0.0))
                    windows, kernels = _gathered(issued.window_s or 0.0), _gathered(issued.kernels or 0.0)
                    seconds = statistics.fmean(_gathered(issued.kernel_s or 0.0))
                    under_compute.append(CommUnderComputeSample(
                        kind=kind, group_size=size, bytes_per_rank=numel * _WIRE.itemsize, m=m, n=n, k=k,
                        dtype=dtype, seconds_alone=max(quiet), seconds_with_compute=max(busy),
                        rank_seconds_alone=quiet, rank_seconds_with_compute=busy, kernel_seconds=seconds,
                        compute_window_seconds=statistics.fmean(windows), compute_kernels=statistics.fmean(kernels)))
    return swept, under_compute


def _stepper(matmul: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """One matmul, waited for on a GPU so the loop never queues ahead of the clock."""
    if device.type != "cuda":
        return matmul

    def step() -> object:
        result = matmul()
        torch.cuda.current_stream().synchronize()
        return result

    return step


@dataclass(frozen=True)
class _Issued:
    """``_thread_issued``'s means for this rank: the call alone and under compute, how long the calling
    thread's compute loop ran per call under compute and how many of its kernels that was, and one of
    those kernels alone, timed in the same blocks."""

    alone_s: float
    busy_s: float | None = None
    window_s: float | None = None
    kernels: float | None = None
    kernel_s: float | None = None


def _thread_issued(call: Callable[[], object], compute: Callable[[], object] | None, device: torch.device,
                   sizes: sweeps.Sizes, shared_clock: bool, group_size: int) -> _Issued:
    """This rank's mean time of ``call`` issued from a second thread, as the executor issues a collective
    from a communication stream's thread: alone (this thread waits) and, given ``compute``, while this thread
    runs it back to back until the call returns, in alternating blocks (a drift of the host's speed biases
    neither); ``paired_repeats`` timed calls in all per side. Each block also times ``compute`` alone as
    often, so the loop's kernels are compared with their own time in the same minutes: on a shared host
    the speed drifts by 10-50% within a calibration, which a kernel time taken once would count as
    interference.
    A barrier starts each call on every rank together; the second thread times it (perf_counter, after a
    synchronize on a GPU, where the call runs on a stream of its own). With ``shared_clock`` (every rank on
    one host) a call counts from its rendezvous, the last start in this rank's group (consecutive blocks of
    ``group_size`` ranks, as ``collective_groups`` makes them), as the executor places a measured
    collective: ranks leave a barrier up to a few hundred microseconds apart, a wait the engine models
    separately (``rendezvous_skew``), not part of the collective's latency. The mean, not the median: on a
    busy CPU host a call's wait for a core is either about nothing or about a scheduler time slice, so the
    median jumps between the two, while an iteration adds up many such calls: their mean."""
    go, done, stop, errors = threading.Event(), threading.Event(), threading.Event(), []
    spans: list[tuple[float, float]] = []  # each call's (start, end) on this rank, perf_counter

    def worker() -> None:
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            with torch.cuda.stream(torch.cuda.Stream()) if device.type == "cuda" else nullcontext():
                while go.wait() and not stop.is_set():
                    go.clear()
                    start = time.perf_counter()
                    call()
                    if device.type == "cuda":
                        torch.cuda.current_stream().synchronize()
                    spans.append((start, time.perf_counter()))
                    done.set()
        except BaseException as err:  # reported by the calling thread
            errors.append(err)
            done.set()

    def one(busy: bool) -> tuple[float, int]:
        dist.barrier()
        done.clear()
        go.set()
        start, kernels = time.perf_counter(), 0
        if busy and compute is not None:
            while not done.is_set():
                compute()
                kernels += 1
        elif not done.wait(_LOOP_START_TIMEOUT_S):
            raise RuntimeError("a collective under test did not return")
        if errors:
            raise RuntimeError(f"the collective thread failed: {errors[0]!r}")
        return time.perf_counter() - start, kernels

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    alone, with_compute = list[tuple[float, float]](), list[tuple[float, float]]()
    repeats = sizes.paired_repeats // _PAIRED_BLOCKS
    windows, counts, kernel_times = list[float](), list[int](), list[float]()
    sides = ((False, alone),) if compute is None else ((False, alone), (True, with_compute))
    try:
        for _ in range(_PAIRED_BLOCKS):
            if compute is not None:
                for index in range(sizes.warmup + repeats):
                    start = time.perf_counter()
                    compute()
                    if index >= sizes.warmup:
                        kernel_times.append(time.perf_counter() - start)
            for busy, times in sides:
                for index in range(sizes.warmup + repeats):
                    window, kernels = one(busy)
                    if index >= sizes.warmup:
                        times.append(spans[-1])
                        if busy:
                            windows.append(window)
                            counts.append(kernels)
    finally:
        stop.set()
        go.set()
        thread.join()
    meet = (lambda calls: _from_rendezvous(calls, group_size)) if shared_clock else _own_clock
    alone_s = statistics.fmean(meet(alone))
    if not with_compute:
        return _Issued(alone_s)
    return _Issued(alone_s, statistics.fmean(meet(with_compute)), statistics.fmean(windows),
                   statistics.fmean(counts), statistics.fmean(kernel_times))


def _own_clock(calls: Sequence[tuple[float, float]]) -> list[float]:
    return [end - start for start, end in calls]


def _from_rendezvous(calls: Sequence[tuple[float, float]], group_size: int) -> list[float]:
    """Each call's seconds on this rank from the last start in its group of ``group_size`` consecutive ranks
    (one clock for all: ranks on one host). Collective over the world: every rank passes its calls in the
    same order."""
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, [start for start, _ in calls])
    first = dist.get_rank() // group_size * group_size
    return since_rendezvous(calls, everyone[first:first + group_size])


def since_rendezvous(calls: Sequence[tuple[float, float]], group_starts: Sequence[Sequence[float]]) -> list[float]:
    """Seconds from each call's rendezvous (the latest of the group's starts of that call) to its end here;
    never below 0 (the clocks agree to well under a microsecond, not exactly)."""
    meetings = [max(starts) for starts in zip(*group_starts, strict=True)]
    return [max(0.0, end - max(start, meeting)) for (start, end), meeting in zip(calls, meetings, strict=True)]


def _comm_step(ctx: RankContext, group: Any, kind: OpKind, numel: int) -> Callable[[bool], bool]:
    """One collective on ``group`` carrying each rank's stop flag (the first word of each all-to-all chunk,
    or of the all-reduce buffer, summed), so all ranks see the same flags in the same iteration and leave
    the loop together: a rank's compute is never left without communication while others wait."""
    send = torch.zeros(numel, dtype=_WIRE, device=ctx.device)
    recv, world = torch.zeros_like(send), ctx.world_size

    def step(stopping: bool) -> bool:
        if kind is OpKind.ALL_TO_ALL:
            send.view(world, -1)[:, 0] = float(stopping)
            dist.all_to_all_single(recv, send, group=group)
            return bool(recv.view(world, -1)[:, 0].sum().item() >= world)
        send[0] = float(stopping)
        dist.all_reduce(send, group=group)
        return bool(send[0].item() >= world)

    return step


def _matmul(m: int, n: int, k: int, dtype: DType, device: torch.device) -> Callable[[], object]:
    torch_dtype = _TORCH_DTYPE[dtype]
    a, b = (torch.randn(rows, cols, dtype=torch_dtype, device=device) for rows, cols in ((m, k), (k, n)))
    return partial(torch.mm, a, b, out=torch.empty(m, n, dtype=torch_dtype, device=device))


def interference_sweep(ctx: RankContext, clock: Clock, sizes: sweeps.Sizes, dtype: DType) -> list[InterferenceSample]:
    """Each matmul alone and while a collective loop runs on a second process group (``_paired``)."""
    if ctx.world_size < 2:
        return []
    comm_group, samples = dist.new_group(list(range(ctx.world_size))), []
    numel = max(ctx.world_size, sizes.interference_bytes // _WIRE.itemsize // ctx.world_size * ctx.world_size)
    for m, n, k in sizes.interference:
        call = _matmul(m, n, k, dtype, ctx.device)
        for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
            dist.barrier()
            alone, busy = _paired(clock, call, _comm_step(ctx, comm_group, kind, numel), ctx.device, sizes)
            samples.append(InterferenceSample(m=m, n=n, k=k, dtype=dtype, kind=kind,
                                              bytes_per_rank=numel * _WIRE.itemsize,
                                              seconds_alone=statistics.median(_gathered(alone)),
                                              seconds_with_comm=statistics.median(_gathered(busy))))
    return samples


def run(out: Path, quick: bool, dtype: DType | None) -> Measurements:
    """Every sweep, on every rank of the job (all ranks call this); rank 0 writes ``out``."""
    ctx = init()
    sizes = sweeps.sizes_for(ctx.device.type, quick)
    chosen = dtype or (DType.BF16 if ctx.device.type == "cuda" else DType.FP32)
    clock = Clock(ctx.device)
    measured_at = datetime.now(UTC)
    compute = compute_sweeps(ctx, clock, sizes, chosen)
    kernels = kernel_sweep(ctx, clock, sizes, chosen)
    overhead = task_overhead(ctx, clock, sizes, chosen)
    handoff = stream_handoff(ctx, sizes, chosen)
    woken = woken_under_comm(ctx, sizes, chosen)
    skews = rendezvous_skew(ctx, sizes, chosen)
    collectives, comm_under_compute = collective_sweeps(ctx, sizes, chosen)
    interference = interference_sweep(ctx, clock, sizes, chosen)
    env = Environment.from_info(environment(ctx), device="gpu" if ctx.device.type == "cuda" else "cpu",
                                ranks_per_host=int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)))
    result = Measurements(measured_at=measured_at, environment=env, warmup=sizes.warmup,
                          repeats=sizes.repeats, matmul=tuple(compute["matmul"]),
                          elementwise=tuple(compute["elementwise"]), attention=tuple(compute["attention"]),
                          layernorm=tuple(compute["layernorm"]), kernels=tuple(kernels), task_overhead=overhead,
                          stream_handoff=handoff, woken_under_comm=woken, rendezvous=tuple(skews),
                          collectives=tuple(collectives), interference=tuple(interference),
                          comm_under_compute=tuple(comm_under_compute))
    if ctx.rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.model_dump_json(indent=1), encoding="utf-8")
    finish()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moesim.validation.microbench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file rank 0 writes")
    parser.add_argument("--quick", action="store_true", help="fewer sizes, models and repeats (under 40 s on 2 cores)")
    parser.add_argument("--dtype", choices=[d.value for d in _TORCH_DTYPE], default=None,
                        help="compute dtype (default: fp32 on CPU, bf16 on GPU)")
    args = parser.parse_args(argv)
    run(args.out, args.quick, DType(args.dtype) if args.dtype else None)


if __name__ == "__main__":
    main()
