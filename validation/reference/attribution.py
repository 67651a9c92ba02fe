"""One profiled training step's time, attributed to the op names of moesim's graph.

The step runs under ``record_function(STEP)``; every moment of it on the rank's thread goes to exactly one
name, so the names' seconds plus the unattributed seconds add up to the step:

- forward: the innermost op label (``L0.qkv``) the model put around the work;
- backward: an autograd node belongs to the forward label in which its forward op ran (the node's
  sequence number is that op's); it is ``<label>.dx``, or ``<label>.dw`` where the graph has no dX
  (the embedding). In a projection's node the matmuls are told apart by shape: a matmul that reads the
  weight (or its transpose) is dX, one whose output is weight-shaped is dW; a node that only views a
  weight (``t``, ``unbind``) is dW, and accumulating a gradient into ``.grad`` goes to the dW of the
  last label that produced a gradient of that shape. A fused backward (LayerNorm's one kernel for dX,
  d-gamma and d-beta) goes to dX whole, its dW keeping only that accumulation (0 where there is none);
- ``zero_grad``, ``optimizer`` and ``grad_sync`` (the trainer's own labels); DDP's reducer work inside
  backward and its wait for the last buckets, after the last autograd node, are ``grad_sync`` too, but
  for its copies: each gradient's ``mul_out`` into its bucket is ``grad_sync.dense.<i>.copy_in`` and each
  ``copy_bucket_to_grad`` is ``grad_sync.dense.<i>.copy_out``, bucket i being the one the gradient falls
  in when the copies are counted off, in order, against the graph's dense buckets (``buckets``);
- anything else is unattributed, keyed by the outermost unlabelled op (``aten::...``, an autograd node)
  or Python-level label (``DistributedDataParallel.forward``), or ``(python)`` / ``(autograd engine)``
  for time between events.

With ``device=True`` (a GPU profile) the same rules label every event, but a name's seconds are those of
the device work (kernels, copies) its events launched, not their own host time; time between events then
counts for nothing.

The rules read a profile through ``ProfiledEvent``, a small torch-free protocol: ``torch_events`` adapts
``torch.profiler``'s FunctionEvents to it (in the worker), ``moesim.workload.kineto`` reads Chrome
traces into events that satisfy it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .opinfo import OpInfo

STEP = "moesim.reference.step"
BACKWARD = "moesim.reference.backward"
ZERO_GRAD, OPTIMIZER, GRAD_SYNC = "zero_grad", "optimizer", "grad_sync"
TRAINER_LABELS = frozenset({ZERO_GRAD, OPTIMIZER, GRAD_SYNC})
UNATTRIBUTED_KEYS = 20

_NODE = "autograd::engine::evaluate_function: "
_ACCUMULATE = "torch::autograd::AccumulateGrad"
_DDP = ("torch::distributed::reducer::", "torch.distributed.ddp.reducer::", "c10d::allreduce")
_COPY_IN, _COPY_OUT = "torch::distributed::reducer::mul_out", "torch.distributed.ddp.reducer::copy_bucket_to_grad"
_MATMULS = frozenset({"aten::mm", "aten::bmm"})
_WEIGHT_VIEWS = frozenset({"aten::t", "aten::unbind", "aten::select", "aten::transpose"})
_US = 1e-6


class ProfiledEvent(Protocol):
    """One host event of a profile, nested by time on its thread.

    ``children`` are the events directly inside it on the same thread, by start time. ``sequence_nr`` is
    autograd's (-1 for none): a forward op's own, or an autograd node's forward op's, which ran on thread
    ``fwd_thread`` (in the numbering of ``thread``; other events may give their own thread). ``input_shapes``
    are the op's inputs' shapes (empty lists for non-tensors). ``device_us`` is the device work (kernels,
    copies) the event itself launched, its children's not included: 0 on a CPU profile.
    """

    @property
    def name(self) -> str: ...
    @property
    def start_us(self) -> float: ...
    @property
    def end_us(self) -> float: ...
    @property
    def thread(self) -> int: ...
    @property
    def fwd_thread(self) -> int: ...
    @property
    def sequence_nr(self) -> int: ...
    @property
    def input_shapes(self) -> Sequence[Sequence[int]]: ...
    @property
    def children(self) -> Sequence[ProfiledEvent]: ...
    @property
    def device_us(self) -> float: ...


@dataclass(frozen=True, slots=True)
class StepAttribution:
    """One rank's profiled step: its length and its seconds by graph op name and by unattributed cause."""

    step_s: float
    op_seconds: dict[str, float]
    unattributed: dict[str, float]   # at most UNATTRIBUTED_KEYS keys, "(other)" holding the rest


@dataclass(eq=False, slots=True)
class _TorchEvent:
    """A FunctionEvent as a ``ProfiledEvent``."""

    name: str
    start_us: float
    end_us: float
    thread: int
    fwd_thread: int
    sequence_nr: int
    input_shapes: Sequence[Sequence[int]]
    device_us: float
    children: list[_TorchEvent] = field(default_factory=list)


def torch_events(function_events: Iterable[Any]) -> list[ProfiledEvent]:
    """The host roots of ``torch.profiler``'s FunctionEvents (``prof.events()``) as ``ProfiledEvent``s:
    the CPU events without a parent, their trees below them."""

    def adapt(event: Any) -> _TorchEvent:
        children = [adapt(child) for child in event.cpu_children]
        return _TorchEvent(event.name, float(event.time_range.start), float(event.time_range.end), event.thread,
                           event.fwd_thread or event.thread, event.sequence_nr, event.input_shapes or [],
                           float(sum(kernel.duration for kernel in event.kernels)), children)

    return [adapt(event) for event in function_events
            if event.cpu_parent is None and str(event.device_type).endswith("CPU")]


def attribute(roots: Sequence[ProfiledEvent], ops: Mapping[str, OpInfo], graph_names: Collection[str], *,
              buckets: Sequence[tuple[str, int]] = (), device: bool = False) -> StepAttribution:
    """Attribute the one ``STEP`` event in the trees of ``roots`` (every thread's top-level events, recorded
    with shapes) to the labels of ``ops`` as named in ``graph_names`` (see the module docstring);
    ``buckets`` are the graph's dense gradient buckets, (all-reduce name, elements) in fill order."""
    steps = [event for event in _walk(roots) if event.name == STEP]
    if len(steps) != 1:
        raise ValueError(f"expected one {STEP!r} event in the profile, found {len(steps)}")
    walker = _Walker(ops, set(graph_names), _forward_ops(roots, ops), _backward_roots(roots), device, buckets)
    walker.visit(steps[0], None, "(python)")
    seconds = {name: value * _US for name, value in walker.seconds.items()}
    for name, info in ops.items():  # a fused backward's dW shares its dX's kernel
        if info.fused_backward and f"{name}.dw" in graph_names:
            seconds.setdefault(f"{name}.dw", 0.0)
    return StepAttribution((steps[0].end_us - steps[0].start_us) * _US, seconds, _largest(walker.unattributed))


def _walk(events: Iterable[ProfiledEvent]) -> Iterator[ProfiledEvent]:
    for event in events:
        yield event
        yield from _walk(event.children)


def _forward_ops(roots: Sequence[ProfiledEvent],
                 ops: Mapping[str, OpInfo]) -> dict[tuple[int, int], tuple[str, ProfiledEvent]]:
    """(thread, sequence number) -> (innermost label, innermost forward event) of every autograd-recorded
    op that ran inside a label."""
    found: dict[tuple[int, int], tuple[str, ProfiledEvent]] = {}

    def visit(event: ProfiledEvent, label: str | None) -> None:
        if event.name in ops:
            label = event.name
        elif label is not None and event.sequence_nr >= 0:
            found[(event.thread, event.sequence_nr)] = (label, event)
        for child in event.children:
            visit(child, label)

    for root in roots:
        visit(root, None)
    return found


def _backward_roots(roots: Sequence[ProfiledEvent]) -> list[ProfiledEvent]:
    """Top-level events of the threads that ran autograd nodes (the rank's own, or the engine's device
    threads)."""
    threads = {event.thread for event in _walk(roots) if event.name.startswith(_NODE)}
    return [root for root in roots if root.thread in threads]


class _Walker:
    """Walks the step's event tree, adding each event's own time (its length less its children's), or on
    a device profile the device time it launched."""

    def __init__(self, ops: Mapping[str, OpInfo], graph_names: set[str],
                 forward: dict[tuple[int, int], tuple[str, ProfiledEvent]], backward_roots: list[ProfiledEvent],
                 device: bool, buckets: Sequence[tuple[str, int]]) -> None:
        self.ops, self.graph_names, self.forward, self.backward_roots = ops, graph_names, forward, backward_roots
        self.device, self.buckets = device, buckets
        self.copied = {"in": 0, "out": 0}         # gradient elements DDP copied so far, each way
        self.seconds: dict[str, float] = defaultdict(float)
        self.unattributed: dict[str, float] = defaultdict(float)
        self.forced: dict[int, str] = {}          # id(matmul event) -> dX or dW label
        self.weight_labels: list[str] = []        # labels whose backward produced weight gradients, in order

    def visit(self, event: ProfiledEvent, label: str | None, key: str | None) -> None:
        own = self._label(event, label)
        children = self._children(event)
        spent = event.device_us if self.device else _own_us(event, children)
        if event.name == BACKWARD:
            if not self.device:  # its own time is the engine's and DDP's, between the nodes
                self._backward_gaps(event, children)
        elif own is not None:
            self.seconds[own] += spent
        else:
            self.unattributed[key or event.name] += spent
        # an op's unlabelled calls count under its name; a Python-level label's (a dotted name) under their own
        python_label = "." in event.name and "::" not in event.name
        passes_key = own is None and event.name not in (STEP, BACKWARD) and not python_label
        for child in children:
            self.visit(child, own, key or event.name if passes_key else None)

    def _label(self, event: ProfiledEvent, inherited: str | None) -> str | None:
        name = event.name
        if id(event) in self.forced:
            return self.forced[id(event)]
        if name in self.ops or name in TRAINER_LABELS:
            return str(name)
        if name in (_COPY_IN, _COPY_OUT):
            return self._bucket_copy(event, "in" if name == _COPY_IN else "out")
        if name.startswith(_DDP):
            return GRAD_SYNC
        if name == f"{_NODE}{_ACCUMULATE}":
            return self._accumulate(event)
        if name.startswith(_NODE):
            found = self.forward.get((event.fwd_thread, event.sequence_nr))
            return inherited if found is None else self._node(event, *found)
        return inherited

    def _node(self, node: ProfiledEvent, label: str, forward_event: ProfiledEvent) -> str:
        """The node's label; its matmuls' dX / dW labels go to ``forced``."""
        info = self.ops[label]
        if not info.matmul:
            if info.weight_shapes:
                self.weight_labels.append(label)
            return self._phase(label, "dx")
        if forward_event.name in _WEIGHT_VIEWS and _first_shape(forward_event) in info.weight_shapes:
            self.weight_labels.append(label)
            return self._phase(label, "dw")
        matmuls = list(_matmuls(node))
        kinds = _classify(matmuls, info)
        for event, kind in zip(matmuls, kinds, strict=True):
            self.forced[id(event)] = self._phase(label, kind)
        if "dw" in kinds:
            self.weight_labels.append(label)
        return self._phase(label, "dw" if kinds and "dx" not in kinds else "dx")

    def _bucket_copy(self, event: ProfiledEvent, way: str) -> str:
        """The copy op (``way`` "in" or "out") of the bucket DDP's next copied gradient falls in."""
        done = self.copied[way]
        self.copied[way] += _numel(event)
        for sync, numel in self.buckets:
            if done < numel:
                name = f"{sync}.copy_{way}"
                return name if name in self.graph_names else GRAD_SYNC
            done -= numel
        return GRAD_SYNC

    def _accumulate(self, node: ProfiledEvent) -> str | None:
        """Accumulating a parameter's gradient: the dW of the latest label with a weight of its shape."""
        inner = [child for child in node.children if child.name == _ACCUMULATE]
        shape = _first_shape(inner[0]) if inner else None
        for label in reversed(self.weight_labels):
            if shape in self.ops[label].weight_shapes:
                return self._phase(label, "dw")
        return None

    def _phase(self, label: str, kind: str) -> str:
        """``label.kind``, or the other phase where the graph has only that one (the embedding: dW)."""
        name, other = f"{label}.{kind}", f"{label}.{'dw' if kind == 'dx' else 'dx'}"
        return other if name not in self.graph_names and other in self.graph_names else name

    def _children(self, event: ProfiledEvent) -> list[ProfiledEvent]:
        """``event``'s children; for the backward label also the autograd nodes other threads ran in it."""
        children = list(event.children)
        if event.name == BACKWARD:
            children += [e for e in self.backward_roots if e.thread != event.thread
                         and event.start_us <= e.start_us and e.end_us <= event.end_us]
            children.sort(key=lambda e: e.start_us)
        return children

    def _backward_gaps(self, event: ProfiledEvent, children: list[ProfiledEvent]) -> None:
        """Time in backward between events: DDP's wait for its buckets once the last node is done, else
        the engine's own."""
        nodes_end = max((c.end_us for c in children if c.name.startswith(_NODE)), default=None)
        for start, end in _gaps(event, children):
            tail = 0.0 if nodes_end is None else max(0.0, end - max(start, nodes_end))
            self.seconds[GRAD_SYNC] += tail
            self.unattributed["(autograd engine)"] += (end - start) - tail


def _numel(event: ProfiledEvent) -> int:
    """Elements of the first tensor an event (or the first of its descendants that records shapes) reads."""
    for inner in _walk([event]):
        shape = next((s for s in inner.input_shapes if s), None)
        if shape is not None:
            return math.prod(shape)
    return 0


def _own_us(event: ProfiledEvent, children: list[ProfiledEvent]) -> float:
    return sum(end - start for start, end in _gaps(event, children))


def _gaps(event: ProfiledEvent, children: list[ProfiledEvent]) -> Iterator[tuple[float, float]]:
    """Intervals of ``event`` that none of ``children`` (sorted by start) covers."""
    cursor, end = event.start_us, event.end_us
    for child in children:
        if child.start_us > cursor:
            yield cursor, min(child.start_us, end)
        cursor = max(cursor, child.end_us)
    if end > cursor:
        yield cursor, end


def _matmuls(event: ProfiledEvent) -> Iterator[ProfiledEvent]:
    for child in event.children:
        if child.name in _MATMULS:
            yield child
        else:
            yield from _matmuls(child)


def _classify(matmuls: list[ProfiledEvent], info: OpInfo) -> list[str]:
    """"dx" for a matmul that reads a weight-shaped operand, "dw" for one that writes a weight-shaped
    output; when both or neither fit, the other matmul's complement, else autograd's order (dW first)."""
    patterns = {shape[-2:] for shape in info.weight_shapes} | {shape[-2:][::-1] for shape in info.weight_shapes}
    kinds: list[str | None] = []
    for event in matmuls:
        shapes = [tuple(s) for s in event.input_shapes[:2]]
        output = (*shapes[0][:-1], shapes[1][-1]) if len(shapes) == 2 and shapes[0] and shapes[1] else ()
        reads = any(s[-2:] in patterns for s in shapes if len(s) >= 2)
        writes = output[-2:] in patterns
        kinds.append("dx" if reads and not writes else "dw" if writes and not reads else None)
    known = [k for k in kinds if k is not None]
    if len(matmuls) == 2 and len(known) == 1:
        return [k or ("dw" if known[0] == "dx" else "dx") for k in kinds]
    return [k or ("dw" if i == 0 and len(matmuls) > 1 else "dx") for i, k in enumerate(kinds)]


def _first_shape(event: ProfiledEvent) -> tuple[int, ...] | None:
    shapes = event.input_shapes
    return tuple(shapes[0]) if shapes and shapes[0] else None


def _largest(unattributed: Mapping[str, float]) -> dict[str, float]:
    """The largest UNATTRIBUTED_KEYS - 1 entries in seconds and ``(other)`` for the rest (kept exact)."""
    ranked = sorted(((key, us * _US) for key, us in unattributed.items() if us > 0), key=lambda kv: -kv[1])
    if len(ranked) <= UNATTRIBUTED_KEYS:
        return dict(ranked)
    head = dict(ranked[: UNATTRIBUTED_KEYS - 1])
    head["(other)"] = sum(value for _, value in ranked[UNATTRIBUTED_KEYS - 1:])
    return head
