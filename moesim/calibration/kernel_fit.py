"""Fit steps for the harness's own kernels: one efficiency per memory-bound kind, and the executor's
per-task overhead.

Kind efficiencies. ``RooflineCostModel`` costs a memory-bound op (layernorm, elementwise, loss, ...)
as ``max(flops / (vector_peak * eff_kind), bytes / (hbm * hbm_eff)) + launch``. The memory roof and
the launch come from the add sweep, the vector peak from the matmul sweep; what differs between a
GELU, a cross-entropy, an SGD update and an index_select is how fast each runs per FLOP, which is
``eff_kind`` (``CostParams.kind_efficiency``), searched here on that kind's kernel samples.

Task overhead. A sweep sample times one kernel call; a task of a measured plan also pays the
executor's bookkeeping around it (dependency waits, clock reads, events). On a CPU host the "launch"
of a task is the op dispatch plus that bookkeeping; on a GPU it is the host's kernel-launch cost.
``launch_overhead_us`` becomes the dispatch (the add sweep's intercept) plus the bookkeeping measured
by running a synthetic plan through the executor; the sweeps are predicted without the bookkeeping
(``predict.kernel_node``), since their samples do not contain it.
"""

from __future__ import annotations

from collections.abc import Callable

from moesim import units
from moesim.calibration.compute_fit import efficiency_step
from moesim.calibration.device import fitted, kept
from moesim.calibration.measurements import (
    KIND_SWEEPS,
    Measurements,
    StreamHandoffSample,
    Sweep,
    TaskOverheadSample,
)
from moesim.calibration.report import Step
from moesim.hardware.specs import NodeSpec
from moesim.workload.ops import OpKind

# Some harness kernels run ~100x below the vector peak per FLOP (an index_add_ of token rows, a
# cross-entropy), well below the generic search floor; 1e-5 keeps them inside the search.
_LOWEST_KIND_EFFICIENCY = 1e-5
_LAUNCH_PATH = "cost.launch_overhead_us"
_HANDOFF_PATH = "cost.stream_handoff_us"


def fit_kind_efficiencies(node: NodeSpec, measurements: Measurements) -> Step:
    """``cost.kind_efficiency.<kind>`` for every memory-bound kind with kernel samples, each on its own
    samples alone (every phase together: one efficiency per kind is what the cost model has)."""
    step = Step()
    for kind, sweep in KIND_SWEEPS.items():
        samples = measurements.kernels_of(kind)
        if not samples:
            continue
        path = f"cost.kind_efficiency.{kind.value}"
        base = node.cost.kind_efficiency.get(kind.value, node.cost.other_compute_efficiency)
        step = step.plus(efficiency_step(node, samples, path, base, sweep, _setter(kind), _LOWEST_KIND_EFFICIENCY))
    return step


def _setter(kind: OpKind) -> Callable[[NodeSpec, float], NodeSpec]:
    def with_value(node: NodeSpec, value: float) -> NodeSpec:
        efficiencies = {**node.cost.kind_efficiency, kind.value: value}
        return node.model_copy(update={"cost": node.cost.model_copy(update={"kind_efficiency": efficiencies})})

    return with_value


def fit_stream_handoff(node: NodeSpec, sample: StreamHandoffSample | None) -> Step:
    """``stream_handoff_us``: the measured mean hand-over (the engine adds it to every task woken by another
    stream, as the synthetic plan's every task is)."""
    if sample is None:
        return Step(kept=(kept(_HANDOFF_PATH, node.cost.stream_handoff_us, "no stream hand-over sample"),))
    entry = fitted(_HANDOFF_PATH, units.to_us(sample.seconds), (),
                   f"measured directly: the mean over {sample.rounds} rounds of add -> all-to-all -> add")
    return Step(updates={_HANDOFF_PATH: entry.value}, fitted=(entry,))


def fit_task_overhead(node: NodeSpec, sample: TaskOverheadSample | None) -> Step:
    """``launch_overhead_us`` = the dispatch fitted so far + the executor's measured bookkeeping per task."""
    if sample is None:
        return Step()
    dispatch_us, bookkeeping_us = node.cost.launch_overhead_us, units.to_us(sample.bookkeeping_seconds)
    note = (f"kernel dispatch {dispatch_us:.3g} us + executor bookkeeping {bookkeeping_us:.3g} us per task "
            f"({sample.tasks}-task synthetic plan)")
    entry = fitted(_LAUNCH_PATH, dispatch_us + bookkeeping_us, (Sweep.ELEMENTWISE, Sweep.TASK_OVERHEAD), note)
    return Step(updates={_LAUNCH_PATH: entry.value}, fitted=(entry,))
