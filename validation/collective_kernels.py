"""Real collectives for plan tasks (``collective_kernel``), on the pool's tensors (``kernels.TensorPool``).

all_to_all_single with per-peer split sizes from this rank's row (send) and column (receive) of the task's
traffic, diagonal included (a local copy); all_reduce, all_gather_into_tensor, reduce_scatter_tensor on the
payload. A 2DH all-to-all runs as the linear all_to_all_single: on one host both move the same bytes over
the same loopback.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from moesim.plan import Task
from moesim.workload.ops import Op, OpKind

from .kernels import Kernel, TensorPool


def task_traffic(op: Op, task: Task) -> np.ndarray | None:
    """The all-to-all byte matrix of ``task``: its own, else the op's scaled by the task's fraction."""
    assert op.comm is not None, f"{op.name} is a collective without a CommSpec"
    if task.traffic is not None:
        return task.traffic
    if op.comm.traffic is not None:
        return op.comm.traffic * task.fraction
    return None


def a2a_splits(op: Op, task: Task, group: int, member: int, element_bytes: int) -> tuple[list[int], list[int]]:
    """``(input_split_sizes, output_split_sizes)`` in elements for ``member`` of ``group``.

    Input: this member's row of the traffic (what it sends to each peer, itself included); output:
    its column (what each peer sends to it). Without a matrix the payload is split evenly. Every
    member computes a pair's size from the same float, so sender and receiver agree.
    """
    assert op.comm is not None, f"{op.name} is a collective without a CommSpec"
    size = len(op.comm.groups[group])
    traffic = task_traffic(op, task)
    if traffic is None:
        even = op.comm.bytes * task.fraction / size
        matrix = np.full((size, size), even)
    else:
        matrix = traffic[group]
    elements = [[int(float(matrix[a, b]) / element_bytes + 0.5) for b in range(size)] for a in range(size)]
    return elements[member], [elements[a][member] for a in range(size)]


def collective_kernel(op: Op, task: Task, rank: int, pool: TensorPool,
                      group: dist.ProcessGroup | None) -> Kernel:
    """The blocking collective of ``task`` on ``rank`` over ``group`` (the process group of this rank's
    group of ``op`` for the task's stream). A rank outside every group returns at once, as in the engine."""
    assert op.comm is not None, f"{op.name} is a collective without a CommSpec"
    try:
        group_index = op.comm.group_of(rank)
    except KeyError:
        return lambda: None
    members = op.comm.groups[group_index]
    member = members.index(rank)
    if op.kind is OpKind.ALL_TO_ALL:
        element_bytes = torch.empty((), dtype=pool.wire_dtype).element_size()
        send, receive = a2a_splits(op, task, group_index, member, element_bytes)
        inp = pool.get("a2a.in", sum(send), dtype=pool.wire_dtype)
        out = pool.get("a2a.out", sum(receive), dtype=pool.wire_dtype)
        return lambda: dist.all_to_all_single(out, inp, receive, send, group=group)
    element_bytes = torch.empty((), dtype=pool.dtype).element_size()
    size = len(members)
    numel = int(op.comm.bytes * task.fraction / element_bytes + 0.5)
    if op.kind is OpKind.ALL_REDUCE:
        buffer = pool.get("allreduce.buf", numel)
        return lambda: dist.all_reduce(buffer, group=group)
    shard = numel // size
    whole, piece = pool.get("gather.whole", shard * size), pool.get("gather.piece", shard)
    if op.kind is OpKind.ALL_GATHER:
        return lambda: dist.all_gather_into_tensor(whole, piece, group=group)
    if op.kind is OpKind.REDUCE_SCATTER:
        return lambda: dist.reduce_scatter_tensor(piece, whole, group=group)
    raise KeyError(f"{op.name}: no kernel for collective {op.kind.value}")
