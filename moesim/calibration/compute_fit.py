"""Fit steps for compute: memory bandwidth and launch overhead, matmul rate and size term, attention
and memory-bound efficiencies. Each step takes the node as fitted so far and returns a Step.

The model fitted is ``RooflineCostModel``'s (moesim/hardware/cost.py), per kind:
``max((flops / peak + t_half) / eff * shape, bytes / (hbm * hbm_eff)) + launch`` for matmul (``shape`` =
``1 + d_half / d``, d the harmonic mean of its dimensions) and attention (``shape`` = ``1 + s_half / s``, s its sequence
length), and
``max(flops / (vector_peak * other_eff), bytes / (hbm * hbm_eff)) + launch`` for the other kinds until
``kernel_fit`` gives them a kind efficiency.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from moesim import units
from moesim.calibration.device import Device, fitted, kept, rate_step
from moesim.calibration.lsq import ScalarFit, minimise_scalar, relative_nnls, relative_rms
from moesim.calibration.measurements import (
    ElementwiseSample,
    KernelSample,
    LayernormSample,
    MatmulSample,
    Sweep,
)
from moesim.calibration.predict import ComputeSample, compute_op, predict_compute, shape_dim, with_cost
from moesim.calibration.report import Step
from moesim.hardware.specs import NodeSpec

_LOWEST_EFFICIENCY = 1e-3
_MAX_REGIME_PASSES = 10
_DIM_PATH = "cost.matmul_half_efficiency_dim"
_LOWEST_HALF_DIM, _HIGHEST_HALF_DIM = 0.1, 10_000.0  # the shape term's search: from nothing to "every GEMM"


def fit_memory(node: NodeSpec, samples: Sequence[ElementwiseSample], device: Device) -> Step:
    """Bandwidth and launch overhead from the add sweep: ``bytes / (hbm * hbm_eff) + launch``.

    An add moves 12 bytes (FP32) per FLOP, so it sits on the memory roof on any device whose vector
    rate exceeds a twelfth of its bandwidth in bytes: the FLOP roof is left out of this fit.
    """
    launch_path, launch_base = "cost.launch_overhead_us", node.cost.launch_overhead_us
    bw_path, eff_path = "gpu.hbm_gb_per_s", "cost.hbm_efficiency"
    if not samples:
        return _keep_memory(node, "no elementwise samples").plus(
            Step(kept=(kept(launch_path, launch_base, "no elementwise samples"),)))
    x = np.array([s.mem_bytes for s in samples]) / node.gpu.hbm_bytes_per_s
    fit = relative_nnls(np.column_stack([x, np.ones_like(x)]), _seconds(samples),
                        fallback=np.array([1 / node.cost.hbm_efficiency, node.cost.launch_overhead_s]), priority=[0, 1])
    (slope, launch), (slope_known, launch_known) = fit.values, fit.identified
    sweeps = (Sweep.ELEMENTWISE,)
    if slope_known and slope > 0:
        step = rate_step(device, 1 / slope, raw={bw_path: node.gpu.hbm_gb_per_s}, efficiency=eff_path, sweeps=sweeps)
    else:
        step = _keep_memory(node, "elementwise time did not grow with size")
    if not launch_known:
        return step.plus(Step(kept=(kept(launch_path, launch_base, "elementwise sizes too few to separate it"),)))
    launch_entry = fitted(launch_path, units.to_us(launch), sweeps)
    return step.plus(Step(updates={launch_path: launch_entry.value}, fitted=(launch_entry,)))


def fit_matmul(node: NodeSpec, samples: Sequence[MatmulSample | KernelSample], device: Device) -> Step:
    """Rate, size and shape terms: ``(flops / peak + t_half) / eff * (1 + d_half / d) + launch`` over the
    compute-bound samples (``d`` the harmonic mean of the sample's m, n, k).

    For a given ``d_half``, linear in ``a = 1 / eff`` and ``c = t_half / eff``; samples on the memory roof
    (under the bandwidth fitted before) are left out, and the split is redone until it stops changing.
    ``d_half`` is searched around that (0 included: it stays 0 unless it explains the samples better).
    """
    eff_path, half_path, dim_path = "cost.matmul_efficiency", "cost.matmul_half_efficiency_us", _DIM_PATH
    peaks = {s.dtype: node.gpu.peak_tflops[s.dtype] for s in samples}
    x = np.array([s.flops / node.gpu.peak_flops(s.dtype) for s in samples])
    dims = np.array([shape_dim(s) for s in samples], dtype=np.float64)
    measured, launch = _seconds(samples), node.cost.launch_overhead_s
    memory = np.array([s.mem_bytes for s in samples]) / (node.gpu.hbm_bytes_per_s * node.cost.hbm_efficiency)
    fallback = np.array([1 / node.cost.matmul_efficiency,
                         node.cost.matmul_half_efficiency_s / node.cost.matmul_efficiency])

    def solve(half_dim: float) -> tuple[float, np.ndarray, np.ndarray]:
        """(relative RMS error over every sample, values, identified) with the shape term at ``half_dim``."""
        stretch = 1.0 + half_dim / dims
        design = np.column_stack([x * stretch, stretch])
        use = np.ones(len(samples), dtype=bool)
        values, identified = fallback, np.zeros(2, dtype=bool)
        for _ in range(_MAX_REGIME_PASSES):
            if np.count_nonzero(use) < 2:
                identified = np.zeros(2, dtype=bool)
                break
            fit = relative_nnls(design[use], measured[use], fallback=fallback, priority=[0, 1], offset=launch)
            values, identified = fit.values, fit.identified
            compute_bound = design @ values >= memory
            if np.array_equal(compute_bound, use):
                break
            use = compute_bound
        error = relative_rms(np.maximum(design @ values, memory) + launch, measured) if len(samples) else 0.0
        return error, values, identified

    shaped = bool(np.any(np.isfinite(dims))) and len(samples) > 2
    search = minimise_scalar(lambda d: solve(d)[0], _LOWEST_HALF_DIM, _HIGHEST_HALF_DIM) if shaped else None
    half_dim = search.value if search is not None and not search.as_good(solve(0.0)[0]) else 0.0
    _, (slope, intercept), identified = solve(half_dim)
    sweeps = (Sweep.MATMUL,)
    if not (identified[0] and slope > 0):
        reason = "no compute-bound matmul samples" if samples else "no matmul samples"
        return Step(kept=(kept(eff_path, node.cost.matmul_efficiency, reason),
                          kept(half_path, node.cost.matmul_half_efficiency_us, reason),
                          kept(dim_path, node.cost.matmul_half_efficiency_dim, reason)))
    raw = {f"gpu.peak_tflops.{dtype.value}": peak for dtype, peak in peaks.items()}
    step = rate_step(device, 1 / slope, raw=raw, efficiency=eff_path, sweeps=sweeps)
    if shaped:
        note = "0: the samples' shapes did not tell a skinny GEMM apart" if half_dim == 0 else ""
        dim_entry = fitted(dim_path, half_dim, sweeps, note)
        step = step.plus(Step(updates={dim_path: dim_entry.value}, fitted=(dim_entry,)))
    else:
        step = step.plus(Step(kept=(kept(dim_path, node.cost.matmul_half_efficiency_dim, "too few shapes"),)))
    if not identified[1]:
        return step.plus(Step(kept=(kept(half_path, node.cost.matmul_half_efficiency_us, "too few sizes"),)))
    half = fitted(half_path, units.to_us(intercept * step.updates[eff_path]), sweeps)
    return step.plus(Step(updates={half_path: half.value}, fitted=(half,)))


def fit_attention(node: NodeSpec, samples: Sequence[ComputeSample]) -> Step:
    """``attention_efficiency`` and the sequence term ``attention_half_efficiency_seq``: for each candidate
    ``s_half`` the efficiency whose predictions best match the attention samples (the sweep's, and the
    kernel sweep's attention ops), then the ``s_half`` of least error (0 included: it stays 0 unless it
    explains the samples better). The term needs samples of at least two sequence lengths."""
    eff_path, seq_path = "cost.attention_efficiency", "cost.attention_half_efficiency_seq"

    def with_efficiency(trial: NodeSpec, value: float) -> NodeSpec:
        return with_cost(trial, attention_efficiency=value)

    @functools.cache
    def efficiency_at(half_seq: float) -> Step:
        return efficiency_step(with_cost(node, attention_half_efficiency_seq=half_seq), samples, eff_path,
                               node.cost.attention_efficiency, Sweep.ATTENTION, with_efficiency)

    lengths = {compute_op(s).dims.get("s") for s in samples} - {None}
    if len(lengths) < 2:
        reason = "one sequence length" if samples else "no attention samples"
        return efficiency_at(node.cost.attention_half_efficiency_seq).plus(
            Step(kept=(kept(seq_path, node.cost.attention_half_efficiency_seq, reason),)))
    measured, launch = _seconds(samples), node.cost.launch_overhead_s

    def error(half_seq: float) -> float:
        """The error with the best ``1 / eff`` for ``half_seq`` in closed form (relative least squares on the
        times above launch, at efficiency 1): the search's fast stand-in for ``efficiency_at``."""
        ideal = predict_compute(samples, with_cost(node, attention_half_efficiency_seq=half_seq,
                                                   attention_efficiency=1.0)) - launch
        above = np.maximum(measured - launch, 1e-3 * measured)  # a sample at the launch floor weighs as tiny
        slope = float(np.sum(ideal / above) / np.sum((ideal / above) ** 2))
        return relative_rms(slope * ideal + launch, measured)

    def exact_error(half_seq: float) -> float:
        efficiency = efficiency_at(half_seq).updates.get(eff_path, node.cost.attention_efficiency)
        trial = with_cost(node, attention_half_efficiency_seq=half_seq, attention_efficiency=efficiency)
        return relative_rms(predict_compute(samples, trial), measured)

    search = minimise_scalar(error, _LOWEST_HALF_DIM, _HIGHEST_HALF_DIM)
    candidate = ScalarFit(search.value, exact_error(search.value), search.objective_at_high)
    half_seq = search.value if not candidate.as_good(exact_error(0.0)) else 0.0
    note = "0: the samples' sequence lengths did not tell a short sequence apart" if half_seq == 0 else ""
    entry = fitted(seq_path, half_seq, (Sweep.ATTENTION,), note)
    return efficiency_at(half_seq).plus(Step(updates={seq_path: entry.value}, fitted=(entry,)))


def fit_layernorm(node: NodeSpec, samples: Sequence[LayernormSample]) -> Step:
    """``other_compute_efficiency`` (the FLOP roof of every memory-bound kind without a kind efficiency)
    from the layernorm sweep; identified only when layernorm runs below its memory roof."""
    return efficiency_step(node, samples, "cost.other_compute_efficiency", node.cost.other_compute_efficiency,
                           Sweep.LAYERNORM, lambda n, value: with_cost(n, other_compute_efficiency=value))


def efficiency_step(node: NodeSpec, samples: Sequence[ComputeSample], path: str, base: float, sweep: Sweep,
                    with_value: Callable[[NodeSpec, float], NodeSpec], lowest: float = _LOWEST_EFFICIENCY) -> Step:
    """One efficiency in ``[lowest, 1]`` at ``path`` by searching the cost model's own predictions of
    ``samples``; ``with_value(node, v)`` is ``node`` with that efficiency set to ``v``.

    When the samples are memory-bound for every value above some bound, the data only say "at least
    that": the base value is kept if it is at least that, else the bound is written.
    """
    if not samples:
        return Step(kept=(kept(path, base, f"no {sweep.value} samples"),))
    objective = _objective(node, samples, with_value)
    fit = minimise_scalar(objective, lowest, 1.0)
    if not fit.flat_towards_high:
        entry = fitted(path, fit.value, (sweep,))
    elif fit.as_good(objective(base)):
        return Step(kept=(kept(path, base, f"the {sweep.value} samples ran on the memory roof: they bound this "
                                           "only from below, and the base value is above the bound"),))
    else:
        bound = fit.lowest_as_good(objective, lowest)
        entry = fitted(path, bound, (sweep,), "lower bound: the samples ran on the memory roof above it")
    return Step(updates={path: entry.value}, fitted=(entry,))


def _objective(node: NodeSpec, samples: Sequence[ComputeSample],
               with_value: Callable[[NodeSpec, float], NodeSpec]) -> Callable[[float], float]:
    measured = _seconds(samples)

    def relative_error(value: float) -> float:
        return relative_rms(predict_compute(samples, with_value(node, value)), measured)

    return relative_error


def _keep_memory(node: NodeSpec, reason: str) -> Step:
    return Step(kept=(kept("gpu.hbm_gb_per_s", node.gpu.hbm_gb_per_s, reason),
                      kept("cost.hbm_efficiency", node.cost.hbm_efficiency, reason)))


def _seconds(samples: Sequence[ComputeSample]) -> np.ndarray:
    return np.array([s.seconds for s in samples], dtype=np.float64)

