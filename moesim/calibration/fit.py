"""Fit a node's cost parameters to microbenchmark measurements: ``fit_node``.

The fit is a sequence of small least-squares problems, each on the cost model's own formula for one
sweep, in the order their parameters feed each other:

1. host:          a CPU spec gets one "device" per rank of the run
2. memory:        elementwise sweep  -> HBM bandwidth (or its efficiency), launch overhead (dispatch)
3. matmul:        matmul sweep + the kernel sweep's matmuls -> tensor rate (or efficiency), size term
4. attention:     attention sweep + the kernel sweep's attention ops -> attention efficiency
5. layernorm:     layernorm sweep    -> efficiency of the memory-bound kinds without their own
6. kinds:         kernel sweep, per memory-bound kind and phase -> ``kind_efficiency``
7. task overhead: a synthetic plan through the executor -> launch overhead += executor bookkeeping
8. hand-over:     synthetic two-stream plans through the executor -> stream hand-over, the wait of a
                  compute task woken while a collective runs, rendezvous skew
9. collectives:   all-to-all + all-reduce sweeps -> latency terms, per-rank fabric bandwidth
10. reverse:      collectives alone vs with a matmul loop -> a collective's wait for a core and its
                  slower transfer (after 9: the model's transfer share of each collective stretches)
11. interference: the compute loops under those collectives -> on a CPU host the work each collective
                  takes from the compute it overlaps (a fixed part and a part per MiB; the slowdown is then
                  0); on a GPU the compute slowdown while a collective runs (after 10: over the
                  collective's running time as the engine plays it); the matmul under a collective loop
                  when the loops were not kept

Every parameter a step cannot identify keeps the base spec's value and is listed in the report with
the reason; so are the inter-node parameters, which one host cannot measure. A parameter set by two
steps (the launch overhead: 2, then 7) is reported once, as the last step left it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moesim.calibration.comm_fit import fit_collectives, fit_comm_slowdown, fit_interference
from moesim.calibration.compute_fit import fit_attention, fit_layernorm, fit_matmul, fit_memory
from moesim.calibration.device import fitted, kept
from moesim.calibration.kernel_fit import (
    fit_compute_wait,
    fit_kind_efficiencies,
    fit_rendezvous_skew,
    fit_stream_handoff,
    fit_task_overhead,
)
from moesim.calibration.measurements import Measurements
from moesim.calibration.report import FitReport, KeptParam, ParamFit, Step, sweep_errors
from moesim.errors import MoesimError
from moesim.hardware.specs import NodeSpec
from moesim.overrides import apply_overrides
from moesim.workload.ops import OpKind

_ONE_HOST_REASON = "one host: calibration sends nothing across the network"


@dataclass(frozen=True, slots=True)
class CalibrationFit:
    """The calibrated node and how it was obtained."""

    node: NodeSpec
    report: FitReport


def fit_node(measurements: Measurements, base: NodeSpec, *, name: str) -> CalibrationFit:
    """A copy of ``base`` named ``name`` with every parameter the measurements identify fitted.

    ``base`` must describe the measured device kind (cpu or gpu) and have a peak for every dtype the
    compute sweeps used; otherwise MoesimError. A GPU base keeps its datasheet peaks and gets
    efficiencies; a CPU base gets the achieved rates as its peaks (see ``calibration.device``).
    """
    _check_compatible(measurements, base)
    device, m = base.gpu.device, measurements
    node = _apply(base, {"name": name})
    entries: list[ParamFit] = []
    kept_entries: list[KeptParam] = []
    steps = (
        lambda n: _host_step(n, m),
        lambda n: fit_memory(n, m.elementwise, device),
        lambda n: fit_matmul(n, (*m.matmul, *m.kernels_of(OpKind.MATMUL)), device),
        lambda n: fit_attention(n, (*m.attention, *m.kernels_of(OpKind.ATTENTION))),
        lambda n: fit_layernorm(n, m.layernorm),
        lambda n: fit_kind_efficiencies(n, m),
        lambda n: fit_task_overhead(n, m.task_overhead),
        lambda n: fit_stream_handoff(n, m.stream_handoff),
        lambda n: fit_compute_wait(n, m.woken_under_comm),
        lambda n: fit_rendezvous_skew(n, m.rendezvous),
        lambda n: fit_collectives(n, m, device),
        lambda n: fit_comm_slowdown(n, m),
        lambda n: fit_interference(n, m),
        lambda n: _network_step(n),
    )
    for run in steps:
        step = run(node)
        node = _apply(node, step.updates)
        entries.extend(step.fitted)
        kept_entries.extend(step.kept)
    final = {entry.path: entry for entry in entries}
    report = FitReport(base=base.name, measured_at=m.measured_at, environment=m.environment,
                       fitted=tuple(final.values()),
                       kept=tuple(entry for entry in kept_entries if entry.path not in final),
                       sweeps=sweep_errors(node, m))
    return CalibrationFit(node=node, report=report)


def _check_compatible(m: Measurements, base: NodeSpec) -> None:
    env = m.environment
    if base.gpu.device != env.device:
        raise MoesimError(f"base: {base.name!r} describes a {base.gpu.device} device but the measurements ran on "
                          f"{env.device}; choose a base node of the measured kind")
    for sweep, samples in (("matmul", m.matmul), ("elementwise", m.elementwise), ("attention", m.attention),
                           ("layernorm", m.layernorm), ("kernel", m.kernels)):
        missing = sorted({s.dtype.value for s in samples} - {d.value for d in base.gpu.peak_tflops})
        if missing:
            have = ", ".join(d.value for d in base.gpu.peak_tflops)
            raise MoesimError(f"base: {base.name!r} has no {missing[0]} peak, which the {sweep} samples use; "
                              f"it has {have}")
    if base.gpu.device == "gpu" and env.ranks_per_host > base.gpus_per_node:
        raise MoesimError(f"base: {base.name!r} has {base.gpus_per_node} GPUs per node but the run had "
                          f"{env.ranks_per_host} ranks on one host")


def _host_step(node: NodeSpec, m: Measurements) -> Step:
    """A CPU host's "GPUs per node" are the ranks the run put on it; a GPU node keeps its GPU count."""
    if node.gpu.device == "gpu":
        return Step()
    entry = fitted("gpus_per_node", m.environment.ranks_per_host, (), "ranks per host of the calibration run")
    return Step(updates={"gpus_per_node": int(entry.value)}, fitted=(entry,))


def _network_step(node: NodeSpec) -> Step:
    values = {"network.nic_gbps": node.network.nic_gbps, "network.latency_us": node.network.latency_us,
              "cost.inter_bandwidth_efficiency": node.cost.inter_bandwidth_efficiency}
    return Step(kept=tuple(kept(path, value, _ONE_HOST_REASON) for path, value in values.items()))


def _apply(node: NodeSpec, updates: Mapping[str, Any]) -> NodeSpec:
    return apply_overrides(node, updates, where="calibration: ")
