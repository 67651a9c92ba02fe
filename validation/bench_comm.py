"""Communication microbenchmarks: collective sweeps per group size, issued from a second thread as the
executor issues them, alone and under a computing caller, and compute under a collective loop."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from moesim.calibration import predict, sweeps
from moesim.calibration.measurements import CollectiveSample, CommUnderComputeSample, InterferenceSample
from moesim.dtypes import DType
from moesim.validation.bench_timing import (
    LOOP_START_TIMEOUT_S,
    PAIRED_BLOCKS,
    TORCH_DTYPE,
    WIRE,
    Clock,
    gathered,
    paired,
)
from moesim.validation.dist import RankContext
from moesim.workload.ops import OpKind


def collective_groups(ctx: RankContext) -> dict[int, Any]:
    """This rank's group at every size of ``group_sizes``: consecutive ranks, as the fit assumes
    (``predict.collective_groups``). Every rank creates every group, in order (``new_group`` is collective).

    A group of its own even at the world size, as the executor gives each plan stream one: the barrier
    that starts each timed call runs on the default group, and on gloo a collective issued on that same
    group waits behind it (docs/calibration-notes.md)."""
    mine: dict[int, Any] = {}
    for size in sweeps.group_sizes(ctx.world_size):
        for members in predict.collective_groups(size, ctx.world_size):
            group = dist.new_group(list(members))
            if ctx.rank in members:
                mine[size] = group
    return mine


def _collective(kind: OpKind, numel: int, device: torch.device, group: Any) -> Callable[[], object]:
    send = torch.zeros(numel, dtype=WIRE, device=device)
    if kind is OpKind.ALL_TO_ALL:
        recv = torch.empty_like(send)
        return lambda: dist.all_to_all_single(recv, send, group=group)
    return lambda: dist.all_reduce(send, group=group)


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
                numel = max(size, nbytes // WIRE.itemsize // size * size)  # whole equal chunks
                call = _collective(kind, numel, ctx.device, group)
                alone = tuple(gathered(issue(call, None).alone_s))
                swept.append(CollectiveSample(kind=kind, group_size=size, bytes_per_rank=numel * WIRE.itemsize,
                                              seconds=max(alone), rank_seconds=alone))
                if nbytes not in sizes.comm_under_compute_bytes:
                    continue
                for (m, n, k), matmul in loops:
                    issued = issue(call, _stepper(matmul, ctx.device))
                    quiet, busy = tuple(gathered(issued.alone_s)), tuple(gathered(issued.busy_s or 0.0))
                    windows, kernels = gathered(issued.window_s or 0.0), gathered(issued.kernels or 0.0)
                    seconds = statistics.fmean(gathered(issued.kernel_s or 0.0))
                    under_compute.append(CommUnderComputeSample(
                        kind=kind, group_size=size, bytes_per_rank=numel * WIRE.itemsize, m=m, n=n, k=k,
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
    often, so the loop's kernels are compared with their own time in the same minutes: a host whose speed
    drifts within a calibration would otherwise show the drift as interference.
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
        elif not done.wait(LOOP_START_TIMEOUT_S):
            raise RuntimeError("a collective under test did not return")
        if errors:
            raise RuntimeError(f"the collective thread failed: {errors[0]!r}")
        return time.perf_counter() - start, kernels

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    alone, with_compute = list[tuple[float, float]](), list[tuple[float, float]]()
    repeats = sizes.paired_repeats // PAIRED_BLOCKS
    windows, counts, kernel_times = list[float](), list[int](), list[float]()
    sides = ((False, alone),) if compute is None else ((False, alone), (True, with_compute))
    try:
        for _ in range(PAIRED_BLOCKS):
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
    send = torch.zeros(numel, dtype=WIRE, device=ctx.device)
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
    torch_dtype = TORCH_DTYPE[dtype]
    a, b = (torch.randn(rows, cols, dtype=torch_dtype, device=device) for rows, cols in ((m, k), (k, n)))
    return partial(torch.mm, a, b, out=torch.empty(m, n, dtype=torch_dtype, device=device))


def interference_sweep(ctx: RankContext, clock: Clock, sizes: sweeps.Sizes, dtype: DType) -> list[InterferenceSample]:
    """Each matmul alone and while a collective loop runs on a second process group (``paired``)."""
    if ctx.world_size < 2:
        return []
    comm_group, samples = dist.new_group(list(range(ctx.world_size))), []
    numel = max(ctx.world_size, sizes.interference_bytes // WIRE.itemsize // ctx.world_size * ctx.world_size)
    for m, n, k in sizes.interference:
        call = _matmul(m, n, k, dtype, ctx.device)
        for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
            dist.barrier()
            alone, busy = paired(clock, call, _comm_step(ctx, comm_group, kind, numel), ctx.device, sizes)
            samples.append(InterferenceSample(m=m, n=n, k=k, dtype=dtype, kind=kind,
                                              bytes_per_rank=numel * WIRE.itemsize,
                                              seconds_alone=statistics.median(gathered(alone)),
                                              seconds_with_comm=statistics.median(gathered(busy))))
    return samples
