"""Inside a rank: join the job, pin threads, describe the environment."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RankContext:
    rank: int
    world_size: int
    backend: str          # "gloo" (CPU) or "nccl" (GPU)
    device: torch.device


def init(backend: str | None = None) -> RankContext:
    """Join the torchrun job (env:// rendezvous). NCCL on a GPU when one is there, else gloo; the rank
    uses ``MOESIM_THREADS_PER_RANK`` intra-op threads (1 if unset) and, where moesim's launcher set that
    share, runs on cores of its own (``pin_cores``; ``MOESIM_PIN=0`` leaves the OS to place it), so ranks
    share the host without oversubscribing it."""
    use_gpu = torch.cuda.is_available() if backend is None else backend == "nccl"
    chosen = backend or ("nccl" if use_gpu else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_gpu:
        torch.cuda.set_device(local_rank)
    threads = int(os.environ.get("MOESIM_THREADS_PER_RANK", "1"))
    if "MOESIM_THREADS_PER_RANK" in os.environ and os.environ.get("MOESIM_PIN", "1") != "0":
        pin_cores(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), threads)
    torch.set_num_threads(threads)
    if not dist.is_initialized():
        dist.init_process_group(chosen)
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    return RankContext(dist.get_rank(), dist.get_world_size(), chosen, device)


def pin_cores(local_rank: int, local_world: int, threads: int) -> tuple[int, ...] | None:
    """Bind this process (and every thread it starts later: the communication streams' threads, gloo's)
    to cores of its own: the ``local_rank``-th block of ``threads`` among the cores it may use. The
    engine's host model is a rank's compute and collectives sharing that rank's cores; unpinned, the OS
    also lets two ranks' compute threads share one core for a while, a slowdown no schedule causes.
    None (nothing changed) where the blocks would not fit or the OS has no affinity call."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if threads < 1 or local_world * threads > len(allowed):
        return None
    mine = tuple(allowed[local_rank * threads:(local_rank + 1) * threads])
    os.sched_setaffinity(0, mine)
    return mine


def environment(ctx: RankContext) -> dict[str, Any]:
    """What a measurement depends on, recorded beside it."""
    devices = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
               if ctx.device.type == "cuda" else [platform.processor() or platform.machine()])
    return {
        "torch": torch.__version__,
        "backend": ctx.backend,
        "world_size": ctx.world_size,
        "devices": devices,
        "threads_per_rank": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def finish() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
