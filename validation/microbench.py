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
The JSON follows ``moesim.calibration.measurements.Measurements``. The sweeps live in ``bench_compute``
and ``bench_comm``, their timing machinery in ``bench_timing``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from moesim.calibration import sweeps
from moesim.calibration.measurements import Environment, Measurements
from moesim.dtypes import DType
from moesim.validation.bench_comm import collective_sweeps, interference_sweep
from moesim.validation.bench_compute import (
    compute_sweeps,
    kernel_sweep,
    rendezvous_skew,
    stream_handoff,
    task_overhead,
    woken_under_comm,
)
from moesim.validation.bench_timing import TORCH_DTYPE, Clock
from moesim.validation.dist import environment, finish, init


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
    parser.add_argument("--dtype", choices=[d.value for d in TORCH_DTYPE], default=None,
                        help="compute dtype (default: fp32 on CPU, bf16 on GPU)")
    args = parser.parse_args(argv)
    run(args.out, args.quick, DType(args.dtype) if args.dtype else None)


if __name__ == "__main__":
    main()
