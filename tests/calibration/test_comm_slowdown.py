"""The reverse interference: ``comm_slowdown_under_compute`` from collectives timed alone and under a
matmul loop, fitted on the engine's rule (the transfer stretches by 1 + y, the latency does not).

Hand numbers, the planted CPU of conftest on 2 ranks (loopback 1.5 GB/s for rings, 0.8 x that for
all-to-alls; base latencies 40 us (rings) and 25 us (all-to-all), hop 15 us, per-peer 10 us; the
collective sweep reproduces both alphas at one group size). 3 MB per rank:
- all-to-all: each rank sends half, 1.5 MB, in 1.5e6 / 1.2e9 = 1.25 ms; latency 25 + 15 + 10 = 50 us.
- all-reduce: a ring of two, 2 traversals of half the buffer = 3 MB, in 2 ms; latency 40 + 2 x 15 = 70 us.
With y = 0.5 the transfers take 1.875 and 3 ms under compute.
"""

from __future__ import annotations

import math

import pytest

from moesim import units
from moesim.calibration import CommUnderComputeSample, Sweep, fit_node, write_calibrated
from moesim.calibration.report import sweep_errors
from moesim.calibration.sweeps import bandwidth_bound, sizes_for
from moesim.dtypes import DType
from moesim.hardware import ClusterSpec, RooflineCostModel, load_node
from moesim.workload.ops import OpKind

PATH = "cost.comm_slowdown_under_compute"
MS = units.MS
# (kind, seconds alone, seconds under compute) at 3 MB per rank, y = 0.5, by the hand numbers above
HAND = [(OpKind.ALL_TO_ALL, 0.050 * MS + 1.25 * MS, 0.050 * MS + 1.875 * MS),
        (OpKind.ALL_REDUCE, 0.070 * MS + 2.0 * MS, 0.070 * MS + 3.0 * MS)]


def hand_samples(stretch: float = 1.0) -> tuple[CommUnderComputeSample, ...]:
    """The HAND cases, their time under compute multiplied by ``stretch``."""
    return tuple(CommUnderComputeSample(kind=kind, group_size=2, bytes_per_rank=3e6, m=256, n=256, k=256,
                                        dtype=DType.FP32, seconds_alone=alone, seconds_with_compute=busy * stretch)
                 for kind, alone, busy in HAND)


@pytest.fixture
def two_ranks(planted_cpu, synthesize, cpu_shapes):
    """Measurements of the planted CPU on 2 ranks with the hand-made samples under compute (which keep no
    compute loop: the compute slowdown comes from the interference sweep, planted as 0.35, not as work)."""
    node = planted_cpu(world=2, compute_slowdown_under_comm=0.35, comm_cpu_us=0.0, comm_cpu_us_per_mib=0.0)
    measured = synthesize(node, world=2, dtype=DType.FP32, shapes=cpu_shapes)
    return measured.model_copy(update={"comm_under_compute": hand_samples()})


def test_the_hand_case_fits_y_exactly_and_the_latency_is_not_stretched(two_ranks) -> None:
    fit = fit_node(two_ranks, load_node("cpu-loopback"), name="cpu-test")
    assert fit.node.cost.comm_slowdown_under_compute == pytest.approx(0.5, rel=1e-3)
    assert fit.report.fitted_value(PATH) == fit.node.cost.comm_slowdown_under_compute
    # stretching the whole time instead would read y off the ratios: 0.481 and 0.483, neither 0.5
    excess = [busy / alone - 1 for _, alone, busy in HAND]
    assert excess == pytest.approx([0.625 / 1.3, 1.0 / 2.07]) and max(excess) < 0.49
    error = fit.report.error_of(Sweep.COMM_UNDER_COMPUTE)
    assert error is not None and error.samples == 2 and error.r_squared is None
    assert error.rms_relative_error < 1e-3


def test_the_fitted_value_reaches_the_cost_model(two_ranks) -> None:
    fit = fit_node(two_ranks, load_node("cpu-loopback"), name="cpu-test")
    model = RooflineCostModel(ClusterSpec(node=fit.node), DType.FP32)
    assert model.comm_slowdown == pytest.approx(0.5, rel=1e-3)
    assert model.compute_slowdown == pytest.approx(0.35, rel=1e-3)  # the other direction, from its own sweep


def test_the_error_is_of_the_ratio_the_model_predicts(two_ranks) -> None:
    """With y = 0 the model predicts no change: the relative errors are alone / busy - 1."""
    fit = fit_node(two_ranks, load_node("cpu-loopback"), name="cpu-test")
    cost = fit.node.cost.model_copy(update={"comm_slowdown_under_compute": 0.0})
    unslowed = fit.node.model_copy(update={"cost": cost})
    (error,) = [e for e in sweep_errors(unslowed, two_ranks) if e.sweep is Sweep.COMM_UNDER_COMPUTE]
    relative = [alone / busy - 1 for _, alone, busy in HAND]  # -0.3247, -0.3257
    assert error.rms_relative_error == pytest.approx(math.sqrt(sum(r * r for r in relative) / 2), rel=1e-9)
    assert error.max_relative_error == pytest.approx(max(abs(r) for r in relative), rel=1e-9)


def test_collectives_no_slower_under_compute_fit_zero(two_ranks) -> None:
    faster = two_ranks.model_copy(update={"comm_under_compute": tuple(
        s.model_copy(update={"seconds_with_compute": 0.98 * s.seconds_alone}) for s in two_ranks.comm_under_compute)})
    fit = fit_node(faster, load_node("cpu-loopback"), name="cpu-test")
    assert fit.node.cost.comm_slowdown_under_compute == 0.0
    (entry,) = [f for f in fit.report.fitted if f.path == PATH]
    assert "bound 0" in entry.note


def test_without_samples_the_base_value_is_kept(two_ranks) -> None:
    base = load_node("cpu-loopback")
    fit = fit_node(two_ranks.model_copy(update={"comm_under_compute": ()}), base, name="cpu-test")
    (entry,) = [k for k in fit.report.kept if k.path == PATH]
    assert entry.value == base.cost.comm_slowdown_under_compute == fit.node.cost.comm_slowdown_under_compute
    assert "no comm-under-compute samples" in entry.reason
    assert fit.report.error_of(Sweep.COMM_UNDER_COMPUTE) is None


def test_the_calibrated_file_carries_y_with_its_sweep_error(cpu_measurements, tmp_path) -> None:
    fit = fit_node(cpu_measurements, load_node("cpu-loopback"), name="cpu-test")
    path = write_calibrated(fit, tmp_path)
    assert load_node(path).cost.comm_slowdown_under_compute == pytest.approx(0.6, rel=1e-3)
    (line,) = [line for line in path.read_text().splitlines() if line.startswith("  comm_slowdown_under_compute: ")]
    assert "comm_under_compute sweep rel. RMS error 0.0%" in line
    error = fit.report.error_of(Sweep.COMM_UNDER_COMPUTE)
    assert error is not None and error.samples == 2 * 3 * 2 * 2  # kinds x sizes x group sizes (2, 4) x loops
    assert any(line.strip().startswith("comm_under_compute") for line in fit.report.summary_lines())


def test_a_wait_for_the_core_and_a_slower_transfer_are_told_apart(two_ranks) -> None:
    # z = 300 us before any byte moves, y = 0.5 on the transfer. A 1 KB all-to-all sends 512 B to the
    # peer: 512 / 1.2e9 s = 0.427 us of transfer after its 50 us latency; the 3 MB cases as above.
    z, small_transfer = 300e-6, 512 / 1.2e9
    small = CommUnderComputeSample(kind=OpKind.ALL_TO_ALL, group_size=2, bytes_per_rank=1024, m=256, n=256, k=256,
                                   dtype=DType.FP32, seconds_alone=50e-6 + small_transfer,
                                   seconds_with_compute=50e-6 + z + 1.5 * small_transfer)
    large = tuple(s.model_copy(update={"seconds_with_compute": s.seconds_with_compute + z}) for s in hand_samples())
    measured = two_ranks.model_copy(update={"comm_under_compute": (small, *large)})
    cost = fit_node(measured, load_node("cpu-loopback"), name="cpu-test").node.cost
    assert cost.comm_latency_under_compute_us == pytest.approx(300.0, rel=1e-3)
    assert cost.comm_slowdown_under_compute == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize(("device", "quick", "expected"), [
    # CPU: 1 KiB, 64 KiB and 4 MiB: latency-bound, the middle, bandwidth-bound; a full run adds 512 KiB,
    # the size of the validation workloads' all-to-alls
    ("cpu", True, (units.KIB, 64 * units.KIB, 4 * units.MIB)),
    ("cpu", False, (units.KIB, 64 * units.KIB, 512 * units.KIB, 4 * units.MIB)),
    # 4 KiB, then 4 KiB x 4^i up to 256 MiB (1 GiB in full), from 64 MiB up
    ("cuda", True, (4 * units.KIB, 64 * units.MIB, 256 * units.MIB)),
    ("cuda", False, (4 * units.KIB, 64 * units.MIB, 256 * units.MIB, units.GIB)),
])
def test_the_collectives_under_compute_are_latency_and_bandwidth_bound_sizes(device, quick, expected) -> None:
    sizes = sizes_for(device, quick)
    assert sizes.comm_under_compute_bytes == expected
    assert set(expected) <= set(sizes.collective_bytes)
    assert bandwidth_bound((1, 5, 9, 12), 9) == (9, 12) and bandwidth_bound((1, 5), 9) == ()



def test_the_wait_for_a_core_is_recovered_beside_the_slower_transfer(cpu_measurements) -> None:
    """The planted CPU waits 2 ms for a core under either loop kernel (0.7 and 5.4 ms), then moves its
    bytes 1.6 times slower; the fit recovers both from the 24 samples."""
    kernels = sorted({s.kernel_seconds or 0.0 for s in cpu_measurements.comm_under_compute})
    assert len(kernels) == 2 and kernels[0] < 2e-3 < kernels[1]
    cost = fit_node(cpu_measurements, load_node("cpu-loopback"), name="cpu-test").node.cost
    assert cost.comm_latency_under_compute_us == pytest.approx(2000.0, rel=1e-3)
    assert cost.comm_slowdown_under_compute == pytest.approx(0.6, rel=1e-3)
