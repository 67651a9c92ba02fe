"""Microbenchmarks for calibration, run on every rank of a torchrun job; rank 0 writes the JSON.

    torchrun --nproc-per-node N -m moesim.validation.microbench --out PATH [--quick] [--dtype fp32]

Every rank runs every sweep at the same time as the others (they share the host's cores and memory
as the ranks of a real run do). Each case: warm-up, then ``repeats`` timed calls (perf_counter on a
CPU, CUDA events on a GPU), each rank's median; compute cases keep the median over ranks,
collectives the slowest rank. Sweeps: matmul, elementwise add, attention, layernorm; all-to-all and
all-reduce at every group size (powers of two up to the world size, groups side by side);
interference: a matmul timed alone, then while a loop of collectives runs in a second thread on a
second process group. The JSON follows ``moesim.calibration.measurements.Measurements``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from moesim import units
from moesim.calibration.measurements import (
    AttentionSample,
    CollectiveSample,
    ElementwiseSample,
    Environment,
    InterferenceSample,
    LayernormSample,
    MatmulSample,
    Measurements,
)
from moesim.dtypes import DType
from moesim.validation.dist import RankContext, environment, finish, init
from moesim.workload.ops import OpKind

_TORCH_DTYPE = {DType.FP32: torch.float32, DType.BF16: torch.bfloat16, DType.FP16: torch.float16}
_WIRE = torch.float32  # collectives move float32 words; only their bytes matter
_INTERFERENCE_REPEATS = 20
_COMM_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Sizes:
    """What one run measures."""

    matmul: tuple[tuple[int, int, int], ...]
    elementwise: tuple[int, ...]
    attention: tuple[tuple[int, int, int, int], ...]   # batch, heads, seq, head_dim
    layernorm: tuple[tuple[int, int], ...]             # tokens, hidden
    collective_bytes: tuple[int, ...]
    interference: tuple[tuple[int, int, int], ...]     # matmul shapes, each under both collectives
    interference_bytes: int
    warmup: int
    repeats: int


def sizes_for(device: str, quick: bool) -> Sizes:
    """Sweeps from launch-bound to rate-bound sizes: a CPU rank's caches, a GPU's HBM and NVLink."""
    if device == "cuda":
        return Sizes(
            matmul=tuple((s, s, s) for s in (256, 512, 1024, 2048, 4096, 8192))
            + ((16384, 1024, 4096), (1, 8192, 8192)),
            elementwise=(10_000, 100_000, 1_000_000, 10_000_000, 64_000_000) + (() if quick else (256_000_000,)),
            attention=((8, 16, 1024, 64), (4, 16, 2048, 128), (2, 32, 4096, 128)),
            layernorm=((4096, 1024), (16384, 4096), (65536, 8192)),
            collective_bytes=tuple(4 * 1024 * 4**i for i in range(9 if quick else 10)),  # 4 KB .. 1 GB
            interference=((8192, 8192, 8192),),
            interference_bytes=64 * units.MIB,
            warmup=3 if quick else 5,
            repeats=10 if quick else 30,
        )
    return Sizes(
        matmul=tuple((s, s, s) for s in (32, 64, 128, 256, 384, 512) + (() if quick else (768, 1024)))
        + ((1024, 128, 256),),
        elementwise=(256, 4096, 65_536, 1_048_576, 4_194_304) + (() if quick else (16_777_216,)),
        attention=((1, 4, 128, 64), (1, 8, 256, 64), (2, 8, 256, 64)) + (() if quick else ((1, 8, 512, 64),)),
        layernorm=((64, 256), (512, 1024), (2048, 1024)) + (() if quick else ((4096, 2048),)),
        collective_bytes=tuple(1024 * 8**i for i in range(5 if quick else 6)),
        interference=((256, 256, 256),) if quick else ((256, 256, 256), (512, 512, 512)),
        interference_bytes=units.MIB,
        warmup=2 if quick else 3,
        repeats=5 if quick else 15,
    )


class Clock:
    """Times calls on one device: perf_counter on a CPU, CUDA events on the current stream of a GPU."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"

    def times(self, call: Callable[[], object], warmup: int, repeats: int,
              before: Callable[[], object] | None = None) -> list[float]:
        """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones; ``before`` runs untimed
        ahead of each call (e.g. a barrier, so a collective starts together on every rank)."""
        for _ in range(warmup):
            call()
        self._sync()
        seconds = []
        for _ in range(repeats):
            if before is not None:
                before()
            seconds.append(self._time_one(call))
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

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()


def _median_over_ranks(value: float) -> float:
    return statistics.median(_gathered(value))


def _gathered(value: float) -> list[float]:
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    return [float(v) for v in everyone]


def _compute_case(clock: Clock, sizes: Sizes, call: Callable[[], object]) -> tuple[float, tuple[float, ...]]:
    """(median over ranks, each rank's median) of ``call``, every rank timing at the same moment."""
    dist.barrier()
    mine = statistics.median(clock.times(call, sizes.warmup, sizes.repeats))
    ranks = tuple(_gathered(mine))
    return statistics.median(ranks), ranks


def _gemm(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device) -> Callable[[], object]:
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    return partial(torch.mm, a, b, out=torch.empty(m, n, dtype=dtype, device=device))


def compute_sweeps(ctx: RankContext, clock: Clock, sizes: Sizes, dtype: DType) -> dict[str, list[Any]]:
    """The four compute sweeps as samples (see ``measurements`` for their FLOP / byte conventions)."""
    torch_dtype, dev = _TORCH_DTYPE[dtype], ctx.device
    out: dict[str, list[Any]] = {"matmul": [], "elementwise": [], "attention": [], "layernorm": []}
    for m, n, k in sizes.matmul:
        seconds, ranks = _compute_case(clock, sizes, _gemm(m, n, k, torch_dtype, dev))
        out["matmul"].append(MatmulSample(m=m, n=n, k=k, dtype=dtype, seconds=seconds, rank_seconds=ranks))
    for numel in sizes.elementwise:
        x, y, z = (torch.randn(numel, dtype=torch_dtype, device=dev) for _ in range(3))
        seconds, ranks = _compute_case(clock, sizes, partial(torch.add, x, y, out=z))
        out["elementwise"].append(ElementwiseSample(numel=numel, dtype=dtype, seconds=seconds, rank_seconds=ranks))
    for batch, heads, seq, dim in sizes.attention:
        q, kk, v = (torch.randn(batch, heads, seq, dim, dtype=torch_dtype, device=dev) for _ in range(3))
        seconds, ranks = _compute_case(clock, sizes, partial(F.scaled_dot_product_attention, q, kk, v))
        out["attention"].append(AttentionSample(batch=batch, heads=heads, seq=seq, head_dim=dim, dtype=dtype,
                                                seconds=seconds, rank_seconds=ranks))
    for tokens, hidden in sizes.layernorm:
        x = torch.randn(tokens, hidden, dtype=torch_dtype, device=dev)
        w, bias = torch.ones(hidden, dtype=torch_dtype, device=dev), torch.zeros(hidden, dtype=torch_dtype, device=dev)
        seconds, ranks = _compute_case(clock, sizes, partial(F.layer_norm, x, (hidden,), w, bias))
        out["layernorm"].append(LayernormSample(tokens=tokens, hidden=hidden, dtype=dtype, seconds=seconds,
                                                rank_seconds=ranks))
    return out


def group_sizes(world: int) -> list[int]:
    """Powers of two from 2 up to the world size, and the world size itself."""
    sizes = [g for g in (2**i for i in range(1, world.bit_length())) if world % g == 0 and g < world]
    return sizes + ([world] if world >= 2 else [])


def _my_group(ctx: RankContext, size: int) -> Any:
    """This rank's group of ``size`` consecutive ranks (every rank creates every group, in order)."""
    if size == ctx.world_size:
        return dist.group.WORLD
    mine = None
    for start in range(0, ctx.world_size, size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= ctx.rank < start + size:
            mine = group
    return mine


def _collective(kind: OpKind, numel: int, device: torch.device, group: Any) -> Callable[[], object]:
    send = torch.zeros(numel, dtype=_WIRE, device=device)
    if kind is OpKind.ALL_TO_ALL:
        recv = torch.empty_like(send)
        return lambda: dist.all_to_all_single(recv, send, group=group)
    return lambda: dist.all_reduce(send, group=group)


def collective_sweeps(ctx: RankContext, clock: Clock, sizes: Sizes) -> list[CollectiveSample]:
    """All-to-all and all-reduce at every group size; ``bytes_per_rank`` rounded to whole equal chunks."""
    samples = []
    word = torch.tensor([], dtype=_WIRE).element_size()
    for size in group_sizes(ctx.world_size):
        group = _my_group(ctx, size)
        for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
            for nbytes in sizes.collective_bytes:
                numel = max(size, nbytes // word // size * size)
                call = _collective(kind, numel, ctx.device, group)
                mine = statistics.median(clock.times(call, sizes.warmup, sizes.repeats, before=dist.barrier))
                ranks = tuple(_gathered(mine))
                samples.append(CollectiveSample(kind=kind, group_size=size, bytes_per_rank=numel * word,
                                                seconds=max(ranks), rank_seconds=ranks))
    return samples


class _CommLoop(threading.Thread):
    """Collectives back to back on ``group`` until every rank has asked to stop.

    Every call carries each rank's stop flag (the first word of each all-to-all chunk, or the first
    word of the all-reduce buffer, summed), so all ranks see the same flags in the same iteration and
    leave the loop together: a rank's compute is never left without communication while others wait.
    """

    def __init__(self, ctx: RankContext, group: Any, kind: OpKind, numel: int) -> None:
        super().__init__(daemon=True)
        self._ctx, self._group, self._kind = ctx, group, kind
        self._send = torch.zeros(numel, dtype=_WIRE, device=ctx.device)
        self._recv = torch.zeros_like(self._send)
        self.running, self.stop = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self._ctx.device.type == "cuda":
                torch.cuda.set_device(self._ctx.device)
                with torch.cuda.stream(torch.cuda.Stream()):
                    self._loop()
            else:
                self._loop()
        except BaseException as err:  # reported by the main thread
            self.error = err
            self.running.set()

    def _loop(self) -> None:
        world = self._ctx.world_size
        while True:
            flag = 1.0 if self.stop.is_set() else 0.0
            if self._kind is OpKind.ALL_TO_ALL:
                self._send.view(world, -1)[:, 0] = flag
                dist.all_to_all_single(self._recv, self._send, group=self._group)
                stopping = self._recv.view(world, -1)[:, 0].sum().item()
            else:
                self._send[0] = flag
                dist.all_reduce(self._send, group=self._group)
                stopping = self._send[0].item()
            self.running.set()
            if stopping >= world:
                return


def interference_sweep(ctx: RankContext, clock: Clock, sizes: Sizes, dtype: DType) -> list[InterferenceSample]:
    """Each matmul timed alone, then while a collective loop runs on a second process group."""
    if ctx.world_size < 2:
        return []
    comm_group = dist.new_group(list(range(ctx.world_size)))
    torch_dtype, samples = _TORCH_DTYPE[dtype], []
    word = torch.tensor([], dtype=_WIRE).element_size()
    numel = max(ctx.world_size, sizes.interference_bytes // word // ctx.world_size * ctx.world_size)
    repeats = max(sizes.repeats, _INTERFERENCE_REPEATS)
    for m, n, k in sizes.interference:
        call = _gemm(m, n, k, torch_dtype, ctx.device)
        for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
            dist.barrier()
            alone = statistics.median(clock.times(call, sizes.warmup, repeats))
            busy = statistics.median(_while_communicating(ctx, comm_group, kind, numel, clock, call, repeats))
            samples.append(InterferenceSample(m=m, n=n, k=k, dtype=dtype, kind=kind, bytes_per_rank=numel * word,
                                              seconds_alone=_median_over_ranks(alone),
                                              seconds_with_comm=_median_over_ranks(busy)))
    return samples


def _while_communicating(ctx: RankContext, group: Any, kind: OpKind, numel: int, clock: Clock,
                         call: Callable[[], object], repeats: int) -> list[float]:
    loop = _CommLoop(ctx, group, kind, numel)
    loop.start()
    if not loop.running.wait(_COMM_START_TIMEOUT_S) or loop.error is not None:
        raise RuntimeError(f"the background {kind.value} loop did not start: {loop.error!r}")
    try:
        return clock.times(call, 1, repeats)
    finally:
        loop.stop.set()
        loop.join()
        if loop.error is not None:
            raise RuntimeError(f"the background {kind.value} loop failed: {loop.error!r}")


def _environment(ctx: RankContext) -> Environment:
    info = environment(ctx)
    known = {"torch", "backend", "world_size", "devices", "threads_per_rank"}
    details = {key: value for key, value in info.items()
               if key not in known and (value is None or isinstance(value, str | int | float))}
    return Environment(torch=str(info["torch"]), backend=str(info["backend"]),
                       device="gpu" if ctx.device.type == "cuda" else "cpu", world_size=ctx.world_size,
                       ranks_per_host=int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size)),
                       devices=tuple(str(d) for d in info.get("devices", ())),
                       threads_per_rank=int(info.get("threads_per_rank", 1)), details=details)


def run(out: Path, quick: bool, dtype: DType | None) -> Measurements:
    """Every sweep, on every rank of the job (all ranks call this); rank 0 writes ``out``."""
    ctx = init()
    sizes = sizes_for(ctx.device.type, quick)
    chosen = dtype or (DType.BF16 if ctx.device.type == "cuda" else DType.FP32)
    clock = Clock(ctx.device)
    measured_at = datetime.now(UTC)
    compute = compute_sweeps(ctx, clock, sizes, chosen)
    collectives = collective_sweeps(ctx, clock, sizes)
    interference = interference_sweep(ctx, clock, sizes, chosen)
    result = Measurements(measured_at=measured_at, environment=_environment(ctx), warmup=sizes.warmup,
                          repeats=sizes.repeats, matmul=tuple(compute["matmul"]),
                          elementwise=tuple(compute["elementwise"]), attention=tuple(compute["attention"]),
                          layernorm=tuple(compute["layernorm"]), collectives=tuple(collectives),
                          interference=tuple(interference))
    if ctx.rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.model_dump_json(indent=1), encoding="utf-8")
    finish()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moesim.validation.microbench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file rank 0 writes")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (well under 30 s on 2 CPU cores)")
    parser.add_argument("--dtype", choices=[d.value for d in _TORCH_DTYPE], default=None,
                        help="compute dtype (default: fp32 on CPU, bf16 on GPU)")
    args = parser.parse_args(argv)
    run(args.out, args.quick, DType(args.dtype) if args.dtype else None)


if __name__ == "__main__":
    main()
