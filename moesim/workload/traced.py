"""Traced workload files: a model run for real, written as a file that goes wherever a preset goes.

    moesim trace --model tiny-moe-a --out tiny.json          # run the reference model, write the file
    moesim run --model tiny.json --hardware cpu-local --nodes 1

A file is JSON: ``format`` "moesim-workload" and ``version`` 1; the ``model`` and ``training`` sections the
run used (the YAML presets' schema); ``recorded``: the device and world size it ran on, the routing it
recorded per MoE layer and each rank's measured seconds per op of moesim's graph (``RecordedRun``); and
``ops``: that graph, every op with its kind, phase, layer, shapes, dependencies (by name), FLOPs, bytes and
measured seconds per rank, so the file reads on its own. Reading rebuilds the graph from the configuration
and the recorded routing and checks it against ``ops``: a file that does not match (edited by hand, or
written by a moesim whose graph differs) is refused with one line, as is an unknown format or version.
A traced workload fixes its model, training and world size: ``--set model.*`` / ``training.*`` are refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from moesim.errors import MoesimError
from moesim.files import write_text_atomically
from moesim.overrides import one_line
from moesim.workload.builder import build_graph
from moesim.workload.config import ModelConfig, TrainingConfig, Workload
from moesim.workload.ops import OpGraph, OpKind, Phase
from moesim.workload.recorded import RecordedRun

FORMAT: Final = "moesim-workload"
VERSION: Final = 1
_FILE = ConfigDict(frozen=True, extra="forbid")


class TracedOp(BaseModel):
    """One op of the traced workload's graph, as written in the file."""

    model_config = _FILE

    name: str
    kind: OpKind
    phase: Phase
    layer: int | None
    dims: dict[str, int]
    deps: tuple[str, ...]
    flops: float
    mem_bytes: float
    measured_s: tuple[float, ...] | None


class TraceSource(BaseModel):
    """How the file was made."""

    model_config = _FILE

    tool: str                     # "moesim trace"
    traced_at: datetime
    torch: str | None = None
    backend: str | None = None
    steps: int | None = None      # timed steps of the run the trace followed
    median_step_s: float | None = None
    step_times_s: tuple[float, ...] = ()  # those steps' times (the slowest rank's), before the profiled ones


class TracedWorkloadFile(BaseModel):
    """The whole file (see the module docstring)."""

    model_config = _FILE

    format: Literal["moesim-workload"]
    version: Literal[1]
    name: str
    description: str = ""
    source: TraceSource
    model: ModelConfig
    training: TrainingConfig
    recorded: RecordedRun
    ops: tuple[TracedOp, ...]


def is_traced(model: str | Path) -> bool:
    """Whether ``--model`` names a traced workload file (a ``.json`` path)."""
    return Path(model).suffix == ".json"


def read_traced(path: str | Path) -> TracedWorkloadFile:
    """The file at ``path``, validated; MoesimError with one line for anything wrong."""
    path = Path(path)
    where = f"model {str(path)!r}"
    if not path.is_file():
        raise MoesimError(f"{where}: no such file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MoesimError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise MoesimError(f"{where}: format: expected {FORMAT!r} (a file written by moesim trace)")
    if raw.get("version") != VERSION:
        raise MoesimError(f"{where}: version: {raw.get('version')!r} is not supported; allowed: {VERSION}")
    try:
        return TracedWorkloadFile.model_validate(raw)
    except ValidationError as err:
        raise MoesimError(one_line(err, prefix=f"{path.name}: ")) from None


def load_traced(path: str | Path, *, num_gpus: int, overrides: Mapping[str, Any] | None = None) -> Workload:
    """The Workload of a traced file for ``num_gpus`` GPUs (which must be its world size); its graph must
    match the file's ``ops``."""
    if overrides:
        first = next(iter(overrides))
        raise MoesimError(f"{first}: a traced workload fixes its model and training; trace again with --set instead")
    traced = read_traced(path)
    try:
        workload = Workload(model=traced.model, training=traced.training, num_gpus=num_gpus, preset=traced.name,
                            recorded=traced.recorded)
    except ValidationError as err:
        raise MoesimError(one_line(err, prefix=f"{Path(path).name}: ")) from None
    mismatch = _first_difference(traced.ops, ops_of(build_graph(workload)))
    if mismatch:
        raise MoesimError(f"{Path(path).name}: ops do not match the graph of its model config ({mismatch}); "
                          "trace it again with this moesim")
    return workload


def ops_of(graph: OpGraph) -> tuple[TracedOp, ...]:
    """``graph``'s ops as the file writes them."""
    names = [op.name for op in graph.ops]
    return tuple(TracedOp(name=op.name, kind=op.kind, phase=op.phase, layer=op.layer, dims=dict(op.dims),
                          deps=tuple(names[d] for d in op.deps), flops=op.flops, mem_bytes=op.mem_bytes,
                          measured_s=op.measured_s) for op in graph.ops)


def write_traced(path: str | Path, *, name: str, workload: Workload, source: TraceSource,
                 description: str = "") -> TracedWorkloadFile:
    """Write ``workload`` (which must carry ``recorded``) as a traced file; whole or not at all."""
    if workload.recorded is None:
        raise MoesimError("write_traced: the workload has no recorded run")
    traced = TracedWorkloadFile(format=FORMAT, version=VERSION, name=name, description=description, source=source,
                                model=workload.model, training=workload.training, recorded=workload.recorded,
                                ops=ops_of(build_graph(workload)))
    write_text_atomically(Path(path), json.dumps(traced.model_dump(mode="json"), indent=1) + "\n")
    return traced


def _first_difference(written: tuple[TracedOp, ...], built: tuple[TracedOp, ...]) -> str:
    """The first op where the file and the rebuilt graph differ (measured times aside), or ''."""
    if len(written) != len(built):
        return f"{len(written)} ops written, {len(built)} built"
    fields = ("name", "kind", "phase", "layer", "dims", "deps")
    for mine, theirs in zip(written, built, strict=True):
        for field in fields:
            if getattr(mine, field) != getattr(theirs, field):
                return f"op {mine.name}: {field}"
        for field in ("flops", "mem_bytes"):
            if abs(getattr(mine, field) - getattr(theirs, field)) > 1e-9 * max(1.0, abs(getattr(theirs, field))):
                return f"op {mine.name}: {field}"
    return ""


def recorded_from_reference(result: Mapping[str, Any], device: str) -> RecordedRun:
    """The ``RecordedRun`` of a reference-model run's JSON (``moesim.validation.reference.train --trace``:
    ``world_size`` and ``trace`` with per-rank ``step_s``, ``op_seconds`` and ``unattributed``, and
    ``routing``), on ``device`` (a moesim GPU name)."""
    trace = result.get("trace")
    if not isinstance(trace, Mapping):
        raise MoesimError("the reference run wrote no trace (run it with --trace)")
    ranks = [{"rank": entry["rank"], "step_s": entry["step_s"], "op_seconds": entry["op_seconds"],
              "unattributed_s": sum(float(v) for v in entry["unattributed"].values())} for entry in trace["ranks"]]
    try:
        return RecordedRun.model_validate({"device": device, "world_size": result["world_size"],
                                           "routing": trace["routing"], "ranks": ranks})
    except ValidationError as err:
        raise MoesimError(one_line(err, prefix="reference run: ")) from None
