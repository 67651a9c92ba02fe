"""Kineto (``torch.profiler``) Chrome traces of multi-rank runs, read without torch.

    rank = read_kineto("rank0.json")       # one rank's profile: its events, collectives, process groups
    offsets = align(ranks)                 # a clock offset per rank, from collectives matched across ranks
    traffic = traffic_matrix(ranks, key)   # one matched all-to-all's g x g byte matrix

A trace is what ``prof.export_chrome_trace`` writes (plain or ``.gz``): ``traceEvents`` and, for a
distributed run, ``distributedInfo`` (``rank``, ``world_size``, ``pg_config``). Host events (``cpu_op``,
``user_annotation``, the CUDA runtime's) nest by time containment per (pid, tid), with torch's own rule
(``EventList._populate_cpu_children``); device events (``kernel``, ``gpu_memcpy``, ``gpu_memset``) count
for the host event that launched them (the runtime call of the same ``correlation``, else the ``cpu_op`` of
the same ``External id``). Host events satisfy ``moesim.validation.reference.attribution.ProfiledEvent``:
an autograd node's ``Fwd thread id`` (the profiler's thread number, not a tid) is mapped to the tid whose
forward ops carry the node's sequence numbers. Collectives are read by ``moesim.workload.kineto_comms``.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Final

import numpy as np

from moesim.errors import MoesimError
from moesim.workload.kineto_comms import Collective, CollectiveKey, CollectiveKind, ProcessGroup, read_collectives

HOST_CATEGORIES: Final = frozenset({"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function"})
DEVICE_CATEGORIES: Final = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
LABEL: Final = "user_annotation"
NO_LABEL: Final = "(no label)"
# ops torch.profiler leaves out of its FunctionEvents (autograd.profiler._filter_name)
_FILTERED: Final = frozenset({"[memory]", "[OutOfMemory]", "profiler::_record_function_enter",
                              "profiler::_record_function_enter_new", "profiler::_record_function_exit",
                              "aten::is_leaf", "aten::output_nr", "aten::_version"})
_NODE: Final = "autograd::engine::evaluate_function: "
_US: Final = 1e-6

__all__ = ["Collective", "CollectiveKey", "CollectiveKind", "KinetoEvent", "KinetoRank", "ProcessGroup", "align",
           "compute_seconds", "read_kineto", "traffic_matrix"]


@dataclass(eq=False, slots=True)
class KinetoEvent:
    """One event of a trace, times in µs. A host event's ``children`` are the host events directly inside
    it on its thread (by start); ``device_us`` is the device work it launched itself, ending at
    ``device_end_us`` (None where it launched none)."""

    name: str
    category: str
    pid: int
    thread: int
    start_us: float
    end_us: float
    args: Mapping[str, Any]
    fwd_thread: int = -1
    device_us: float = 0.0
    device_end_us: float | None = None
    parent: KinetoEvent | None = None
    children: list[KinetoEvent] = field(default_factory=list)

    @property
    def sequence_nr(self) -> int:
        return int(self.args.get("Sequence number", -1))

    @property
    def input_shapes(self) -> Sequence[Sequence[int]]:
        shapes = self.args.get("Input Dims", [])
        return shapes if isinstance(shapes, list) else []

    def labels(self) -> Iterator[str]:
        """The ``user_annotation`` labels enclosing this event (itself included), innermost first."""
        event: KinetoEvent | None = self
        while event is not None:
            if event.category == LABEL:
                yield event.name
            event = event.parent


@dataclass(frozen=True, eq=False, slots=True)
class KinetoRank:
    """One rank's trace: ``roots`` are the top-level host events of every thread (by start), ``device``
    the device events (empty for a CPU run), ``collectives`` in issue order."""

    path: Path
    rank: int
    world_size: int
    backend: str | None
    groups: tuple[ProcessGroup, ...]
    roots: tuple[KinetoEvent, ...]
    device: tuple[KinetoEvent, ...]
    collectives: tuple[Collective, ...]
    device_names: tuple[str, ...] = ()   # ``deviceProperties`` names (GPU runs)

    def events(self) -> Iterator[KinetoEvent]:
        """Every host event, depth first."""
        stack = list(reversed(self.roots))
        while stack:
            event = stack.pop()
            yield event
            stack.extend(reversed(event.children))


def read_kineto(path: str | Path) -> KinetoRank:
    """One rank's Chrome trace at ``path``: load, take the events apart, nest them, link device work to
    host events, map forward threads, read the collectives. MoesimError with one line for a file that is
    not a Kineto trace of a distributed run (naming what is missing)."""
    path = Path(path)
    raw = _load(path)
    where = f"kineto trace {str(path)!r}"
    rank, world_size, backend, groups = _distributed(raw, where)
    host, device = _events(raw["traceEvents"], where)
    roots = _nest(host)
    _link_device(host, device)
    _map_forward_threads(host)
    collectives = read_collectives(roots, rank, world_size, groups, where)
    names = tuple(str(d.get("name", "")) for d in raw.get("deviceProperties") or () if isinstance(d, Mapping))
    return KinetoRank(path, rank, world_size, backend, groups, tuple(roots), tuple(device), collectives, names)


def _load(path: Path) -> dict[str, Any]:
    where = f"kineto trace {str(path)!r}"
    if not path.is_file():
        raise MoesimError(f"{where}: no such file")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        raw = json.loads(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MoesimError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("traceEvents"), list):
        raise MoesimError(f"{where}: not a Kineto trace: no 'traceEvents' list (write it with "
                          "prof.export_chrome_trace)")
    return raw


def _distributed(raw: Mapping[str, Any], where: str) -> tuple[int, int, str | None, tuple[ProcessGroup, ...]]:
    """rank, world size, backend and process groups from ``distributedInfo``."""
    info = raw.get("distributedInfo")
    if not isinstance(info, dict):
        raise MoesimError(f"{where}: no 'distributedInfo' (rank, world_size): profile a rank of a "
                          "torch.distributed job")
    for key in ("rank", "world_size"):
        if not isinstance(info.get(key), int):
            raise MoesimError(f"{where}: distributedInfo.{key}: an integer expected, got {info.get(key)!r}")
    rank, world_size = int(info["rank"]), int(info["world_size"])
    if not 0 <= rank < world_size:
        raise MoesimError(f"{where}: distributedInfo.rank: {rank} is not in 0..{world_size - 1}")
    groups = []
    for index, entry in enumerate(info.get("pg_config") or ()):
        if not isinstance(entry, dict) or not isinstance(entry.get("ranks"), list):
            raise MoesimError(f"{where}: distributedInfo.pg_config[{index}]: 'ranks' list expected")
        groups.append(ProcessGroup(str(entry.get("pg_name", index)), str(entry.get("pg_desc", "")),
                                   tuple(int(r) for r in entry["ranks"])))
    backend = info.get("backend")
    return rank, world_size, None if backend is None else str(backend), tuple(groups)


def _events(raw_events: Sequence[Any], where: str) -> tuple[list[KinetoEvent], list[KinetoEvent]]:
    """The complete (``ph`` "X") host and device events; other phases and categories are left out."""
    host: list[KinetoEvent] = []
    device: list[KinetoEvent] = []
    for index, raw in enumerate(raw_events):
        if not isinstance(raw, dict) or raw.get("ph") != "X":
            continue
        category = raw.get("cat")
        if category not in HOST_CATEGORIES and category not in DEVICE_CATEGORIES:
            continue
        missing = [key for key in ("name", "ts", "dur", "pid", "tid") if key not in raw]
        if missing:
            raise MoesimError(f"{where}: traceEvents[{index}] ({category}): no {missing[0]!r}")
        if raw["name"] in _FILTERED:
            continue
        try:
            start, pid, tid = float(raw["ts"]), int(raw["pid"]), int(raw["tid"])
            end = start + float(raw["dur"])
        except (TypeError, ValueError):
            raise MoesimError(f"{where}: traceEvents[{index}] ({category}): ts, dur, pid and tid must be "
                              "numbers") from None
        args = raw["args"] if isinstance(raw.get("args"), dict) else {}
        event = KinetoEvent(str(raw["name"]), str(category), pid, tid, start, end, args)
        (device if category in DEVICE_CATEGORIES else host).append(event)
    return host, device


def _nest(host: list[KinetoEvent]) -> list[KinetoEvent]:
    """Parent every host event by time on its (pid, tid) as torch does: sorted by (start, -end), an event is
    a child of the innermost open event that ends no earlier than it. The roots, by start."""
    by_thread: dict[tuple[int, int], list[KinetoEvent]] = defaultdict(list)
    for event in host:
        by_thread[(event.pid, event.thread)].append(event)
    roots = []
    for events in by_thread.values():
        open_events: list[KinetoEvent] = []
        for event in sorted(events, key=lambda e: (e.start_us, -e.end_us)):
            while open_events and (event.start_us >= open_events[-1].end_us or event.end_us > open_events[-1].end_us):
                open_events.pop()
            if open_events:
                event.parent = open_events[-1]
                open_events[-1].children.append(event)
            else:
                roots.append(event)
            open_events.append(event)
    return sorted(roots, key=lambda e: e.start_us)


def _link_device(host: list[KinetoEvent], device: list[KinetoEvent]) -> None:
    """Add each device event's time to the host event that launched it."""
    by_correlation = {event.args["correlation"]: event for event in host
                      if event.category != "cpu_op" and "correlation" in event.args}
    by_external: dict[Any, KinetoEvent] = {}
    for event in host:
        if event.category == "cpu_op" and "External id" in event.args:
            by_external.setdefault(event.args["External id"], event)
    for work in device:
        launcher = by_correlation.get(work.args.get("correlation")) or by_external.get(work.args.get("External id"))
        if launcher is not None:
            launcher.device_us += work.end_us - work.start_us
            launcher.device_end_us = max(launcher.device_end_us or work.end_us, work.end_us)


def _map_forward_threads(host: list[KinetoEvent]) -> None:
    """Give every host event its ``fwd_thread`` as a tid: an autograd node's ``Fwd thread id`` names the
    profiler's thread number; it maps to the tid whose forward ops hold most of those nodes' sequence
    numbers. Other events (and nodes that match no thread) keep their own tid."""
    forward: dict[int, set[int]] = defaultdict(set)
    nodes: dict[int, list[KinetoEvent]] = defaultdict(list)
    for event in host:
        if event.name.startswith(_NODE) and event.sequence_nr >= 0:
            nodes[int(event.args.get("Fwd thread id", 0))].append(event)
        elif event.sequence_nr >= 0 and not event.args.get("Fwd thread id"):
            forward[event.thread].add(event.sequence_nr)
    for event in host:
        event.fwd_thread = event.thread
    for members in nodes.values():
        votes = Counter({tid: sum(node.sequence_nr in seqs for node in members) for tid, seqs in forward.items()})
        best = votes.most_common(1)
        if best and best[0][1] > 0:
            for node in members:
                node.fwd_thread = best[0][0]


def compute_seconds(rank: KinetoRank) -> dict[str, float]:
    """Seconds of compute per innermost ``user_annotation`` label (``NO_LABEL`` for work under none): on
    a CPU run the ``cpu_op`` time (each moment once, to the innermost op), on a GPU run the device time of
    the work each host event launched, by the label enclosing that event."""
    seconds: dict[str, float] = defaultdict(float)
    gpu = bool(rank.device)
    for event in rank.events():
        label = next(event.labels(), NO_LABEL)
        if gpu:
            spent = event.device_us
        elif event.category == "cpu_op":
            spent = (event.end_us - event.start_us) - sum(c.end_us - c.start_us for c in event.children)
        else:
            continue
        if spent > 0:
            seconds[label] += spent * _US
    return dict(seconds)


def matched(ranks: Sequence[KinetoRank]) -> dict[CollectiveKey, dict[int, Collective]]:
    """Every collective by its key (group, sequence number): rank -> that rank's part."""
    found: dict[CollectiveKey, dict[int, Collective]] = defaultdict(dict)
    for rank in ranks:
        for collective in rank.collectives:
            found[collective.key][rank.rank] = collective
    return dict(found)


def align(ranks: Sequence[KinetoRank]) -> dict[int, float]:
    """A clock offset in µs per rank (``ranks[0]``'s is 0) to add to its times so that collectives matched
    across ranks end together: rank ``r``'s is the median, over the collectives it shares with a rank
    already aligned, of the difference of their end times (ranks are reached breadth first)."""
    if not ranks:
        return {}
    parts = matched(ranks)
    offsets = {ranks[0].rank: 0.0}
    frontier = [ranks[0].rank]
    while frontier:
        known = frontier.pop(0)
        for other in (rank.rank for rank in ranks if rank.rank not in offsets):
            ends = [part[known].end_us - part[other].end_us for part in parts.values()
                    if known in part and other in part]
            if ends:
                offsets[other] = offsets[known] + median(ends)
                frontier.append(other)
    lost = sorted(rank.rank for rank in ranks if rank.rank not in offsets)
    if lost:
        raise MoesimError(f"align: rank {lost[0]} shares no collective with rank {ranks[0].rank} (directly or "
                          "through other ranks): its clock cannot be aligned")
    return offsets


def traffic_matrix(ranks: Sequence[KinetoRank], key: CollectiveKey) -> np.ndarray:
    """``traffic[a, b]``: bytes member ``a`` of the all-to-all ``key`` sent to member ``b`` (members in the
    group's order); every member's trace must be among ``ranks`` and agree with its peers' on every byte."""
    part = matched(ranks).get(key)
    if part is None:
        raise MoesimError(f"traffic_matrix: no collective {key} in these traces")
    first = next(iter(part.values()))
    if first.kind is not CollectiveKind.ALL_TO_ALL:
        raise MoesimError(f"traffic_matrix: collective {key} is an {first.kind.value}, not an all_to_all")
    missing = [member for member in first.group if member not in part]
    if missing:
        raise MoesimError(f"traffic_matrix: collective {key}: the trace of rank {missing[0]} is missing")
    members = first.group
    traffic = np.array([part[member].sent_bytes for member in members], dtype=np.float64)
    received = np.array([part[member].received_bytes for member in members], dtype=np.float64).T
    if traffic.shape != (len(members), len(members)) or not np.array_equal(traffic, received):
        raise MoesimError(f"traffic_matrix: collective {key}: what the members sent and received disagree")
    return traffic
