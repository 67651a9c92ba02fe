"""Start a local torch.distributed job: ``torchrun --nproc-per-node N -m MODULE ARGS`` on loopback.

The same worker modules run under torchrun on a cluster (see slurm_example.sh); this helper is what
`moesim validate` and `moesim calibrate` use on one machine. Torch is not imported here: the parent
process only spawns.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

from moesim.errors import MoesimError

LOOPBACK = "127.0.0.1"

# glibc hands large freed blocks back to the OS and trims the heap, so the next allocation of the
# same size page-faults: kernels then time the kernel's page-fault path, not their own work. Keep
# freed memory in the process (as PyTorch's CPU benchmarks do with jemalloc or tcmalloc). Calibration
# and validation run under the same setting.
_STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def torchrun(module: str, args: Sequence[str], nproc: int, *, timeout_s: float,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` as ``nproc`` ranks on this machine and wait for them.

    Each rank gets ``OMP_NUM_THREADS`` = its share of the cores (at least 1), so ranks do not
    oversubscribe them. A non-zero exit raises MoesimError with the last lines of the ranks' output.
    """
    if nproc < 1:
        raise MoesimError(f"nproc: need at least 1 rank, got {nproc}")
    threads = max(1, (os.cpu_count() or 1) // nproc)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-addr={LOOPBACK}", f"--master-port={free_port()}", "-m", module, *args]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MOESIM_THREADS_PER_RANK": str(threads),
                   "PYTHONUNBUFFERED": "1", **_STEADY_MALLOC, **(env or {})}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=environment)
    except subprocess.TimeoutExpired:
        raise MoesimError(f"{module}: the {nproc}-rank run did not finish in {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise MoesimError(f"{module}: the {nproc}-rank run failed (exit {done.returncode}): {_reason(done)}")
    return done


def _reason(done: subprocess.CompletedProcess[str]) -> str:
    """The workers' own one-line ``error: ...`` if one printed it, else the last lines of output."""
    lines = f"{done.stdout}\n{done.stderr}".strip().splitlines()
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    return errors[-1] if errors else " | ".join(lines[-3:])
