"""Fit steps for the harness's own kernels: one efficiency per memory-bound kind, and the executor's
per-task overhead.

Kind efficiencies. ``RooflineCostModel`` costs a memory-bound op (layernorm, elementwise, loss, ...) as
``max(flops / (vector_peak * e_f), bytes / (hbm * hbm_eff * e_m)) + launch``. The memory roof and the
launch come from the add sweep, the vector peak from the matmul sweep; what differs between a GELU, a
cross-entropy, an SGD update, an index_select of token rows and a router's matmul, softmax and top-k is
how close each comes to those roofs: ``e_f`` (``CostParams.kind_efficiency``) and ``e_m``
(``kind_memory_efficiency``), per kind and per phase (a router's forward runs three kernels, its
backward one), fitted here on that kind's (and phase's) kernel samples.

Task overhead. A sweep sample times one kernel call; a task of a measured plan also pays the
executor's bookkeeping around it (dependency waits, clock reads, events). On a CPU host the "launch"
of a task is the op dispatch plus that bookkeeping; on a GPU it is the host's kernel-launch cost.
``launch_overhead_us`` becomes the dispatch (the add sweep's intercept) plus the bookkeeping measured
by running a synthetic plan through the executor; the sweeps are predicted without the bookkeeping
(``predict.kernel_node``), since their samples do not contain it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moesim import units
from moesim.calibration.device import fitted, kept
from moesim.calibration.measurements import (
    KIND_SWEEPS,
    KernelSample,
    Measurements,
    RendezvousSample,
    StreamHandoffSample,
    Sweep,
    TaskOverheadSample,
    WokenUnderCommSample,
)
from moesim.calibration.predict import predict_compute, with_cost
from moesim.calibration.report import Step
from moesim.hardware.specs import NodeSpec

# Some harness kernels run ~100x below the vector peak per FLOP (an index_add_ of token rows, a
# cross-entropy); the floor only keeps a degenerate fit finite.
_LOWEST_KIND_EFFICIENCY = 1e-5
_LAUNCH_PATH = "cost.launch_overhead_us"
_MAX_REGIME_PASSES = 20
_HANDOFF_PATH = "cost.stream_handoff_us"
_WAIT_PATH = "cost.compute_wait_under_comm_us"
_SKEW_PATH, _SKEW_CAP_PATH = "cost.rendezvous_skew", "cost.rendezvous_skew_cap_us"


def fit_kind_efficiencies(node: NodeSpec, measurements: Measurements) -> Step:
    """``cost.kind_efficiency`` and ``cost.kind_memory_efficiency`` for every memory-bound kind with kernel
    samples: for the kind on all its samples (what an op of a phase no sample had uses), and for each
    phase on that phase's samples (``"<kind>:<phase>"``)."""
    step = Step()
    for kind, sweep in KIND_SWEEPS.items():
        samples = measurements.kernels_of(kind)
        groups = {kind.value: samples}
        for phase in sorted({s.phase for s in samples}, key=lambda p: p.value):
            groups[f"{kind.value}:{phase.value}"] = tuple(s for s in samples if s.phase is phase)
        for key, chosen in groups.items():
            if chosen:
                step = step.plus(_kind_step(node, key, chosen, sweep))
    return step


def _kind_step(node: NodeSpec, key: str, samples: Sequence[KernelSample], sweep: Sweep) -> Step:
    """``t = max(f / e_f, m / e_m) + launch`` (``f``, ``m``: the sample's FLOP and memory roofs at efficiency
    1) fitted by regimes: each sample counts for the roof it runs on, each efficiency is solved in closed
    form on its samples (relative least squares), until no sample changes roof. An efficiency no sample
    runs on is bounded only: the FLOP one from below (written when above the generic value), the memory
    one from below by at most 1 (left out for a kind; 1 for a phase, whose kind's value, fitted on other
    phases, may lie below what its samples allow)."""
    flop_path, memory_path = f"cost.kind_efficiency.{key}", f"cost.kind_memory_efficiency.{key}"
    launch = node.cost.launch_overhead_s
    roofs = with_cost(node, kind_efficiency={key: 1.0}, kind_memory_efficiency={key: 1.0})
    flop = predict_compute([s.model_copy(update={"mem_bytes": 0.0}) for s in samples], roofs) - launch
    memory = predict_compute([s.model_copy(update={"flops": 0.0}) for s in samples], roofs) - launch
    measured = np.array([s.seconds for s in samples], dtype=np.float64)
    # start from the add sweep's memory roof: a sample slower than it is taken to run on the FLOP roof
    inverse_flop, inverse_memory = 1.0, 1.0
    on_flops = (flop > 0) & (measured - launch > memory)
    for _ in range(_MAX_REGIME_PASSES):
        if on_flops.any():
            inverse_flop = _inverse_efficiency(flop[on_flops], measured[on_flops], launch)
        if not on_flops.all():
            inverse_memory = _inverse_efficiency(memory[~on_flops], measured[~on_flops], launch)
        regimes = flop * inverse_flop >= memory * inverse_memory
        if np.array_equal(regimes, on_flops):
            break
        on_flops = regimes
    step = Step()
    if on_flops.any():
        step = step.plus(_efficiency_entry(flop_path, 1.0 / inverse_flop, sweep))
    elif np.any(flop > 0):
        bound = float(np.max(flop[flop > 0] / (memory[flop > 0] * inverse_memory)))
        base = node.cost.other_compute_efficiency
        if bound > base or ":" in key:  # a phase's own bound: else its kind's value, which may lie below it
            entry = fitted(flop_path, bound, (sweep,), "lower bound: every sample ran on the memory roof")
            step = step.plus(Step(updates={flop_path: entry.value}, fitted=(entry,)))
        else:
            step = step.plus(Step(kept=(kept(flop_path, base, "the samples ran on the memory roof: they bound "
                                                             "this only from below, and the generic value "
                                                             "(other_compute_efficiency) is above the bound"),)))
    if not on_flops.all():
        step = step.plus(_efficiency_entry(memory_path, 1.0 / inverse_memory, sweep))
    elif ":" in key and np.any(memory > 0):
        # the kind's memory value, fitted on other phases, could put these samples on the memory roof
        entry = fitted(memory_path, 1.0, (sweep,), "every sample ran on the FLOP roof: the memory roof at 1")
        step = step.plus(Step(updates={memory_path: entry.value}, fitted=(entry,)))
    return step


def _inverse_efficiency(roof: np.ndarray, measured: np.ndarray, launch: float) -> float:
    """``a >= 1`` minimising the relative error of ``a * roof + launch`` against ``measured``."""
    x = roof / measured
    if not np.any(x > 0):
        return 1.0
    return max(1.0, float(np.sum(x * (measured - launch) / measured) / np.sum(x * x)))


def _efficiency_entry(path: str, value: float, sweep: Sweep) -> Step:
    note = "at its bound 1: the kernels ran at the roof" if value >= 1.0 else ""
    entry = fitted(path, max(_LOWEST_KIND_EFFICIENCY, value), (sweep,), note)
    return Step(updates={path: entry.value}, fitted=(entry,))


def fit_stream_handoff(node: NodeSpec, sample: StreamHandoffSample | None) -> Step:
    """``stream_handoff_us``: the measured mean hand-over (the engine adds it to every task woken by another
    stream, as the synthetic plan's every task is)."""
    if sample is None:
        return Step(kept=(kept(_HANDOFF_PATH, node.cost.stream_handoff_us, "no stream hand-over sample"),))
    entry = fitted(_HANDOFF_PATH, units.to_us(sample.seconds), (),
                   f"measured directly: the mean over {sample.rounds} rounds of add -> all-to-all -> add")
    return Step(updates={_HANDOFF_PATH: entry.value}, fitted=(entry,))


def fit_compute_wait(node: NodeSpec, sample: WokenUnderCommSample | None) -> Step:
    """``compute_wait_under_comm_us``: the woken add's mean wait beyond the hand-over fitted before it (the
    engine adds the hand-over, then waits while a collective runs, at most this). Where the add waited out
    the whole collective, the data only say "at least that", which is written."""
    if sample is None:
        return Step(kept=(kept(_WAIT_PATH, node.cost.compute_wait_under_comm_us, "no woken-under-comm sample"),))
    wait = max(0.0, sample.seconds - node.cost.stream_handoff_s)
    note = f"measured directly: the mean over {sample.rounds} compute tasks woken while a collective ran"
    if wait >= sample.collective_seconds:
        note += "; lower bound: they waited out the whole collective"
    entry = fitted(_WAIT_PATH, units.to_us(wait), (), note)
    return Step(updates={_WAIT_PATH: entry.value}, fitted=(entry,))


def fit_rendezvous_skew(node: NodeSpec, samples: Sequence[RendezvousSample]) -> Step:
    """``rendezvous_skew`` and its cap: a collective's wait (to its rendezvous, and its own time) grows with
    the compute its ranks did since the previous collective, ``min(c * T, cap)`` above the shortest
    segment's. Least squares over every split of the segments into a rising part (``c`` through that
    point) and a level part (``cap`` their mean); a split with no level part has no cap."""
    if len(samples) < 2:
        return Step(kept=(kept(_SKEW_PATH, node.cost.rendezvous_skew, "fewer than two segment lengths"),
                          kept(_SKEW_CAP_PATH, node.cost.rendezvous_skew_cap_us, "fewer than two segment lengths")))
    ordered = sorted(samples, key=lambda s: s.segment_seconds)
    span = np.array([s.segment_seconds - ordered[0].segment_seconds for s in ordered[1:]])
    extra = np.array([s.wait_seconds - ordered[0].wait_seconds for s in ordered[1:]])
    best: tuple[float, float, float | None] | None = None
    for rising in range(len(span), 0, -1):  # no cap first: a cap must explain the data better to be kept
        head = span[:rising]
        slope = max(0.0, float(np.sum(head * extra[:rising]) / np.sum(head * head))) if np.any(head > 0) else 0.0
        cap = float(np.mean(extra[rising:])) if rising < len(span) else None
        predicted = slope * span if cap is None else np.minimum(slope * span, max(cap, 0.0))
        error = float(np.sum((predicted - extra) ** 2))
        if best is None or error < best[0] * (1 - 1e-6) - 1e-18:
            best = (error, slope, None if cap is None else max(cap, 0.0))
    assert best is not None
    _, slope, cap_s = best
    lengths = ", ".join(f"{s.segment_seconds / units.MS:.2g}" for s in ordered)
    note = f"over {len(samples)} segment lengths ({lengths} ms)"
    entries = [fitted(_SKEW_PATH, slope, (), note + ("; at its bound 0" if slope == 0 else ""))]
    if cap_s is None:
        reason = "the wait still rose at the longest segment: no cap measured"
        step = Step(kept=(kept(_SKEW_CAP_PATH, node.cost.rendezvous_skew_cap_us, reason),))
    else:
        entries.append(fitted(_SKEW_CAP_PATH, units.to_us(cap_s), (), note + ": where the wait levelled off"))
        step = Step()
    return step.plus(Step(updates={e.path: e.value for e in entries}, fitted=tuple(entries)))


def fit_task_overhead(node: NodeSpec, sample: TaskOverheadSample | None) -> Step:
    """``launch_overhead_us`` = the dispatch fitted so far + the executor's measured bookkeeping per task."""
    if sample is None:
        return Step()
    dispatch_us, bookkeeping_us = node.cost.launch_overhead_us, units.to_us(sample.bookkeeping_seconds)
    note = (f"kernel dispatch {dispatch_us:.3g} us + executor bookkeeping {bookkeeping_us:.3g} us per task "
            f"({sample.tasks}-task synthetic plan)")
    entry = fitted(_LAUNCH_PATH, dispatch_us + bookkeeping_us, (Sweep.ELEMENTWISE, Sweep.TASK_OVERHEAD), note)
    return Step(updates={_LAUNCH_PATH: entry.value}, fitted=(entry,))
