"""Chrome Trace Event JSON of a Timeline, for Perfetto (ui.perfetto.dev) or chrome://tracing.

One process per simulated rank (pid = rank), one thread per stream (tid = the stream's index in
``STREAM_ORDER``), one complete (``X``) event per span, and flow arrows for cross-stream
dependencies on one rank: an ``s`` event at the producer's end on its track, an ``f`` event with
``bp: "e"`` at the consumer's start on its track.

Perfetto binds a flow event to the slice open on its track at its timestamp, and at a tie it
opens slices first. An ``s`` exactly at the producer's end would therefore bind to the next task
on that stream whenever it starts back to back (the common case on a compute stream), so the ``s``
sits one nanosecond (the export's resolution) before the producer's end, inside it. Each flow
event also directly follows the ``X`` event it binds to, for viewers that break ties by file order.

The same timeline gives the same bytes: events are emitted in a fixed order, times are rounded to
nanoseconds, and the JSON is written with sorted keys.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from moesim.plan import STREAM_ORDER, StreamKind
from moesim.timeline import Span, Timeline
from moesim.units import to_us

_TID: Mapping[StreamKind, int] = MappingProxyType({stream: tid for tid, stream in enumerate(STREAM_ORDER)})

_US_DECIMALS = 3  # nanosecond resolution; fixed so that output bytes do not depend on float noise
_TICK_US = 10.0 ** -_US_DECIMALS
_FLOW_CATEGORY = "dependency"


def chrome_trace(timeline: Timeline) -> dict[str, Any]:
    """The trace as a JSON-ready dict: ``traceEvents``, ``displayTimeUnit`` and ``otherData``."""
    spans = sorted(timeline.spans, key=_track_order)
    events = [*_metadata_events(timeline, spans), *_span_and_flow_events(timeline, spans)]
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "schedule": timeline.schedule,
            "source": timeline.source,
            "num_ranks": timeline.num_ranks,
            "represents": {str(rank): [int(r) for r in timeline.represents[rank]] for rank in timeline.ranks},
            "makespan_us": _us(timeline.makespan),
            "meta": _jsonable(timeline.meta),
        },
    }


def write_chrome_trace(timeline: Timeline, path: str | Path) -> Path:
    """Write ``chrome_trace(timeline)`` to ``path`` (overwriting it) and return the path."""
    target = Path(path)
    target.write_text(json.dumps(chrome_trace(timeline), sort_keys=True, separators=(",", ":")) + "\n")
    return target


def stream_tid(stream: StreamKind) -> int:
    """The thread id of a stream: its index in ``STREAM_ORDER``."""
    return _TID[stream]


def _track_order(span: Span) -> tuple[int, int, float, float, int]:
    return span.rank, stream_tid(span.stream), span.start, span.end, span.task


def _metadata_events(timeline: Timeline, spans: Sequence[Span]) -> list[dict[str, object]]:
    streams_of: dict[int, set[StreamKind]] = {rank: set() for rank in timeline.ranks}
    for span in spans:
        streams_of.setdefault(span.rank, set()).add(span.stream)
    events: list[dict[str, object]] = []
    for rank in sorted(streams_of):
        stands_for = len(timeline.represents.get(rank, (rank,)))
        label = f"rank {rank}" + (f" (represents {stands_for} ranks)" if stands_for > 1 else "")
        events.append(_meta("process_name", rank, 0, {"name": label}))
        events.append(_meta("process_sort_index", rank, 0, {"sort_index": rank}))
        for stream in sorted(streams_of[rank], key=stream_tid):
            tid = stream_tid(stream)
            events.append(_meta("thread_name", rank, tid, {"name": stream.value}))
            events.append(_meta("thread_sort_index", rank, tid, {"sort_index": tid}))
    return events


def _meta(name: str, pid: int, tid: int, args: dict[str, object]) -> dict[str, object]:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _span_and_flow_events(timeline: Timeline, spans: Sequence[Span]) -> list[dict[str, object]]:
    """Each span's ``X`` event, followed by the flow ends that bind to it."""
    starts_of: dict[int, list[dict[str, object]]] = {}
    finishes_of: dict[int, list[dict[str, object]]] = {}
    for flow_id, (producer, consumer) in enumerate(_cross_stream_arrows(timeline, spans)):
        name = f"{spans[producer].name} -> {spans[consumer].name}"
        starts_of.setdefault(producer, []).append(
            _flow("s", flow_id, name, spans[producer], _just_before_end(spans[producer])))
        finishes_of.setdefault(consumer, []).append(
            {**_flow("f", flow_id, name, spans[consumer], _us(spans[consumer].start)), "bp": "e"})
    events: list[dict[str, object]] = []
    for index, span in enumerate(spans):
        events.append(_complete_event(span))
        events.extend(finishes_of.get(index, ()))
        events.extend(starts_of.get(index, ()))
    return events


def _cross_stream_arrows(timeline: Timeline, spans: Sequence[Span]) -> list[tuple[int, int]]:
    """(producer, consumer) indices into ``spans`` of each dependency between tasks that ran on
    different streams of one rank.

    Consumers in ``spans`` order, each one's dependencies in the plan's order; a task with several
    spans on one rank (a measured rerun) is represented by its earliest.
    """
    ran: dict[tuple[int, int], int] = {}
    for index in sorted(range(len(spans)), key=lambda i: (spans[i].start, spans[i].end, i)):
        ran.setdefault((spans[index].rank, spans[index].task), index)
    arrows = []
    for index, consumer in enumerate(spans):
        deps = timeline.task_deps[consumer.task] if 0 <= consumer.task < len(timeline.task_deps) else ()
        for dep in deps:
            producer = ran.get((consumer.rank, dep))
            if producer is not None and spans[producer].stream is not consumer.stream:
                arrows.append((producer, index))
    return arrows


def _complete_event(span: Span) -> dict[str, object]:
    return {
        "name": span.name,
        "cat": span.phase.value,
        "ph": "X",
        "ts": _us(span.start),
        "dur": round(_us(span.end) - _us(span.start), _US_DECIMALS),
        "pid": int(span.rank),
        "tid": stream_tid(span.stream),
        "args": {
            "task": int(span.task),
            "op": int(span.op),
            "kind": span.kind.value,
            "phase": span.phase.value,
            "layer": None if span.layer is None else int(span.layer),
            "flops": float(span.flops),
            "bytes": float(span.bytes),
        },
    }


def _flow(phase: str, flow_id: int, name: str, span: Span, ts: float) -> dict[str, object]:
    return {"name": name, "cat": _FLOW_CATEGORY, "ph": phase, "id": flow_id, "ts": ts,
            "pid": int(span.rank), "tid": stream_tid(span.stream)}


def _just_before_end(span: Span) -> float:
    """One tick before the span's end, but not before its start: a timestamp inside the span."""
    return max(_us(span.start), round(_us(span.end) - _TICK_US, _US_DECIMALS))


def _us(seconds: float) -> float:
    return round(to_us(seconds), _US_DECIMALS)


def _jsonable(value: object) -> object:
    """Plain JSON types; anything else becomes its ``str`` (meta is free-form)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)
