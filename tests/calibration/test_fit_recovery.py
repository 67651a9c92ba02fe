"""The fit recovers PLANTED parameters from measurements the cost model itself produced.

Noise-free, every identifiable parameter comes back to the 4 significant digits the fit keeps (1e-3).
With 2% multiplicative noise per time, tolerances follow from how each parameter is determined:
- rates and efficiencies are slopes over 4-8 samples spanning decades: sigma ~1%, so 5% is 4-5 sigma;
- intercept-like terms (launch, t_half, latencies) rest on the few smallest samples, where they are
  most of the time: their error is 2-3x the noise, so 20%;
- the slowdown s is the excess of a ratio of two noisy times (2.8% each ratio, 2-3 ratios): its
  absolute error has sigma ~0.025, so 0.08;
- the reverse slowdown y likewise, over 12 (CPU) or 18 (GPU) ratios, each divided by a transfer share
  near 1: sigma ~0.028 * (1 + y) / sqrt(12) = 0.013 on the CPU's 0.6, so 0.06.
(60 seeds, measured once: worst cases 3.7%, 15%, 0.067, 0.029.)
"""

from __future__ import annotations

import pytest

from moesim.calibration import Sweep, fit_node
from moesim.dtypes import DType
from moesim.hardware import load_node
from moesim.workload.ops import OpKind

CPU_RATES = ["gpu.peak_tflops.fp32", "gpu.hbm_gb_per_s", "intra.bandwidth_gb_per_s", "cost.attention_efficiency",
             "cost.other_compute_efficiency", "cost.all_to_all_bandwidth_ratio"]
CPU_INTERCEPTS = ["cost.launch_overhead_us", "cost.matmul_half_efficiency_us", "cost.collective_base_latency_us",
                  "intra.latency_us", "cost.all_to_all_peer_latency_us", "cost.all_to_all_base_latency_us",
                  "cost.matmul_half_efficiency_dim",
                  "cost.stream_handoff_us", "cost.rendezvous_skew", "cost.rendezvous_skew_cap_us",
                  "cost.attention_half_efficiency_seq", "cost.compute_wait_under_comm_us"]
GPU_RATES = ["cost.matmul_efficiency", "cost.hbm_efficiency", "cost.attention_efficiency",
             "cost.intra_bandwidth_efficiency", "cost.all_to_all_bandwidth_ratio"]
GPU_INTERCEPTS = CPU_INTERCEPTS[:6]
SLOWDOWN = "cost.compute_slowdown_under_comm"
REVERSE = "cost.comm_slowdown_under_compute"
ONE_HOST = ["network.nic_gbps", "network.latency_us", "cost.inter_bandwidth_efficiency"]
CPU_WORK = ["cost.comm_cpu_us", "cost.comm_cpu_us_per_mib"]  # a CPU host's collectives' work on its cores


def at(node, path: str):
    value = node
    for part in path.split("."):
        value = value[DType(part)] if isinstance(value, dict) else getattr(value, part)
    return value


def test_noise_free_cpu_fit_recovers_every_planted_parameter(cpu_measurements, planted_cpu) -> None:
    planted = planted_cpu(world=4)
    fit = fit_node(cpu_measurements, load_node("cpu-loopback"), name="cpu-test")
    for path in CPU_RATES + CPU_INTERCEPTS + [SLOWDOWN, REVERSE] + CPU_WORK:
        assert at(fit.node, path) == pytest.approx(at(planted, path), rel=1e-3), path
        assert fit.report.fitted_value(path) == at(fit.node, path)
    # A CPU has no datasheet peak: the achieved rates are the peaks, their efficiencies 1.
    assert (fit.node.cost.matmul_efficiency, fit.node.cost.hbm_efficiency,
            fit.node.cost.intra_bandwidth_efficiency) == (1.0, 1.0, 1.0)
    assert fit.node.gpus_per_node == 4 and fit.node.name == "cpu-test"
    assert sorted(fit.report.kept_paths()) == sorted(ONE_HOST)
    # The GEMV (1 x 4096 x 4096) sits on the memory roof, 67.1 MB / 6 GB/s = 11.2 ms against 0.70 ms of
    # FLOPs: had the fit not left it out of the rate, the matmul sweep could not be exact.
    for error in fit.report.sweeps:
        assert error.rms_relative_error < 1e-3, error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_cpu_fit_recovers_within_tolerance(seed, synthesize, planted_cpu, cpu_shapes) -> None:
    planted = planted_cpu(world=4)
    measured = synthesize(planted, world=4, dtype=DType.FP32, shapes=cpu_shapes, group_sizes=(2, 4),
                          noise=0.02, seed=seed)
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    for path in CPU_RATES:
        assert at(fit.node, path) == pytest.approx(at(planted, path), rel=0.05), path
    for path in CPU_INTERCEPTS:
        assert at(fit.node, path) == pytest.approx(at(planted, path), rel=0.20), path
    assert at(fit.node, SLOWDOWN) == pytest.approx(at(planted, SLOWDOWN), abs=0.08)
    assert at(fit.node, REVERSE) == pytest.approx(at(planted, REVERSE), abs=0.06)
    # The collectives' work is what a loop lost: its window (several ms, 2% noise) less its kernels' time,
    # so the fixed part (0.25 ms) carries about +-0.1 ms; the per-MiB part rests on the 16 MB samples.
    assert at(fit.node, CPU_WORK[0]) == pytest.approx(at(planted, CPU_WORK[0]), rel=0.6)
    assert at(fit.node, CPU_WORK[1]) == pytest.approx(at(planted, CPU_WORK[1]), rel=0.1)
    for error in fit.report.sweeps:  # residuals of a right model are the noise: ~2% RMS
        # the interference ratio (1 + work / collective time) inherits the work's error above
        assert error.rms_relative_error < (0.1 if error.sweep is Sweep.INTERFERENCE else 0.05), error


def test_noise_free_gpu_fit_keeps_datasheet_peaks_and_fits_efficiencies(synthesize, planted_gpu, gpu_shapes) -> None:
    base = load_node("dgx-h100")
    planted = planted_gpu(base)
    measured = synthesize(planted, world=8, dtype=DType.BF16, shapes=gpu_shapes, group_sizes=(2, 4, 8))
    fit = fit_node(measured, base, name="h100-test")
    for path in GPU_RATES + GPU_INTERCEPTS + [SLOWDOWN, REVERSE]:
        assert at(fit.node, path) == pytest.approx(at(planted, path), rel=1e-3), path
    assert fit.node.gpu == base.gpu and fit.node.intra.bandwidth_gb_per_s == 450
    assert fit.node.gpus_per_node == 8
    # Layernorm on H100 in bf16: 5 FLOP per 4 bytes. Memory: 4 / (3350e9 * 0.83) = 1.44 ps per element;
    # FLOP roof at the base efficiency: 5 / (66.9e12 * 0.5) = 0.15 ps. On the memory roof, so the sweep
    # says nothing about other_compute_efficiency and the base value stays.
    assert "cost.other_compute_efficiency" in fit.report.kept_paths()
    assert fit.node.cost.other_compute_efficiency == base.cost.other_compute_efficiency
    for path in ("gpu.hbm_gb_per_s", "gpu.peak_tflops.bf16", "intra.bandwidth_gb_per_s"):
        assert path in fit.report.kept_paths()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_gpu_fit_recovers_within_tolerance(seed, synthesize, planted_gpu, gpu_shapes) -> None:
    base = load_node("dgx-h100")
    planted = planted_gpu(base)
    measured = synthesize(planted, world=8, dtype=DType.BF16, shapes=gpu_shapes, group_sizes=(2, 4, 8),
                          noise=0.02, seed=seed)
    fit = fit_node(measured, base, name="h100-test")
    for path in GPU_RATES:
        assert at(fit.node, path) == pytest.approx(at(planted, path), rel=0.05), path
    for path in GPU_INTERCEPTS:
        assert at(fit.node, path) == pytest.approx(at(planted, path), rel=0.20), path
    assert at(fit.node, SLOWDOWN) == pytest.approx(at(planted, SLOWDOWN), abs=0.08)
    assert at(fit.node, REVERSE) == pytest.approx(at(planted, REVERSE), abs=0.06)


def test_one_group_size_pins_each_kinds_alpha_on_the_base_hop(synthesize, planted_cpu, cpu_shapes) -> None:
    """At one group size (2) the all-to-all's alpha is a2a_base + hop + peer and the all-reduce's
    base + 2 hop: two numbers, four terms. Planted with cpu-loopback's hop (50 us) and a per-peer term of
    20 us, the hop and per-peer terms keep cpu-loopback's 50 and 10 and the bases take the rest: the
    rings' base its planted 40, the all-to-all's 25 + 20 - 10 = 35."""
    planted = planted_cpu(world=2, all_to_all_peer_latency_us=20.0)
    planted = planted.model_copy(update={"intra": planted.intra.model_copy(update={"latency_us": 50.0})})
    measured = synthesize(planted, world=2, dtype=DType.FP32, shapes=cpu_shapes)
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    (peer,) = [k for k in fit.report.kept if k.path == "cost.all_to_all_peer_latency_us"]
    assert peer.value == 10.0 and "group sizes [2]" in peer.reason
    assert "intra.latency_us" in fit.report.kept_paths() and fit.node.intra.latency_us == 50.0
    assert fit.node.cost.collective_base_latency_us == pytest.approx(40.0, rel=1e-3)
    assert fit.node.cost.all_to_all_base_latency_us == pytest.approx(35.0, rel=1e-3)
    assert fit.node.intra.bandwidth_gb_per_s == pytest.approx(1.5, rel=1e-3)
    assert fit.node.cost.all_to_all_bandwidth_ratio == pytest.approx(0.8, rel=1e-3)
    for sweep in (Sweep.ALL_TO_ALL, Sweep.ALL_REDUCE):  # the kept values cost no accuracy at this size
        assert fit.report.error_of(sweep).rms_relative_error < 1e-3


def test_one_group_size_with_a_ring_faster_than_the_base_hop_pins_the_hop(synthesize, planted_cpu,
                                                                          cpu_shapes) -> None:
    """Planted hop 15 us: the all-reduce's alpha, 40 + 2 x 15 = 70 us, is under cpu-loopback's two hops
    (100 us), so keeping the hop would leave the rings' base at its bound 0 and the sweep unexplained.
    The hop and the all-to-all's base take the alphas instead, the rings' base kept at cpu-loopback's 50:
    hop = (70 - 50) / 2 = 10, a2a_base = 25 + 15 + 10 - 10 - 10 = 30."""
    measured = synthesize(planted_cpu(world=2), world=2, dtype=DType.FP32, shapes=cpu_shapes)
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    assert "cost.collective_base_latency_us" in fit.report.kept_paths()
    assert fit.node.cost.collective_base_latency_us == 50.0
    assert fit.node.intra.latency_us == pytest.approx(10.0, rel=1e-3)
    assert fit.node.cost.all_to_all_base_latency_us == pytest.approx(30.0, rel=1e-3)
    for sweep in (Sweep.ALL_TO_ALL, Sweep.ALL_REDUCE):
        assert fit.report.error_of(sweep).rms_relative_error < 1e-3


@pytest.mark.parametrize("kind", [OpKind.ALL_REDUCE, OpKind.ALL_TO_ALL])
def test_one_kind_of_collective_sets_the_bandwidth_through_the_kept_ratio(kind, synthesize, planted_cpu,
                                                                          cpu_shapes) -> None:
    """Only one kind's sweep: no ratio between two rates, so cpu-loopback's ratio (1.0) is kept and the
    kind's rate sets the fabric's. The all-reduce's is the planted 1.5 GB/s; the all-to-all's is 0.8 of it,
    1.2 GB/s, which the kept ratio of 1 writes as the fabric's. (Planted with cpu-loopback's hop, which one
    kind alone cannot separate from its base: kept, it leaves the latencies exact.)"""
    planted = planted_cpu(world=4)
    planted = planted.model_copy(update={"intra": planted.intra.model_copy(update={"latency_us": 50.0})})
    measured = synthesize(planted, world=4, dtype=DType.FP32, shapes=cpu_shapes, group_sizes=(2, 4))
    one_kind = measured.model_copy(update={"collectives": tuple(s for s in measured.collectives if s.kind is kind)})
    fit = fit_node(one_kind, load_node("cpu-loopback"), name="cpu-test")
    (ratio,) = [k for k in fit.report.kept if k.path == "cost.all_to_all_bandwidth_ratio"]
    assert ratio.value == 1.0 and "one rate" in ratio.reason
    expected = 1.5 if kind is OpKind.ALL_REDUCE else 1.2
    assert fit.node.intra.bandwidth_gb_per_s == pytest.approx(expected, rel=1e-3)


def test_memory_bound_layernorm_keeps_the_base_or_writes_the_bound(synthesize, planted_cpu, cpu_shapes) -> None:
    """Planted at 0.5, layernorm (5 FLOP per 8 bytes) is on the memory roof. It leaves it only below
    e* = 5 * 6 GB/s / (8 * 50 GFLOP/s) = 0.075. cpu-loopback's 0.5 is above e*: kept. A base at 0.01
    would contradict the data: the bound e* is written instead."""
    measured = synthesize(planted_cpu(other_compute_efficiency=0.5), world=2, dtype=DType.FP32, shapes=cpu_shapes)
    base = load_node("cpu-loopback")
    fit = fit_node(measured, base, name="cpu-test")
    assert "cost.other_compute_efficiency" in fit.report.kept_paths()
    assert fit.node.cost.other_compute_efficiency == 0.5
    low_base = base.model_copy(update={"cost": base.cost.model_copy(update={"other_compute_efficiency": 0.01})})
    bounded = fit_node(measured, low_base, name="cpu-test")
    assert bounded.node.cost.other_compute_efficiency == pytest.approx(0.075, rel=1e-3)
    (entry,) = [f for f in bounded.report.fitted if f.path == "cost.other_compute_efficiency"]
    assert "lower bound" in entry.note


def test_missing_sweeps_keep_base_values(synthesize, planted_cpu, cpu_shapes) -> None:
    """Only the matmul sweep: the launch overhead stays cpu-loopback's 10 us, 2 us above the planted 8, and
    the size term absorbs the difference (t_half 28 us for the planted 30, the shape term planted and
    fitted at 0), so the samples are explained and the rate is the planted 50 GFLOP/s. Planted with
    cpu-loopback's memory bandwidth (10 GB/s), which stays too: the GEMV (1 x 4096 x 4096) is on the memory
    roof, and a kept roof other than the planted one would leave its time to the shape term (its
    harmonic-mean dimension is 3), as an operand-bound kernel."""
    planted = planted_cpu(world=4, matmul_half_efficiency_dim=0.0)
    planted = planted.model_copy(update={"gpu": planted.gpu.model_copy(update={"hbm_gb_per_s": 10.0})})
    measured = synthesize(planted, world=4, dtype=DType.FP32, shapes=cpu_shapes, group_sizes=(2, 4))
    only_matmul = measured.model_copy(update={"elementwise": (), "attention": (), "layernorm": (),
                                                      "collectives": (), "interference": (),
                                                      "comm_under_compute": ()})
    base = load_node("cpu-loopback")
    fit = fit_node(only_matmul, base, name="cpu-test")
    assert fit.node.gpu.peak_tflops[DType.FP32] == pytest.approx(0.05, rel=1e-3)
    assert fit.node.cost.matmul_half_efficiency_us == pytest.approx(28.0, rel=1e-3)
    (matmul,) = [e for e in fit.report.sweeps if e.sweep is Sweep.MATMUL]
    assert matmul.rms_relative_error < 1e-3
    kept = fit.report.kept_paths()
    for path in ("cost.launch_overhead_us", "gpu.hbm_gb_per_s", "cost.attention_efficiency",
                 "cost.other_compute_efficiency", "intra.bandwidth_gb_per_s", "intra.latency_us",
                 "cost.collective_base_latency_us", "cost.all_to_all_peer_latency_us",
                 "cost.all_to_all_base_latency_us", "cost.all_to_all_bandwidth_ratio", SLOWDOWN, REVERSE):
        assert path in kept, path
        assert at(fit.node, path) == at(base, path), path
    assert [e.sweep for e in fit.report.sweeps] == [Sweep.MATMUL]


def test_a_run_across_hosts_keeps_every_collective_parameter(cpu_measurements) -> None:
    env = cpu_measurements.environment.model_copy(update={"ranks_per_host": 2})
    spanning = cpu_measurements.model_copy(update={"environment": env})
    fit = fit_node(spanning, load_node("cpu-loopback"), name="cpu-test")
    for path in ("intra.bandwidth_gb_per_s", "intra.latency_us", "cost.collective_base_latency_us",
                 "cost.all_to_all_peer_latency_us", "cost.intra_bandwidth_efficiency",
                 "cost.all_to_all_base_latency_us", "cost.all_to_all_bandwidth_ratio"):
        (entry,) = [k for k in fit.report.kept if k.path == path]
        assert "spanned hosts" in entry.reason
    assert fit.report.error_of(Sweep.ALL_TO_ALL) is None and fit.node.gpus_per_node == 2


def test_no_slowdown_under_communication_fits_zero(cpu_measurements) -> None:
    """Compute loops that ran their kernels no slower under the collectives (each window a little under its
    kernels' time alone): on a CPU host the collectives' work is written at its bound 0, and the slowdown
    is 0 there anyway (the work replaces it)."""
    quick = tuple(s.model_copy(update={"compute_window_seconds": 0.97 * (s.compute_kernels or 1)
                                       * (s.kernel_seconds or 1)}) for s in cpu_measurements.comm_under_compute)
    fit = fit_node(cpu_measurements.model_copy(update={"comm_under_compute": quick}), load_node("cpu-loopback"),
                   name="cpu-test")
    assert fit.node.cost.compute_slowdown_under_comm == 0.0
    assert (fit.node.cost.comm_cpu_us, fit.node.cost.comm_cpu_us_per_mib) == (0.0, 0.0)
    for path in CPU_WORK:
        (entry,) = [f for f in fit.report.fitted if f.path == path]
        assert "bound 0" in entry.note and entry.sweeps == (Sweep.COMM_UNDER_COMPUTE,)


def test_without_compute_loops_the_interference_sweep_sets_the_slowdown(synthesize, planted_cpu, cpu_shapes) -> None:
    """Measurements from before the loops were kept (planted with a slowdown, not work): the matmul under a
    loop of collectives decides, and a matmul that ran 3% faster under it gives 0."""
    node = planted_cpu(world=4, compute_slowdown_under_comm=0.35, comm_cpu_us=0.0, comm_cpu_us_per_mib=0.0)
    cpu_measurements = synthesize(node, world=4, dtype=DType.FP32, shapes=cpu_shapes, group_sizes=(2, 4))
    bare = tuple(s.model_copy(update={"compute_window_seconds": None, "compute_kernels": None})
                 for s in cpu_measurements.comm_under_compute)
    faster = tuple(s.model_copy(update={"seconds_with_comm": 0.97 * s.seconds_alone})
                   for s in cpu_measurements.interference)
    measured = cpu_measurements.model_copy(update={"comm_under_compute": bare})
    planted = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    assert planted.node.cost.compute_slowdown_under_comm == pytest.approx(0.35, rel=1e-3)
    (entry,) = [f for f in planted.report.fitted if f.path == SLOWDOWN]
    assert entry.sweeps == (Sweep.INTERFERENCE,)
    fit = fit_node(measured.model_copy(update={"interference": faster}), load_node("cpu-loopback"), name="cpu-test")
    assert fit.node.cost.compute_slowdown_under_comm == 0.0


def test_a_gpu_faster_than_its_datasheet_is_capped_at_efficiency_one(synthesize, planted_gpu, gpu_shapes) -> None:
    base = load_node("dgx-h100")
    fast_memory = planted_gpu(base, hbm_efficiency=1.0)
    fast_memory = fast_memory.model_copy(update={"gpu": fast_memory.gpu.model_copy(update={"hbm_gb_per_s": 4020.0})})
    measured = synthesize(fast_memory, world=8, dtype=DType.BF16, shapes=gpu_shapes, group_sizes=(2, 4, 8))
    fit = fit_node(measured, base, name="h100-test")
    assert fit.node.cost.hbm_efficiency == 1.0 and fit.node.gpu.hbm_gb_per_s == 3350
    (entry,) = [f for f in fit.report.fitted if f.path == "cost.hbm_efficiency"]
    assert "1.2 of the datasheet" in entry.note  # 4020 / 3350 = 1.2


def test_a_wait_that_keeps_rising_gets_no_cap(synthesize, planted_cpu, cpu_shapes) -> None:
    """Planted without a cap, the wait rises at every segment length: the slope comes back, the cap is kept
    from the base (none) with the reason."""
    measured = synthesize(planted_cpu(world=2, rendezvous_skew_cap_us=None), world=2, dtype=DType.FP32,
                          shapes=cpu_shapes)
    fit = fit_node(measured, load_node("cpu-loopback"), name="cpu-test")
    assert fit.node.cost.rendezvous_skew == pytest.approx(0.04, rel=1e-3)
    assert fit.node.cost.rendezvous_skew_cap_us is None
    (entry,) = [k for k in fit.report.kept if k.path == "cost.rendezvous_skew_cap_us"]
    assert "no cap" in entry.reason
    (line,) = [line for line in fit.report.summary_lines() if "cost.rendezvous_skew_cap_us" in line]
    assert line.split()[1] == "none"  # a value the base leaves unset prints as such


def test_the_compute_wait_is_the_woken_tasks_wait_beyond_the_hand_over(planted_cpu) -> None:
    from moesim.calibration.kernel_fit import fit_compute_wait
    from moesim.calibration.measurements import WokenUnderCommSample

    node = planted_cpu(stream_handoff_us=50.0)
    step = fit_compute_wait(node, WokenUnderCommSample(rounds=8, busy_bytes=4e6, seconds=750e-6,
                                                       collective_seconds=3e-3))
    assert step.updates["cost.compute_wait_under_comm_us"] == pytest.approx(700.0)
    # waited out the whole collective: only a lower bound, and the file says so
    bound = fit_compute_wait(node, WokenUnderCommSample(rounds=8, busy_bytes=4e6, seconds=2.05e-3,
                                                        collective_seconds=2e-3))
    assert bound.updates["cost.compute_wait_under_comm_us"] == pytest.approx(2000.0)
    assert "lower bound" in bound.fitted[0].note
    (kept,) = fit_compute_wait(node, None).kept
    assert kept.path == "cost.compute_wait_under_comm_us" and kept.value == node.cost.compute_wait_under_comm_us
