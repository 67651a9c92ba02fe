"""Execute an ExecutionPlan for real through torch.distributed and record the measured Timeline.

Semantics are the engine's: each stream runs its tasks in order; a task starts when its stream's
previous task and every task it depends on have finished; a collective also waits for its group
(the real rendezvous). Every rank runs the same plan; each runs only its own work.

- CPU (gloo): the compute stream runs on the calling thread, every other stream in its own thread
  that walks its tasks, waits for dependencies (one ``threading.Event`` per task), runs the blocking
  collective and records start and end with ``time.perf_counter`` from the iteration start. A
  collective's start is when the rank reached it, so it includes the wait for its peers.
- GPU (NCCL) -- written carefully but NOT YET RUN on a GPU: one ``torch.cuda.Stream`` per plan
  stream; tasks are enqueued from the host in a topological order of (stream order + deps), each
  waiting on its dependencies' end events, each bracketed by timing events read after synchronize.
  That order is the same on every rank, so collectives on different communicators are issued in one
  order everywhere (what NCCL needs to avoid a cross-communicator hang). Communicators are created
  lazily by their first collective: use at least one warm-up iteration.

Each (stream, group) pair gets its own process group, so collectives issued from different streams
never interleave on one communicator. Iterations: a barrier, the clock starts, the plan runs;
warm-up iterations are discarded; the timeline is the iteration of median time (the lower median).
When every rank is on one host, ranks share the monotonic clock (collective spans then start at the
group's rendezvous, the last member's arrival, as in the engine) and spans are placed on it from the
earliest rank's start; across hosts each rank counts from its own exit of the barrier.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from moesim.engine import accounting
from moesim.errors import DeadlockError, MoesimError
from moesim.plan import STREAM_ORDER, ExecutionPlan, StreamKind
from moesim.plan import topological_order as plan_order
from moesim.timeline import Span, Timeline
from moesim.units import MS
from moesim.workload.ops import A2AAlgorithm

from . import breakdown
from .collective_kernels import collective_kernel
from .dist import RankContext, environment
from .kernels import Kernel, TensorPool, compute_kernel

_POLL_S = 0.2                 # how often a waiting stream checks whether another stream failed

GroupKey = tuple[StreamKind, tuple[int, ...]]


@dataclass(frozen=True, slots=True, eq=False)
class MeasuredRun:
    """The measured timeline (median iteration, every rank), each measured iteration's time (the
    slowest rank's end), the environment the numbers depend on, where each iteration's time went
    (``breakdown``'s parts, mean over ranks: part -> seconds per measured iteration), and how long every
    collective call of every measured iteration ran on each rank (``breakdown.collective_calls``: part ->
    seconds, iteration by iteration)."""

    timeline: Timeline
    iteration_times_s: list[float]
    environment: dict[str, Any]
    parts_s: dict[str, list[float]] = field(default_factory=dict)
    collective_calls_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return sorted(self.iteration_times_s)[(len(self.iteration_times_s) - 1) // 2]


@dataclass(frozen=True, slots=True)
class _Iteration:
    t0: float                              # perf_counter when the iteration started on this rank
    times: list[tuple[float, float]]       # (start, end) per task id, seconds from t0


def execute_plan(plan: ExecutionPlan, ctx: RankContext, *, warmup: int, iterations: int) -> MeasuredRun:
    """Run ``plan`` ``warmup + iterations`` times on this rank; collective: every rank of the job calls
    it with the same plan. Returns the same MeasuredRun on every rank."""
    _check(plan, ctx, warmup, iterations)
    order = topological_order(plan)
    groups = stream_groups(plan)
    kernels = prepare_kernels(plan, ctx, groups)
    run = _CudaRun(plan, kernels, order, ctx.device) if ctx.device.type == "cuda" else _ThreadRun(plan, kernels)
    measured = [run.iteration() for _ in range(warmup + iterations)][warmup:]
    run_environment = environment(ctx)
    return _assemble(plan, ctx, measured, warmup, run_environment)


def _check(plan: ExecutionPlan, ctx: RankContext, warmup: int, iterations: int) -> None:
    if warmup < 0:
        raise MoesimError(f"warmup: must be >= 0, got {warmup}")
    if iterations < 1:
        raise MoesimError(f"iterations: must be >= 1, got {iterations}")
    if plan.graph.num_ranks != ctx.world_size:
        raise MoesimError(f"nodes: the plan is for {plan.graph.num_ranks} ranks but the job has "
                          f"{ctx.world_size}; launch one rank per simulated GPU")


def topological_order(plan: ExecutionPlan) -> list[int]:
    """``plan.topological_order``, or a DeadlockError naming the stuck tasks when the plan has a cycle."""
    order = plan_order(plan)
    if len(order) < len(plan.tasks):
        placed = set(order)
        stuck = [t.label for t in plan.tasks if t.id not in placed][:5]
        raise DeadlockError(f"plan {plan.schedule!r} has a dependency cycle; blocked: {', '.join(stuck)}")
    return order


def stream_groups(plan: ExecutionPlan) -> dict[GroupKey, Any]:
    """A process group per (stream, group of ranks) among the plan's collectives, created on every rank
    in the same order (``new_group`` is collective). Values are what ``new_group`` returned here."""
    keys: list[GroupKey] = []
    for kind in STREAM_ORDER:
        for task in plan.stream_of(kind):
            op = plan.op_of(task)
            if op.kind.is_collective and op.comm is not None:
                keys.extend((kind, tuple(group)) for group in op.comm.groups if (kind, tuple(group)) not in keys)
    return {key: dist.new_group(list(key[1])) for key in keys}


def prepare_kernels(plan: ExecutionPlan, ctx: RankContext, groups: dict[GroupKey, Any]) -> list[Kernel]:
    """One kernel per task (index = task id), its tensors allocated now."""
    pool = TensorPool.for_training(plan.graph.dtype, ctx.device)
    kernels: list[Kernel] = []
    for task in plan.tasks:
        op = plan.op_of(task)
        if not op.kind.is_collective:
            kernels.append(compute_kernel(op, task, ctx.rank, pool))
            continue
        assert op.comm is not None, f"{op.name} is a collective without a CommSpec"
        mine = [g for g in op.comm.groups if ctx.rank in g]
        group = groups[task.stream, tuple(mine[0])] if mine else None
        kernels.append(collective_kernel(op, task, ctx.rank, pool, group))
    return kernels


class _ThreadRun:
    """CPU path: the compute stream on this thread, each other stream on a thread of its own."""

    def __init__(self, plan: ExecutionPlan, kernels: Sequence[Kernel]) -> None:
        self.plan = plan
        self.kernels = kernels

    def iteration(self) -> _Iteration:
        plan = self.plan
        finished = [threading.Event() for _ in plan.tasks]
        times = [(0.0, 0.0)] * len(plan.tasks)
        failures: list[BaseException] = []
        go = threading.Event()
        clock = [0.0]

        def walk(order: Sequence[int]) -> None:
            for tid in order:
                for dep in plan.tasks[tid].deps:
                    while not finished[dep].wait(_POLL_S):
                        if failures:
                            return
                start = time.perf_counter() - clock[0]
                self.kernels[tid]()
                times[tid] = (start, time.perf_counter() - clock[0])
                finished[tid].set()

        def worker(order: Sequence[int]) -> None:
            go.wait()
            try:
                walk(order)
            except BaseException as err:  # handed to the calling thread, which raises it
                failures.append(err)

        side = [kind for kind in plan.streams if kind is not StreamKind.COMPUTE]
        threads = [threading.Thread(target=worker, args=(plan.streams[kind],), name=f"moesim-{kind.value}",
                                    daemon=True) for kind in side]
        for thread in threads:
            thread.start()
        dist.barrier()
        clock[0] = time.perf_counter()
        go.set()
        try:
            walk(plan.streams.get(StreamKind.COMPUTE, ()))
        except BaseException as err:
            failures.append(err)
        for thread in threads:
            while thread.is_alive() and not failures:
                thread.join(_POLL_S)
        if failures:
            raise failures[0]
        return _Iteration(clock[0], times)


class _CudaRun:
    """GPU path (NOT YET RUN on a GPU): one CUDA stream per plan stream, dependencies as events."""

    def __init__(self, plan: ExecutionPlan, kernels: Sequence[Kernel], order: Sequence[int],
                 device: torch.device) -> None:
        self.plan, self.kernels, self.order, self.device = plan, kernels, order, device
        self.streams = {kind: torch.cuda.Stream(device=device) for kind in plan.streams}

    def iteration(self) -> _Iteration:
        tasks = self.plan.tasks
        begin = [torch.cuda.Event(enable_timing=True) for _ in tasks]
        end = [torch.cuda.Event(enable_timing=True) for _ in tasks]
        origin = torch.cuda.Event(enable_timing=True)
        dist.barrier()
        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        origin.record(torch.cuda.current_stream(self.device))
        for stream in self.streams.values():
            stream.wait_event(origin)
        for tid in self.order:  # topological: a dependency's end event is recorded before it is waited on
            task, stream = tasks[tid], self.streams[tasks[tid].stream]
            for dep in task.deps:
                if tasks[dep].stream is not task.stream:
                    stream.wait_event(end[dep])
            with torch.cuda.stream(stream):
                begin[tid].record(stream)
                self.kernels[tid]()
                end[tid].record(stream)
        torch.cuda.synchronize(self.device)
        times = [(origin.elapsed_time(begin[t]) * MS, origin.elapsed_time(end[t]) * MS) for t in range(len(tasks))]
        return _Iteration(t0, times)


def _assemble(plan: ExecutionPlan, ctx: RankContext, measured: list[_Iteration], warmup: int,
              run_environment: dict[str, Any]) -> MeasuredRun:
    """Gather every rank's iterations once, place them on one clock, keep the median iteration's spans and
    every iteration's parts and collective calls."""
    local = (socket.gethostname(), [it.t0 for it in measured], [max((e for _, e in it.times), default=0.0)
                                                                 for it in measured])
    summaries: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(summaries, local)
    shared_clock = len({host for host, _, _ in summaries}) == 1
    offsets = _offsets([t0s for _, t0s, _ in summaries], shared_clock)
    iteration_times = [max(offsets[r][i] + summaries[r][2][i] for r in range(ctx.world_size))
                       for i in range(len(measured))]
    median = sorted(range(len(measured)), key=lambda i: (iteration_times[i], i))[(len(measured) - 1) // 2]
    shift = offsets[ctx.rank]
    mine = [[(s + shift[i], e + shift[i]) for s, e in it.times] for i, it in enumerate(measured)]
    everyone: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(everyone, mine)
    # per iteration, every rank's (start, end) by task id on one clock (where the ranks share one)
    iterations = [[dict(enumerate(everyone[rank][i])) for rank in range(ctx.world_size)] for i in range(len(measured))]
    shown = breakdown.at_rendezvous(plan, iterations[median]) if shared_clock else iterations[median]
    meta = {**run_environment, "iteration_times_s": iteration_times, "median_iteration": median,
            "warmup": warmup, "clock": "shared monotonic" if shared_clock else "per-rank barrier exit",
            "path": "cuda streams" if ctx.device.type == "cuda" else "threads",
            "2dh_as_linear": any(t.algorithm is A2AAlgorithm.HIERARCHICAL for t in plan.tasks)}
    timeline = Timeline(spans=_spans(plan, shown), num_ranks=ctx.world_size,
                        represents={r: (r,) for r in range(ctx.world_size)},
                        task_deps=tuple(task.deps for task in plan.tasks), schedule=plan.schedule,
                        source="measured", meta=meta)
    return MeasuredRun(timeline, iteration_times, run_environment, _parts(plan, iterations, iteration_times),
                       _collective_calls(plan, iterations, shared_clock))


def _parts(plan: ExecutionPlan, iterations: list[list[dict[int, tuple[float, float]]]],
           iteration_times: list[float]) -> dict[str, list[float]]:
    """Each measured iteration's parts (``breakdown``), mean over ranks: part -> seconds per iteration."""
    per_iteration = [breakdown.mean_over_ranks([breakdown.rank_parts(plan, times, total) for times in ranks])
                     for ranks, total in zip(iterations, iteration_times, strict=True)]
    keys = sorted({key for parts in per_iteration for key in parts})
    return {key: [parts.get(key, 0.0) for parts in per_iteration] for key in keys}


def _collective_calls(plan: ExecutionPlan, iterations: list[list[dict[int, tuple[float, float]]]],
                      shared_clock: bool) -> dict[str, list[float]]:
    """Every collective call of every measured iteration on every rank (``breakdown.collective_calls``),
    timed from its group's rendezvous where the ranks share a clock: part -> seconds."""
    return breakdown.joined(breakdown.collective_calls(plan, ranks, from_rendezvous=shared_clock)
                            for ranks in iterations)


def _offsets(t0s: list[list[float]], shared_clock: bool) -> list[list[float]]:
    """Per rank and iteration, how far that rank's start lies after the earliest rank's start."""
    if not shared_clock:
        return [[0.0] * len(row) for row in t0s]
    origins = [min(column) for column in zip(*t0s, strict=True)]
    return [[t0 - origin for t0, origin in zip(row, origins, strict=True)] for row in t0s]


def _spans(plan: ExecutionPlan, times: list[dict[int, tuple[float, float]]]) -> tuple[Span, ...]:
    """Spans of every rank (``times[rank]``: task id -> ``(start, end)``) with the engine's flops and bytes,
    sorted as the engine sorts them."""
    return accounting.spans(plan, ((rank, row[task.id][0], task.id, row[task.id][1])
                                   for rank, row in enumerate(times) for task in plan.tasks))
