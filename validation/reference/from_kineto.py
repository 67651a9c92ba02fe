"""A traced workload's ``RecordedRun`` from the Kineto traces of a reference-model run (torch-free).

    recorded = recorded_from_kineto(sorted(Path("kineto").glob("rank*.json")), workload, "cpu-rank")

The traces are what ``moesim.validation.reference.train --trace --kineto-dir DIR`` writes: one profiled
step per rank, under the labels of moesim's op names. Each rank's time goes to op names by the rules of
``attribution`` (the worker's own in-process rules), with every label's ``OpInfo`` derived from
``workload``'s op graph (``opinfo.ops_of``) instead of the model's parameters; on a GPU trace an op's
seconds are the device time its events launched (``attribute(device=True)``).

Routing per MoE layer:

- dropless (``capacity_factor`` null): from the rows each rank sent each peer in the layer's dispatch
  all-to-all (the one under ``L{n}.dispatch`` that moves rows of ``hidden`` elements), spread evenly over
  that peer's experts, the first experts taking the remainder. Exact with one expert per rank; with more,
  the split among a peer's experts is not in the trace;
- with a capacity: the buffers are padded to the capacity and say nothing about routing, so the routing
  is the routing model's (``moesim.workload.routing.route`` on the workload without a record), not the
  run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from moesim.errors import MoesimError
from moesim.overrides import one_line
from moesim.workload.builder import build_graph
from moesim.workload.config import Workload
from moesim.workload.kineto import CollectiveKind, KinetoRank, read_kineto
from moesim.workload.recorded import RecordedRank, RecordedRouting, RecordedRun
from moesim.workload.routing import route

from .attribution import attribute
from .opinfo import OpInfo, dense_buckets, ops_of


def recorded_from_kineto(paths: Sequence[Path], workload: Workload, device: str) -> RecordedRun:
    """The ``RecordedRun`` of the traces at ``paths`` (one per rank of a ``workload.num_gpus``-rank run of
    ``workload``), on ``device`` (a moesim GPU name). MoesimError with one line for traces that are missing,
    repeated, of another world size, without the profiled step, or that contradict ``workload``."""
    return recorded_from_ranks(read_ranks(paths, workload.num_gpus), workload, device)


def recorded_from_ranks(ranks: Sequence[KinetoRank], workload: Workload, device: str) -> RecordedRun:
    """``recorded_from_kineto`` of traces already read (``read_ranks``)."""
    graph = build_graph(workload, measured=False)
    ops = ops_of(workload, graph)
    names = {op.name for op in graph.ops}
    recorded = [_attributed(rank, ops, names, dense_buckets(graph)) for rank in ranks]
    routing = _dispatched(ranks, workload) if workload.capacity is None else _modelled(workload)
    try:
        return RecordedRun(device=device, world_size=workload.num_gpus, routing=routing, ranks=tuple(recorded))
    except ValidationError as err:
        raise MoesimError(one_line(err, prefix="kineto traces: ")) from None


def read_ranks(paths: Sequence[Path], world_size: int) -> list[KinetoRank]:
    """The traces at ``paths``, one per rank 0..world_size-1, by rank (MoesimError for a missing, repeated or
    foreign rank)."""
    ranks = sorted((read_kineto(path) for path in paths), key=lambda r: r.rank)
    for rank, following in zip(ranks, [*ranks[1:], None], strict=True):
        if rank.world_size != world_size:
            raise MoesimError(f"kineto trace {str(rank.path)!r}: a rank of {rank.world_size}; the workload runs "
                              f"on {world_size} GPUs")
        if following is not None and following.rank == rank.rank:
            raise MoesimError(f"kineto traces: rank {rank.rank} is traced twice ({str(rank.path)!r}, "
                              f"{str(following.path)!r})")
    missing = sorted(set(range(world_size)) - {rank.rank for rank in ranks})
    if missing:
        raise MoesimError(f"kineto traces: one per rank 0..{world_size - 1} expected; rank {missing[0]} is missing")
    return ranks


def _attributed(rank: KinetoRank, ops: dict[str, OpInfo], names: set[str],
                buckets: tuple[tuple[str, int], ...]) -> RecordedRank:
    try:
        step = attribute(rank.roots, ops, names, buckets=buckets, device=bool(rank.device))
    except ValueError as err:
        raise MoesimError(f"kineto trace {str(rank.path)!r}: {err} (profile the step with --trace)") from None
    return RecordedRank(rank=rank.rank, step_s=step.step_s, op_seconds=step.op_seconds,
                        unattributed_s=sum(step.unattributed.values()))


def _dispatched(ranks: Sequence[KinetoRank], workload: Workload) -> tuple[RecordedRouting, ...]:
    """Per MoE layer, each rank's dispatch rows to each peer, spread evenly over the peer's experts."""
    local, hidden = workload.experts_per_rank, workload.model.hidden
    layers = []
    for layer in workload.model.moe_layers:
        label = f"L{layer}.dispatch"
        counts = []
        for rank in ranks:
            dispatch = [c for c in rank.collectives if c.kind is CollectiveKind.ALL_TO_ALL and label in c.labels
                        and c.row_elements == hidden]
            if len(dispatch) != 1:
                raise MoesimError(f"kineto trace {str(rank.path)!r}: {len(dispatch)} all-to-alls of {hidden}-wide "
                                  f"rows under {label!r}; one expected")
            if len(dispatch[0].group) != workload.ep_size:
                raise MoesimError(f"kineto trace {str(rank.path)!r}: {label} runs over {len(dispatch[0].group)} "
                                  f"ranks; the workload's EP groups have {workload.ep_size}")
            counts.append(tuple(share for rows in dispatch[0].sent_rows for share in _spread(rows, local)))
        layers.append(RecordedRouting(layer=layer, counts=tuple(counts), kept=tuple(counts), capacity=None))
    return tuple(layers)


def _spread(rows: int, experts: int) -> tuple[int, ...]:
    base, extra = divmod(rows, experts)
    return tuple(base + (1 if j < extra else 0) for j in range(experts))


def _modelled(workload: Workload) -> tuple[RecordedRouting, ...]:
    """The routing model's counts for ``workload`` (its record, if any, set aside)."""
    modelled = route(workload.model_copy(update={"recorded": None}))
    return tuple(RecordedRouting(layer=layer.layer, counts=layer.counts.tolist(), kept=layer.kept.tolist(),
                                 capacity=layer.capacity) for layer in modelled)
