"""The microbenchmarks' timing machinery: a clock per device, cold operand sets, gathering over ranks, and
pairs of timings alone and beside a loop in a second thread (alternating blocks, so a drift of the
host's speed biases neither side)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist

from moesim import units
from moesim.calibration import sweeps
from moesim.dtypes import DType
from moesim.validation.kernels import Kernel

TORCH_DTYPE = {DType.FP32: torch.float32, DType.BF16: torch.bfloat16, DType.FP16: torch.float16}
WIRE = torch.float32  # collectives move float32 words; only their bytes matter
PAIRED_BLOCKS = 3  # alternating blocks of each side of a pair
LOOP_START_TIMEOUT_S = 120.0


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


def gathered(value: float) -> list[float]:
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    return [float(v) for v in everyone]


def cache_bytes(device: torch.device) -> int:
    """The last-level cache a rank's operand sets must outgrow: a GPU's L2, or the host's L3."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    return sweeps.host_cache_bytes()


def cold_case(clock: Clock, sizes: sweeps.Sizes, build: Callable[[int], Kernel], set_bytes: float,
               cache: int) -> dict[str, Any]:
    """A case whose ``build(i)`` makes the kernel on operand set ``i``, timed on every rank at the same
    moment: ``seconds`` (median over ranks), ``rank_seconds`` (each rank's median) and ``operand_sets``.
    The sets are built oldest first and the cycle starts at the oldest, so no timed call finds its
    operands left in cache by the set-up."""
    count = sweeps.operand_sets(set_bytes, cache)
    calls = [build(index) for index in range(count)]
    dist.barrier()
    ranks = tuple(gathered(statistics.median(clock.times(calls, sizes.warmup, sizes.repeats))))
    return {"seconds": statistics.median(ranks), "rank_seconds": ranks, "operand_sets": count}


@contextmanager
def running(step: Callable[[bool], bool], device: torch.device) -> Iterator[None]:
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
    if not running.wait(LOOP_START_TIMEOUT_S) or errors:
        raise RuntimeError(f"the background loop did not start: {errors[:1]!r}")
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if errors:
            raise RuntimeError(f"the background loop failed: {errors[0]!r}")


def paired(clock: Clock, call: Callable[[], object], step: Callable[[bool], bool], device: torch.device,
            sizes: sweeps.Sizes, before: Callable[[], object] | None = None) -> tuple[float, float]:
    """This rank's median time of ``call`` alone and while ``step`` loops (``running``), in alternating blocks:
    a drift of the host's speed during the case (other work starting or ending) biases neither side."""
    alone, busy, repeats = list[float](), list[float](), sizes.paired_repeats // PAIRED_BLOCKS
    for _ in range(PAIRED_BLOCKS):
        alone += clock.times([call], sizes.warmup, repeats, before)
        with running(step, device):
            busy += clock.times([call], sizes.warmup, repeats, before)
            if before is not None:  # every rank's last call has ended before any rank stops its loop
                before()
    return statistics.median(alone), statistics.median(busy)
