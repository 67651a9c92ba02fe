"""The collectives of one rank's Kineto trace (``moesim.workload.kineto``): what each moved, with whom.

Two shapes of trace are read:

- NCCL (and any backend that records them): a ``record_param_comms`` op with ``Collective name``,
  ``In msg nelems`` / ``Out msg nelems``, ``In split size`` / ``Out split size``, ``dtype``,
  ``Process Group Name`` / ``Process Group Ranks`` and ``Seq``, the group's own collective counter;
- gloo: the dispatcher op ``c10d::<collective>`` (``alltoall_base_``, ``allreduce_``, ...), whose
  ``Concrete Inputs`` hold the split sizes and ``Input Dims`` / ``Input type`` the tensors. It names no
  process group: the group is the default one when it fits the split sizes, else the first group of
  ``pg_config`` holding this rank that does (so an all-to-all with equal splits over a group smaller than
  the world is taken for the world's). Its sequence number is its issue order among the rank's
  collectives on that group. The op only enqueues the work: the collective ends with the matching
  ``gloo:<collective>`` annotation on gloo's worker thread (the k-th of that kind, by start).

A ``c10d::`` op around a ``record_param_comms`` is the same collective, read once. An all-to-all's rows to
and from each group member are its split sizes (equal shares of the buffer when the lists are empty); a row
is the tensor's trailing dimensions. On a GPU run a collective ends with the last device work it launched.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal, Protocol

from moesim.errors import MoesimError

RECORD_PARAM_COMMS: Final = "record_param_comms"
C10D: Final = "c10d::"
DEFAULT_GROUP: Final = "default_pg"
_NOT_COLLECTIVES: Final = ("wait", "init", "coalesced", "start_coalescing", "end_coalescing", "startcoalescing",
                           "endcoalescing")  # bookkeeping that record_param_comms also records
# element sizes by the names Input type (C++ names) and record_param_comms' dtype (ScalarType names) use
_ELEMENT_BYTES: Final = {"float": 4, "float32": 4, "double": 8, "float64": 8, "bfloat16": 2, "half": 2,
                         "float16": 2, "long": 8, "long int": 8, "int64": 8, "int": 4, "int32": 4, "short": 2,
                         "short int": 2, "int16": 2, "char": 1, "signed char": 1, "byte": 1, "unsigned char": 1,
                         "int8": 1, "uint8": 1, "bool": 1}


class CollectiveKind(StrEnum):
    ALL_TO_ALL = "all_to_all"
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    BROADCAST = "broadcast"
    REDUCE = "reduce"
    GATHER = "gather"
    SCATTER = "scatter"
    BARRIER = "barrier"
    SEND = "send"
    RECV = "recv"


# name prefixes (lower case, without "_" and "nccl:" / "gloo:") -> kind; the longest prefix that fits wins
_KINDS: Final = {"alltoall": CollectiveKind.ALL_TO_ALL, "all_to_all": CollectiveKind.ALL_TO_ALL,
                 "allreduce": CollectiveKind.ALL_REDUCE, "all_reduce": CollectiveKind.ALL_REDUCE,
                 "allgather": CollectiveKind.ALL_GATHER, "all_gather": CollectiveKind.ALL_GATHER,
                 "reduce_scatter": CollectiveKind.REDUCE_SCATTER, "broadcast": CollectiveKind.BROADCAST,
                 "reduce": CollectiveKind.REDUCE, "gather": CollectiveKind.GATHER, "scatter": CollectiveKind.SCATTER,
                 "barrier": CollectiveKind.BARRIER, "monitored_barrier": CollectiveKind.BARRIER,
                 "send": CollectiveKind.SEND, "recv": CollectiveKind.RECV}


@dataclass(frozen=True, slots=True)
class ProcessGroup:
    """A process group of the run (``distributedInfo.pg_config``): its name, description and ranks."""

    name: str
    desc: str
    ranks: tuple[int, ...]


CollectiveKey = tuple[str, int]  # (process group name, sequence number in that group): one collective, every rank


@dataclass(frozen=True, slots=True)
class Collective:
    """One rank's part in a collective. ``sent_rows`` / ``received_rows`` (all-to-all only; empty for other
    kinds) are per member of ``group``, in its order; ``payload_bytes`` is this rank's input buffer;
    ``labels`` the ``user_annotation`` labels around the op, innermost first."""

    kind: CollectiveKind
    group_name: str
    group: tuple[int, ...]
    seq: int
    start_us: float
    end_us: float
    element_bytes: int | None     # None where the trace gives no dtype (gloo's tensor lists)
    row_elements: int
    sent_rows: tuple[int, ...]
    received_rows: tuple[int, ...]
    payload_bytes: float | None
    labels: tuple[str, ...]

    @property
    def key(self) -> CollectiveKey:
        return (self.group_name, self.seq)

    @property
    def sent_bytes(self) -> tuple[int, ...]:
        return tuple(rows * self.row_elements * (self.element_bytes or 0) for rows in self.sent_rows)

    @property
    def received_bytes(self) -> tuple[int, ...]:
        return tuple(rows * self.row_elements * (self.element_bytes or 0) for rows in self.received_rows)


class HostEvent(Protocol):
    """What reading collectives needs of a host event (``moesim.workload.kineto.KinetoEvent``)."""

    @property
    def name(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def start_us(self) -> float: ...
    @property
    def end_us(self) -> float: ...
    @property
    def device_end_us(self) -> float | None: ...
    @property
    def args(self) -> Mapping[str, Any]: ...
    @property
    def children(self) -> Sequence[HostEvent]: ...
    def labels(self) -> Iterator[str]: ...


def read_collectives(roots: Sequence[HostEvent], rank: int, world_size: int, groups: Sequence[ProcessGroup],
                     where: str) -> tuple[Collective, ...]:
    """The collectives under ``roots`` (every thread's top-level host events) in issue order."""
    groups = tuple(groups) or (ProcessGroup("0", DEFAULT_GROUP, tuple(range(world_size))),)
    ops = sorted(_collective_ops(roots), key=lambda e: e.start_us)
    workers = _worker_annotations(roots)
    issued: dict[str, int] = defaultdict(int)
    taken: dict[CollectiveKind, int] = defaultdict(int)
    found = []
    for op in ops:
        parsed = _nccl(op, rank, groups, where) if op.name == RECORD_PARAM_COMMS else _gloo(op, rank, groups, where)
        if parsed is None:
            continue
        kind, group, seq, end = parsed
        seq = issued[group.name] if seq is None else seq
        issued[group.name] = seq + 1
        worker = None
        if op.name != RECORD_PARAM_COMMS:  # gloo: the next worker annotation of this kind
            index, taken[kind] = taken[kind], taken[kind] + 1
            worker = workers[kind][index] if index < len(workers[kind]) else None
        if end is None:
            end = worker.end_us if worker is not None else op.end_us
        found.append(_collective(op, worker, kind, group, seq, end, where))
    return tuple(found)


def _walk(events: Sequence[HostEvent]) -> Iterator[HostEvent]:
    for event in events:
        yield event
        yield from _walk(event.children)


def _collective_ops(roots: Sequence[HostEvent]) -> Iterator[HostEvent]:
    """``record_param_comms`` ops, and ``c10d::`` ops with none inside."""
    for event in _walk(roots):
        if event.category != "cpu_op":
            continue
        if event.name == RECORD_PARAM_COMMS or (event.name.startswith(C10D) and not any(
                inner.name == RECORD_PARAM_COMMS for inner in _walk(event.children))):
            yield event


def _worker_annotations(roots: Sequence[HostEvent]) -> dict[CollectiveKind, list[HostEvent]]:
    """gloo's ``gloo:<collective>`` annotations of its worker threads, per kind, by start."""
    found: dict[CollectiveKind, list[HostEvent]] = defaultdict(list)
    for event in _walk(roots):
        if event.category == "user_annotation" and event.name.startswith("gloo:"):
            kind = _kind(event.name)
            if isinstance(kind, CollectiveKind):
                found[kind].append(event)
    for events in found.values():
        events.sort(key=lambda e: e.start_us)
    return found


def kind_of(name: str, where: str) -> CollectiveKind | None:
    """The kind a collective's name (``c10d::alltoall_base_``, ``all_to_allv``, ``gloo:all_reduce``) gives;
    None for bookkeeping (``wait``, ``init``, coalescing); MoesimError for a name no kind fits."""
    kind = _kind(name)
    if kind == "unknown":
        raise MoesimError(f"{where}: unknown collective {name!r}; known kinds: "
                          f"{', '.join(k.value for k in CollectiveKind)} (add it to moesim.workload.kineto_comms)")
    return kind


def _kind(name: str) -> CollectiveKind | Literal["unknown"] | None:
    short = name.split("::")[-1].split(":")[-1].strip("_").lower()
    if short.startswith(_NOT_COLLECTIVES):
        return None
    fits = [prefix for prefix in _KINDS if short.startswith(prefix)]
    return _KINDS[max(fits, key=len)] if fits else "unknown"


_Parsed = tuple[CollectiveKind, ProcessGroup, int | None, float | None]


def _nccl(op: HostEvent, rank: int, groups: Sequence[ProcessGroup], where: str) -> _Parsed | None:
    args = op.args
    kind = kind_of(str(args.get("Collective name", "")), where)
    if kind is None:
        return None
    name = args.get("Process Group Name")
    named = [group for group in groups if name is not None and group.name == str(name)]
    listed = args.get("Process Group Ranks")
    if listed is not None:
        ranks = tuple(_int_list(listed, where, "Process Group Ranks"))
        group = ProcessGroup(str(name) if name is not None else str(list(ranks)), "", ranks)
    elif named:
        group = named[0]
    else:
        group = _fitting_group(rank, groups, None, where)
    seq = args.get("Seq")
    ends = [e.device_end_us for e in _walk([op]) if e.device_end_us is not None]
    return kind, group, None if seq is None else int(seq), max(ends) if ends else None


def _gloo(op: HostEvent, rank: int, groups: Sequence[ProcessGroup], where: str) -> _Parsed | None:
    kind = kind_of(op.name, where)
    if kind is None:
        return None
    splits = _splits(op, where)[1] if kind is CollectiveKind.ALL_TO_ALL else []
    return kind, _fitting_group(rank, groups, len(splits) or None, where), None, None


def _fitting_group(rank: int, groups: Sequence[ProcessGroup], size: int | None, where: str) -> ProcessGroup:
    """The default group when it holds ``size`` ranks (any number when None), else the first group of
    ``rank`` that does (the largest when None)."""
    fitting = [g for g in groups if rank in g.ranks and (size is None or len(g.ranks) == size)]
    if not fitting:
        raise MoesimError(f"{where}: a collective over {size} ranks, but no process group of rank {rank} "
                          "in distributedInfo.pg_config has that many")
    default = [g for g in fitting if g.desc == DEFAULT_GROUP]
    return default[0] if default else fitting[0] if size is not None else max(fitting, key=lambda g: len(g.ranks))


def _collective(op: HostEvent, worker: HostEvent | None, kind: CollectiveKind, group: ProcessGroup, seq: int,
                end: float, where: str) -> Collective:
    """The sizes of ``op``'s part in the collective (gloo's ``worker`` annotation gives the dtype of a
    tensor list)."""
    size = len(group.ranks)
    shapes = [s for s in (op.args.get("Input Dims") or []) if isinstance(s, list) and s]
    tensors = [s for s in shapes if not isinstance(s[0], list)]
    listed = [t for s in shapes if isinstance(s[0], list) for t in s]
    received_rows, sent_rows = _splits(op, where) if kind is CollectiveKind.ALL_TO_ALL else ([], [])
    if op.name == RECORD_PARAM_COMMS:
        element = element_bytes(str(op.args.get("dtype", "")))
        received_total, sent_total = int(op.args.get("Out msg nelems", 0)), int(op.args.get("In msg nelems", 0))
        row = (sent_total // sum(sent_rows) if sum(sent_rows) else
               math.prod((tensors or listed or [[1]])[0][1:]))
    else:  # c10d::<op>(output, input, ...) or (tensor list, ...)
        element = element_bytes(str((op.args.get("Input type") or [""])[0]))
        if element is None and worker is not None:
            element = element_bytes(str((worker.args.get("Input type") or [""])[0]))
        sent_total = sum(math.prod(t) for t in (tensors[1:2] or tensors[:1] or listed))
        received_total = math.prod(tensors[0]) if tensors else sent_total
        row = math.prod((tensors[1:2] or tensors[:1] or listed or [[1]])[0][1:])
    sent: tuple[int, ...] = ()
    received: tuple[int, ...] = ()
    if kind is CollectiveKind.ALL_TO_ALL:
        if element is None:
            raise MoesimError(f"{where}: an all_to_all of unknown dtype at ts {op.start_us}")
        sent = tuple(sent_rows) or _equal(sent_total // max(row, 1), size, where)
        received = tuple(received_rows) or _equal(received_total // max(row, 1), size, where)
        if len(sent) != size or len(received) != size:
            raise MoesimError(f"{where}: an all_to_all over {size} ranks with {len(sent)} split sizes")
    return Collective(kind, group.name, group.ranks, seq, op.start_us, end, element, row, sent, received,
                      None if element is None else float(sent_total * element), tuple(op.labels()))


def _splits(op: HostEvent, where: str) -> tuple[list[int], list[int]]:
    """(received, sent) rows per peer as the op lists them; empty lists for equal shares."""
    if op.name == RECORD_PARAM_COMMS:
        return (_int_list(op.args.get("Out split size", "[]"), where, "Out split size"),
                _int_list(op.args.get("In split size", "[]"), where, "In split size"))
    concrete = op.args.get("Concrete Inputs") or []
    lists = [value for value in concrete if isinstance(value, str) and value.startswith("[")]
    if len(lists) < 2:
        return [], []
    return _int_list(lists[0], where, "Concrete Inputs"), _int_list(lists[1], where, "Concrete Inputs")


def _equal(rows: int, size: int, where: str) -> tuple[int, ...]:
    if rows % size:
        raise MoesimError(f"{where}: an all_to_all of {rows} rows does not split equally over {size} ranks")
    return (rows // size,) * size


def _int_list(value: Any, where: str, field: str) -> list[int]:
    """``[16, 48]`` given as a list or as its string."""
    if isinstance(value, str):
        text = value.strip().strip("[]").strip()
        try:
            return [int(item) for item in text.split(",")] if text else []
        except ValueError:
            raise MoesimError(f"{where}: {field}: a list of integers expected, got {value!r}") from None
    if isinstance(value, list) and all(isinstance(item, int) for item in value):
        return list(value)
    raise MoesimError(f"{where}: {field}: a list of integers expected, got {value!r}")


def element_bytes(dtype: str) -> int | None:
    """Bytes per element of a dtype as traces name it (``float``, ``c10::BFloat16``, ``Long``,
    ``Float8_e4m3fn``); None for a name that gives none (``TensorList``)."""
    name = dtype.removeprefix("c10::").lower()
    return 1 if name.startswith("float8") else _ELEMENT_BYTES.get(name)
