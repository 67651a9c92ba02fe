"""Fit steps for communication: collective latency terms and fabric bandwidth, what a collective takes
from the compute it overlaps (a CPU host: its work on the cores; a GPU: a slowdown while it runs), and the
reverse: the collective slowdown while computing.

The model fitted is ``RooflineCostModel``'s on one host, alpha-beta per collective kind. A ring
collective (all-reduce) takes ``collective_base_latency`` plus the fabric's per-hop ``intra.latency``
per ring step, and its bottleneck volume over the per-rank bandwidth ``intra.bandwidth *
intra_bandwidth_efficiency``; an all-to-all its own base (``all_to_all_base_latency``) plus one hop plus
``all_to_all_peer_latency`` per peer, and its volume over that bandwidth times
``all_to_all_bandwidth_ratio``; both bandwidth times lengthened by the base spec's small-message term
(``collective_half_rate_kib``, kept). The coefficients and volumes are taken from
``moesim.hardware.collectives`` itself, so the fit and the engine cannot disagree. The sweep runs its
all-reduces as rings (``NCCL_ALGO=Ring``): NVLS and trees, where the fitted spec allows them, keep the
base spec's factors.

The reverse interference stretches only a collective's transfer, not its latency (the engine slows a
coflow's rate while a member computes; the alpha is fixed software and wire time): with compute on every
member throughout, a collective whose predicted time is a share ``f`` transfer takes ``1 + y * f`` times
as long. The latency could be stretched too on a CPU host (gloo's setup runs on the same cores), but
the sweep's samples are bandwidth-dominated (``f`` near 1), so they could not tell the two apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from moesim import units
from moesim.calibration.device import Device, fitted, kept, rate_step
from moesim.calibration.lsq import LinearFit, relative_nnls
from moesim.calibration.measurements import CollectiveSample, CommUnderComputeSample, Measurements, Sweep
from moesim.calibration.predict import bandwidth_shares, cluster_for, collective_groups
from moesim.calibration.report import Step
from moesim.hardware import collectives
from moesim.hardware.resources import ResourceMap
from moesim.hardware.specs import NodeSpec
from moesim.workload.ops import OpKind

ALL_REDUCE_TRAVERSALS = 2  # as RooflineCostModel costs an all-reduce: a reduce-scatter and an all-gather ring
_RING_INVERSE, _A2A_INVERSE, _BASE, _A2A_BASE, _HOP, _PEER = range(6)
_LATENCY_PATHS = {_BASE: "cost.collective_base_latency_us", _A2A_BASE: "cost.all_to_all_base_latency_us",
                  _HOP: "intra.latency_us", _PEER: "cost.all_to_all_peer_latency_us"}
_BANDWIDTH_PATH, _EFFICIENCY_PATH = "intra.bandwidth_gb_per_s", "cost.intra_bandwidth_efficiency"
_RATIO_PATH = "cost.all_to_all_bandwidth_ratio"
_SWEEP_OF = {OpKind.ALL_TO_ALL: Sweep.ALL_TO_ALL, OpKind.ALL_REDUCE: Sweep.ALL_REDUCE}
# Which latency terms the fit tries to pin first (see fit_collectives): the first order whose pinned
# values are all positive is taken, else the first.
_LATENCY_ORDERS = ((_BASE, _A2A_BASE, _HOP, _PEER), (_HOP, _A2A_BASE, _BASE, _PEER))


def fit_collectives(node: NodeSpec, measurements: Measurements, device: Device) -> Step:
    """Latency terms and bandwidths from the all-to-all and all-reduce sweeps, jointly (they share the
    per-hop latency). Terms the sweeps cannot separate keep the base values. With one group size each
    kind's alpha is one number: the two base terms take them, the per-hop and per-peer terms kept; where
    the kept hop leaves a base at its bound 0 (the base spec's hop is longer than the measured ring's
    steps), the hop and the all-to-all's base take them instead, the rings' base kept."""
    samples = measurements.collectives
    env = measurements.environment
    if not samples or env.ranks_per_host < env.world_size:
        reason = "no collective samples" if not samples else "the run spanned hosts; the fit models one host"
        return _keep_all(node, reason)
    res = ResourceMap.of(cluster_for(node, env.world_size))
    design = np.array([_row(res, node, sample, env.world_size) for sample in samples])
    cost = node.cost
    fallback = np.array([1 / cost.intra_bandwidth_efficiency,
                         1 / (cost.intra_bandwidth_efficiency * cost.all_to_all_bandwidth_ratio),
                         cost.collective_base_latency_s, cost.all_to_all_base_latency_s, node.intra.latency_s,
                         cost.all_to_all_peer_latency_s])
    measured = np.array([s.seconds for s in samples])
    fits = (relative_nnls(design, measured, fallback=fallback, priority=[_RING_INVERSE, _A2A_INVERSE, *order])
            for order in _LATENCY_ORDERS)  # lazily: the next order only where one leaves a pinned term at 0
    first = next(fits)
    fit = next((f for f in itertools.chain((first,), fits) if np.all(f.values[f.identified] > 0)), first)
    step = _bandwidth_step(node, fit, device)
    sweeps = tuple(sorted({_SWEEP_OF[s.kind] for s in samples}))
    sizes = sorted({s.group_size for s in samples})
    for column, path in _LATENCY_PATHS.items():
        if fit.identified[column]:
            value = units.to_us(fit.values[column])
            entry = fitted(path, value, sweeps, "at its bound 0" if value == 0 else "")
            step = step.plus(Step(updates={path: entry.value}, fitted=(entry,)))
        else:
            reason = (f"not separable from the other latency terms by these sweeps (group sizes {sizes}, "
                      f"{' and '.join(s.value for s in sweeps)})")
            step = step.plus(Step(kept=(kept(path, _latencies_us(node)[path], reason),)))
    return step


def _bandwidth_step(node: NodeSpec, fit: LinearFit, device: Device) -> Step:
    """The rings' rate sets the fabric's bandwidth (or efficiency), the all-to-all's its ratio to that; a
    sweep of one kind alone sets the bandwidth through the other's kept ratio (or keeps it)."""
    grew = [fit.identified[c] and fit.values[c] > 0 for c in (_RING_INVERSE, _A2A_INVERSE)]
    raw = {_BANDWIDTH_PATH: node.intra.bandwidth_gb_per_s}
    ratio = node.cost.all_to_all_bandwidth_ratio
    if not any(grew):
        reason = "collective time did not grow with size"
        return Step(kept=(kept(_BANDWIDTH_PATH, node.intra.bandwidth_gb_per_s, reason),
                          kept(_EFFICIENCY_PATH, node.cost.intra_bandwidth_efficiency, reason),
                          kept(_RATIO_PATH, ratio, reason)))
    ring_multiple = 1 / fit.values[_RING_INVERSE] if grew[0] else 1 / (fit.values[_A2A_INVERSE] * ratio)
    sweeps = tuple(sweep for sweep, used in zip((Sweep.ALL_REDUCE, Sweep.ALL_TO_ALL), grew, strict=True) if used)
    step = rate_step(device, ring_multiple, raw=raw, efficiency=_EFFICIENCY_PATH, sweeps=sweeps)
    if not all(grew):
        reason = f"only the {sweeps[0].value} sweep grew with size: one rate, no ratio between two"
        return step.plus(Step(kept=(kept(_RATIO_PATH, ratio, reason),)))
    written = ring_multiple if device == "cpu" else min(1.0, ring_multiple)  # the rings' rate as written
    entry = fitted(_RATIO_PATH, 1 / fit.values[_A2A_INVERSE] / written, (Sweep.ALL_TO_ALL,),
                   "the all-to-all's rate over the all-reduce's")
    return step.plus(Step(updates={_RATIO_PATH: entry.value}, fitted=(entry,)))


def fit_interference(node: NodeSpec, measurements: Measurements) -> Step:
    """``compute_slowdown_under_comm``: the engine stretches compute by ``1 + s`` while a collective runs
    (not while its thread waits for a core: that takes no cycles). From the comm-under-compute sweep where
    it kept the calling thread's compute loop (as the executor overlaps them: one collective from a second
    thread, kernels on the calling one): a loop of ``c`` kernels of ``K`` seconds ran ``W = c K + s T``,
    ``T`` the collective's running time under compute as the engine plays it, its time alone with the
    transfer share ``f`` stretched by the reverse slowdown: ``T = t_alone (1 + y f)`` (so this step runs
    after ``fit_comm_slowdown``); ``s`` by least squares over the samples. Else from the interference
    sweep (a matmul under a loop of collectives): ``1 + s`` fitted to the time ratios (relative least
    squares, closed form)."""
    path = "cost.compute_slowdown_under_comm"
    looped = [s for s in measurements.comm_under_compute if s.stolen_compute_seconds is not None]
    if looped and node.gpu.device == "cpu":
        return _fit_comm_cpu(node, looped)
    if looped:
        extra = np.array([s.stolen_compute_seconds for s in looped], dtype=np.float64)
        shares = bandwidth_shares(looped, node, measurements.environment.world_size)
        stretch = 1 + node.cost.comm_slowdown_under_compute * shares
        running = np.array([s.mean_seconds_alone for s in looped]) * stretch
        slowdown = float(np.sum(extra * running) / np.sum(running * running))
        sweeps: tuple[Sweep, ...] = (Sweep.COMM_UNDER_COMPUTE,)
        how = f"compute loops under {len(looped)} collectives issued as the executor issues them"
    elif measurements.interference:
        ratio = np.array([s.ratio for s in measurements.interference])
        slowdown = float(np.sum(1 / ratio) / np.sum(1 / ratio**2)) - 1.0
        sweeps, how = (Sweep.INTERFERENCE,), ""
    else:
        return Step(kept=(kept(path, node.cost.compute_slowdown_under_comm, "no interference samples"),))
    note = "; ".join(filter(None, (how, "at its bound 0: compute ran no slower while communicating"
                                   if slowdown <= 0 else "")))
    entry = fitted(path, max(0.0, slowdown), sweeps, note)
    return Step(updates={path: entry.value}, fitted=(entry,))


def _fit_comm_cpu(node: NodeSpec, looped: Sequence[CommUnderComputeSample]) -> Step:
    """A CPU host: a collective's threads take the same cores as the compute, a piece of work per call
    rather than a share of the time it runs (a 1 KiB and a 64 KiB all-to-all take ~0.3 ms of the loop
    each, whether they run 0.2 or 1 ms). ``comm_cpu_us + comm_cpu_us_per_mib * MiB`` fitted to the compute
    each collective took from the calling thread's loop (relative least squares, both >= 0), from the
    all-to-alls (the collectives MoE schedules overlap) where there are some; ``compute_slowdown_under_comm``
    is then 0, the engine charging the work instead."""
    paths = ("cost.comm_cpu_us", "cost.comm_cpu_us_per_mib")
    bases = (node.cost.comm_cpu_us, node.cost.comm_cpu_us_per_mib)
    all_to_alls = [s for s in looped if s.kind is OpKind.ALL_TO_ALL]
    chosen = all_to_alls or list(looped)
    taken = np.array([s.stolen_compute_seconds or 0.0 for s in chosen], dtype=np.float64)
    how = f"compute loops under {len(chosen)} {'all-to-alls' if all_to_alls else 'collectives'}"
    slowdown = fitted("cost.compute_slowdown_under_comm", 0.0, (Sweep.COMM_UNDER_COMPUTE,),
                      "a CPU host's collectives take their work from the compute (comm_cpu_*) instead")
    step = Step(updates={slowdown.path: 0.0}, fitted=(slowdown,))
    if not np.any(taken > 0):
        entries = tuple(fitted(path, 0.0, (Sweep.COMM_UNDER_COMPUTE,),
                               f"{how}; at its bound 0: compute ran no slower under them") for path in paths)
        return step.plus(Step(updates={e.path: 0.0 for e in entries}, fitted=entries))
    design = np.column_stack([np.ones(len(chosen)), [s.bytes_per_rank / units.MIB for s in chosen]])
    fit = relative_nnls(design, np.maximum(taken, units.us(1)), fallback=np.array([units.us(b) for b in bases]),
                        priority=(0, 1))
    for column, (path, base) in enumerate(zip(paths, bases, strict=True)):
        if fit.identified[column]:
            value = units.to_us(fit.values[column])
            entry = fitted(path, value, (Sweep.COMM_UNDER_COMPUTE,), how + ("; at its bound 0" if value == 0 else ""))
            step = step.plus(Step(updates={path: entry.value}, fitted=(entry,)))
        else:
            step = step.plus(Step(kept=(kept(path, base, "one payload size: no per-MiB term separable"),)))
    return step


def fit_comm_slowdown(node: NodeSpec, measurements: Measurements) -> Step:
    """The reverse interference, two parameters: a collective started while its ranks compute waits
    ``z`` (``comm_latency_under_compute_us``) and its transfer runs ``1 + y`` times slower
    (``comm_slowdown_under_compute``). Each sample: extra time ``t_with - t_alone = z + y * f * t_alone``
    (``f`` the transfer share of the collective's time on ``node`` as fitted so far, so this step runs
    after the collective fit); least squares relative to ``t_with``, both parameters >= 0 (one at its
    bound 0 is written as 0 and the other refitted alone)."""
    paths = ("cost.comm_latency_under_compute_us", "cost.comm_slowdown_under_compute")
    bases = (node.cost.comm_latency_under_compute_us, node.cost.comm_slowdown_under_compute)
    samples = measurements.comm_under_compute
    if not samples:
        return Step(kept=tuple(kept(p, b, "no comm-under-compute samples") for p, b in zip(paths, bases, strict=True)))
    alone = np.array([s.seconds_alone for s in samples])
    shares = bandwidth_shares(samples, node, measurements.environment.world_size)
    design = np.column_stack([np.ones(len(samples)), shares * alone])
    fit = relative_nnls(design, np.array([s.seconds_with_compute for s in samples]),
                        fallback=np.array([units.us(bases[0]), bases[1]]), priority=(1, 0), offset=alone)
    delay_s, slowdown = (float(v) for v in fit.values)
    entries = (fitted(paths[0], delay_s / units.US, (Sweep.COMM_UNDER_COMPUTE,),
                      "at its bound 0: no wait for the device" if delay_s <= 0 else ""),
               fitted(paths[1], slowdown, (Sweep.COMM_UNDER_COMPUTE,),
                      "at its bound 0: collectives ran no slower while computing" if slowdown <= 0 else ""))
    return Step(updates={e.path: e.value for e in entries}, fitted=entries)


def _row(res: ResourceMap, node: NodeSpec, sample: CollectiveSample, world_size: int) -> list[float]:
    """Design row: the bottleneck volume over the raw per-rank bandwidth in the column of the sample's kind
    (multiplying ``1 / efficiency``, and for an all-to-all ``1 / ratio``), then the coefficients of the
    rings' base, the all-to-all's base, the per-hop and the per-peer latency."""
    members = collective_groups(sample.group_size, world_size)
    unit_hop, no_hop = replace(res, intra_latency_s=1.0), replace(res, intra_latency_s=0.0)
    g = sample.group_size
    # the base spec's small-message term (kept, not fitted) lengthens the bandwidth time by this factor
    stretch = node.cost.message_stretch(sample.bytes_per_rank / g, across_nodes=False)
    if sample.kind is OpKind.ALL_TO_ALL:
        traffic = [np.full((g, g), sample.bytes_per_rank / g) for _ in members]
        volume = stretch * float(np.max(collectives.linear_all_to_all(members, traffic, res)))
        return [0.0, volume / node.intra.bandwidth_bytes_per_s, 0.0,
                collectives.all_to_all_latency(members, no_hop, 1.0, 0.0),
                collectives.all_to_all_latency(members, unit_hop, 0.0, 0.0),
                collectives.all_to_all_latency(members, no_hop, 0.0, 1.0)]
    volume = stretch * float(np.max(collectives.ring(members, sample.bytes_per_rank, ALL_REDUCE_TRAVERSALS, res)))
    return [volume / node.intra.bandwidth_bytes_per_s, 0.0,
            collectives.ring_latency(members, ALL_REDUCE_TRAVERSALS, no_hop, 1.0), 0.0,
            collectives.ring_latency(members, ALL_REDUCE_TRAVERSALS, unit_hop, 0.0), 0.0]


def _latencies_us(node: NodeSpec) -> dict[str, float | None]:
    return {_LATENCY_PATHS[_BASE]: node.cost.collective_base_latency_us,
            _LATENCY_PATHS[_A2A_BASE]: node.cost.all_to_all_base_latency_us,
            _LATENCY_PATHS[_HOP]: node.intra.latency_us, _LATENCY_PATHS[_PEER]: node.cost.all_to_all_peer_latency_us}


def _keep_all(node: NodeSpec, reason: str) -> Step:
    values = {**_latencies_us(node), _BANDWIDTH_PATH: node.intra.bandwidth_gb_per_s,
              _EFFICIENCY_PATH: node.cost.intra_bandwidth_efficiency, _RATIO_PATH: node.cost.all_to_all_bandwidth_ratio}
    return Step(kept=tuple(kept(path, value, reason) for path, value in values.items()))
