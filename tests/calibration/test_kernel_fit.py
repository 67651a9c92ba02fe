"""The per-kind kernel sweep and the executor's task overhead: the fit recovers PLANTED kind efficiencies
and bookkeeping from times ``RooflineCostModel`` itself produced for the calibration models' ops.

The planted CPU rank (conftest): vector peak 50 GFLOP/s, memory 6 GB/s, dispatch 8 us. A kind's samples
identify its efficiency only where they run on the FLOP roof, i.e. where
``flops / (50e9 * e) > bytes / 6e9``, so e < 0.12 * flops / bytes. The plants sit below that for the
op that identifies each kind (FLOP per byte in fp32: GELU 8/8, loss 4/4, SGD 4/20, layernorm dX
10/16, unpermute 2 T h / (T + rows) h 4 = 1/4, embedding with positions 1/12, router's gate matmul >> 1):
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.calibration import Sweep, fit_node, write_calibrated
from moesim.calibration.measurements import KernelSample, Measurements, TaskOverheadSample
from moesim.calibration.sweeps import kernel_cases, sizes_for
from moesim.dtypes import DType
from moesim.hardware import ClusterSpec, CostParams, RooflineCostModel, load_node
from moesim.plan import StreamKind, Task
from moesim.workload.ops import Op, OpKind, Phase, Role

PLANTED_KINDS = {"elementwise": 0.02, "loss": 0.01, "optimizer": 0.005, "layernorm": 0.03, "permute": 0.004,
                 "embedding": 0.002, "router": 0.05, "copy": 0.008}
DISPATCH_US, BOOKKEEPING_US = 8.0, 3.0
TASK = Task(id=0, op=0, stream=StreamKind.COMPUTE)


def kernel_measurements(node, base: Measurements, *, noise: float = 0.0, seed: int = 0,
                        bookkeeping_us: float = BOOKKEEPING_US) -> Measurements:
    """``base`` plus kernel samples of every case of the full run and a task-overhead sample, timed by
    the cost model on ``node`` (its launch is the dispatch: the kernel call alone)."""
    rng = np.random.default_rng(seed)
    model = RooflineCostModel(ClusterSpec(node=node), DType.FP32)

    def noisy(seconds: float) -> float:
        return seconds * max(0.5, 1.0 + noise * rng.standard_normal())

    kernels = tuple(KernelSample(model=case.model, name=case.op.name, kind=case.op.kind, phase=case.op.phase,
                                 dims=dict(case.op.dims), flops=case.op.flops, mem_bytes=case.op.mem_bytes,
                                 dtype=DType.FP32, seconds=noisy(model.compute_time(case.op, TASK, 0)))
                    for case in kernel_cases(sizes_for("cpu", quick=False), 2, DType.FP32))
    tiny = Op(id=0, name="tiny", role=Role.RESIDUAL, kind=OpKind.ELEMENTWISE, phase=Phase.FORWARD, layer=None,
              flops=1.0, mem_bytes=12.0)
    alone = model.compute_time(tiny, TASK, 0)
    overhead = TaskOverheadSample(tasks=512, seconds_per_task=alone + bookkeeping_us * 1e-6, kernel_seconds=alone,
                                  flops=1.0, mem_bytes=12.0, dtype=DType.FP32)
    return base.model_copy(update={"kernels": kernels, "task_overhead": overhead})


@pytest.fixture
def planted(planted_cpu):
    return planted_cpu(world=2, launch_overhead_us=DISPATCH_US, kind_efficiency=dict(PLANTED_KINDS))


@pytest.fixture
def measured(planted, synthesize, cpu_shapes):
    return kernel_measurements(planted, synthesize(planted, world=2, dtype=DType.FP32, shapes=cpu_shapes))


def test_noise_free_kind_efficiencies_and_task_overhead_are_recovered(planted, measured) -> None:
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    for kind, efficiency in PLANTED_KINDS.items():
        assert fit.node.cost.kind_efficiency[kind] == pytest.approx(efficiency, rel=1e-3), kind
        assert fit.report.fitted_value(f"cost.kind_efficiency.{kind}") == fit.node.cost.kind_efficiency[kind]
    # launch = dispatch (the add sweep's intercept) + the executor's bookkeeping: 8 + 3 = 11 us
    assert fit.node.cost.launch_overhead_us == pytest.approx(DISPATCH_US + BOOKKEEPING_US, rel=1e-3)
    (launch,) = [f for f in fit.report.fitted if f.path == "cost.launch_overhead_us"]
    assert launch.sweeps == (Sweep.ELEMENTWISE, Sweep.TASK_OVERHEAD) and "bookkeeping 3 us" in launch.note
    assert "cost.launch_overhead_us" not in fit.report.kept_paths()
    # Every sweep, predicted without the bookkeeping (its samples time the kernel call alone), is exact.
    assert Sweep.TASK_OVERHEAD not in {error.sweep for error in fit.report.sweeps}
    for error in fit.report.sweeps:
        assert error.rms_relative_error < 1e-3, error
    matmuls = [k for k in measured.kernels if k.kind is OpKind.MATMUL]
    assert fit.report.error_of(Sweep.MATMUL).samples == len(measured.matmul) + len(matmuls) > len(measured.matmul)
    # no softmax op in the calibration graphs: nothing fitted for it, nothing kept
    assert "softmax" not in fit.node.cost.kind_efficiency and fit.report.error_of(Sweep.KERNEL_SOFTMAX) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_kind_efficiencies_are_recovered_within_tolerance(seed, planted, synthesize, cpu_shapes) -> None:
    """2% noise per time; each efficiency rests on its kind's FLOP-bound samples (2 or more per kind), a
    ratio with sigma <= 1.4%: 5% is over 3.5 sigma (40 seeds, measured once: worst case 2.1%)."""
    base = synthesize(planted, world=2, dtype=DType.FP32, shapes=cpu_shapes, noise=0.02, seed=seed)
    measured = kernel_measurements(planted, base, noise=0.02, seed=seed + 100)
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    for kind, efficiency in PLANTED_KINDS.items():
        assert fit.node.cost.kind_efficiency[kind] == pytest.approx(efficiency, rel=0.05), kind


def test_a_kind_on_the_memory_roof_keeps_the_base_value(planted_cpu, synthesize, cpu_shapes) -> None:
    """Layernorm planted at 0.5 runs on the memory roof (its bound is 0.12 * 10 / 16 = 0.075 at most): the
    samples only say "at least the bound", and cpu-loopback's 0.5 is above it, so nothing is written for the
    kind and the cost model keeps using other_compute_efficiency for it. Each phase gets its own bound
    (else it would fall back to the kind's value, which need not lie above it); the sweep stays exact."""
    kinds = {**PLANTED_KINDS, "layernorm": 0.5}
    node = planted_cpu(world=2, launch_overhead_us=DISPATCH_US, kind_efficiency=kinds)
    measured = kernel_measurements(node, synthesize(node, world=2, dtype=DType.FP32, shapes=cpu_shapes))
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    (entry,) = [k for k in fit.report.kept if k.path == "cost.kind_efficiency.layernorm"]
    assert "layernorm" not in fit.node.cost.kind_efficiency
    assert entry.value == 0.5 and "memory roof" in entry.reason
    phases = [f for f in fit.report.fitted if f.path.startswith("cost.kind_efficiency.layernorm:")]
    assert phases and all("lower bound" in f.note and f.value <= 0.075 for f in phases)
    assert fit.report.error_of(Sweep.KERNEL_LAYERNORM).rms_relative_error < 1e-3


def test_no_bookkeeping_leaves_the_dispatch_as_the_launch(planted, synthesize, cpu_shapes) -> None:
    measured = kernel_measurements(planted, synthesize(planted, world=2, dtype=DType.FP32, shapes=cpu_shapes),
                                   bookkeeping_us=0.0)
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    assert fit.node.cost.launch_overhead_us == pytest.approx(DISPATCH_US, rel=1e-3)
    assert "bookkeeping 0 us" in fit.report.fitted[[f.path for f in fit.report.fitted].index(
        "cost.launch_overhead_us")].note
    for error in fit.report.sweeps:
        assert error.rms_relative_error < 1e-3, error


def test_the_fitted_kind_efficiencies_reach_the_cost_model(planted, measured) -> None:
    """A loss op of 1M logits on the fitted node: 4 MFLOP at 50 GFLOP/s x 0.01 = 8 ms, against 4 MB at
    6 GB/s = 0.67 ms of memory; plus the 11 us launch."""
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    loss = Op(id=0, name="loss", role=Role.LOSS, kind=OpKind.LOSS, phase=Phase.FORWARD, layer=None, flops=4e6,
              mem_bytes=4e6)
    seconds = RooflineCostModel(ClusterSpec(node=fit.node), DType.FP32).compute_time(loss, TASK, 0)
    assert seconds == pytest.approx(8e-3 + 11e-6, rel=2e-3)


def test_the_calibrated_file_carries_each_kind_with_its_sweep_error(planted, measured, tmp_path) -> None:
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    path = write_calibrated(fit, tmp_path)
    written = load_node(path).cost.kind_efficiency
    assert written == fit.node.cost.kind_efficiency
    assert {key: value for key, value in written.items() if ":" not in key} == pytest.approx(PLANTED_KINDS, rel=1e-3)
    for key, value in written.items():  # each phase of a kind at the kind's planted value
        assert value == pytest.approx(PLANTED_KINDS[key.split(":")[0]], rel=1e-3), key
    lines = path.read_text().splitlines()
    (loss,) = [line for line in lines if line.startswith("    loss: ")]
    assert "kernel.loss sweep rel. RMS error 0.0%" in loss
    (launch,) = [line for line in lines if line.startswith("  launch_overhead_us: ")]
    assert "elementwise sweep rel. RMS error 0.0%" in launch and "executor bookkeeping 3 us" in launch


def test_a_phase_of_its_own_and_slower_gathers_are_recovered(planted_cpu, synthesize, cpu_shapes) -> None:
    """A router forward (matmul, softmax, top-k) 5x slower per FLOP than its backward, and gathers of token
    rows (permute, the embedding's forward) at 40% and 30% of the add sweep's bandwidth: each phase gets
    its own FLOP efficiency and, where its samples run on the memory roof, its own memory efficiency."""
    kinds = {**PLANTED_KINDS, "router:forward": 0.01}
    memory = {"permute": 0.4, "embedding:forward": 0.3}
    node = planted_cpu(world=2, launch_overhead_us=DISPATCH_US, kind_efficiency=kinds, kind_memory_efficiency=memory)
    measured = kernel_measurements(node, synthesize(node, world=2, dtype=DType.FP32, shapes=cpu_shapes))
    cost = fit_node(measured, load_node("cpu-loopback"), name="cpu-test").node.cost
    assert cost.kind_efficiency["router:forward"] == pytest.approx(0.01, rel=1e-3)
    assert cost.kind_efficiency["router:backward_input"] == pytest.approx(0.05, rel=1e-3)
    assert cost.kind_memory_efficiency["permute:forward"] == pytest.approx(0.4, rel=1e-3)
    assert cost.kind_memory_efficiency["embedding:forward"] == pytest.approx(0.3, rel=1e-3)
    for key, value in cost.kind_memory_efficiency.items():  # every written one is the one in effect
        kind, _, phase = key.partition(":")
        expected = memory.get(key, memory.get(kind, 1.0)) if phase else None
        if expected is not None:
            assert value == pytest.approx(expected, rel=1e-3), key
    fitted_node = node.model_copy(update={"cost": cost})
    model = RooflineCostModel(ClusterSpec(node=fitted_node), DType.FP32)
    for case in kernel_cases(sizes_for("cpu", quick=False), 2, DType.FP32):  # every op the sweep saw: exact
        if case.op.kind.value in PLANTED_KINDS:
            truth = RooflineCostModel(ClusterSpec(node=node), DType.FP32).compute_time(case.op, TASK, 0)
            assert model.compute_time(case.op, TASK, 0) - cost.launch_overhead_s == pytest.approx(
                truth - node.cost.launch_overhead_s, rel=1e-3), case.op.name


@pytest.mark.parametrize(("key", "allowed"), [("router:forward", True), ("layernorm:backward_weight", True),
                                              ("loss", True), ("router:sideways", False), ("matmul", False)])
def test_kind_keys_are_a_kind_or_a_kind_and_phase(key, allowed) -> None:
    if allowed:
        assert CostParams(kind_efficiency={key: 0.5}, kind_memory_efficiency={key: 0.5}).kind_efficiency == {key: 0.5}
    else:
        with pytest.raises(ValueError, match="followed by ':' and a phase"):
            CostParams(kind_memory_efficiency={key: 0.5})
