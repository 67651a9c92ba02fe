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
    uses ``MOESIM_THREADS_PER_RANK`` intra-op threads so ranks share the cores without oversubscribing."""
    use_gpu = torch.cuda.is_available() if backend is None else backend == "nccl"
    chosen = backend or ("nccl" if use_gpu else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_gpu:
        torch.cuda.set_device(local_rank)
    torch.set_num_threads(int(os.environ.get("MOESIM_THREADS_PER_RANK", "1")))
    if not dist.is_initialized():
        dist.init_process_group(chosen)
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    return RankContext(dist.get_rank(), dist.get_world_size(), chosen, device)


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
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def finish() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
