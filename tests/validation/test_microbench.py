"""The real microbenchmark on 2 gloo ranks (--quick): its JSON validates and makes physical sense, the
kernel sweep ran the harness's kernels on the calibration models' ops, the executor's task overhead was
measured, the larger collectives were timed under compute, it fits, and the calibrated spec loads. One
torchrun, through ``calibrate``, whose microbenchmark JSON the format checks read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from moesim import units  # noqa: E402
from moesim.calibration import Sweep, load_measurements  # noqa: E402
from moesim.calibration.measurements import KIND_SWEEPS  # noqa: E402
from moesim.calibration.sweeps import kernel_cases, sizes_for  # noqa: E402
from moesim.dtypes import DType  # noqa: E402
from moesim.errors import MoesimError  # noqa: E402
from moesim.hardware import load_cluster  # noqa: E402
from moesim.validation.calibrate import calibrate, fit_and_write  # noqa: E402
from moesim.workload.ops import OpKind, Phase  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("microbench")


@pytest.fixture(scope="module")
def calibrated(folder: Path):
    """One quick calibration end to end; its microbenchmark's own JSON kept for the tests of the format."""
    return calibrate("cpu-calibrate-test", nproc=2, out_dir=folder, quick=True, timeout_s=120,
                     measurements_out=folder / "measurements.json")


@pytest.fixture(scope="module")
def measured(calibrated, folder: Path) -> Path:
    return folder / "measurements.json"


def test_the_json_validates_and_describes_the_run(measured: Path) -> None:
    m = load_measurements(measured)
    env = m.environment
    assert (env.backend, env.device, env.world_size, env.ranks_per_host) == ("gloo", "cpu", 2, 2)
    assert env.torch.startswith("2.") and env.threads_per_rank >= 1
    for sweep in (m.matmul, m.elementwise, m.attention, m.layernorm, m.collectives):
        assert sweep and all(s.seconds > 0 and len(s.rank_seconds) == 2 for s in sweep)
    assert {(s.kind, s.group_size) for s in m.collectives} == {(OpKind.ALL_TO_ALL, 2), (OpKind.ALL_REDUCE, 2)}
    assert m.interference and all(s.seconds_alone > 0 and s.seconds_with_comm > 0 for s in m.interference)


def test_the_chosen_collectives_were_timed_alone_and_under_compute(measured: Path) -> None:
    m = load_measurements(measured)
    sizes = sizes_for("cpu", quick=True)
    loops = {(s.m, s.n, s.k) for s in m.comm_under_compute}
    assert loops == set(sizes.comm_under_compute_matmuls) and len(loops) >= 2  # several kernel lengths
    expected = {(kind, 2, float(nbytes), shape) for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE)
                for nbytes in sizes.comm_under_compute_bytes  # whole float32 chunks already: nothing rounded
                for shape in sizes.comm_under_compute_matmuls}
    assert {(s.kind, s.group_size, s.bytes_per_rank, (s.m, s.n, s.k)) for s in m.comm_under_compute} == expected
    for sample in m.comm_under_compute:
        assert sample.dtype is DType.FP32 and sample.kernel_seconds is not None and sample.kernel_seconds > 0
        assert len(sample.rank_seconds_alone) == len(sample.rank_seconds_with_compute) == 2
        assert sample.seconds_with_compute == max(sample.rank_seconds_with_compute) > 0
        assert sample.seconds_alone == max(sample.rank_seconds_alone) > 0
    # a loop of bigger matmuls runs longer kernels
    lengths = sorted({((s.m * s.n * s.k), s.kernel_seconds) for s in m.comm_under_compute})
    assert [t for _, t in lengths] == sorted(t for _, t in lengths)


def test_the_two_stream_plans_were_timed(measured: Path) -> None:
    m = load_measurements(measured)
    sizes = sizes_for("cpu", quick=True)
    assert m.stream_handoff is not None and m.stream_handoff.rounds == sizes.handoff_rounds
    woken = m.woken_under_comm
    assert woken is not None and woken.busy_bytes == sizes.woken_bytes and woken.collective_seconds > 0
    assert [s.segment for s in m.rendezvous] == list(sizes.skew_segments)
    lengths = [s.segment_seconds for s in m.rendezvous]
    assert lengths == sorted(lengths) and lengths[0] > 0  # more matmuls per segment: more compute
    assert all(s.wait_seconds > 0 for s in m.rendezvous)


def test_bigger_work_takes_longer(measured: Path) -> None:
    m = load_measurements(measured)
    squares = sorted((s.m, s.seconds) for s in m.matmul if s.m == s.n == s.k and s.m >= 64)
    assert len(squares) >= 4
    assert [t for _, t in squares] == sorted(t for _, t in squares), squares  # 8x the FLOPs per doubling
    for samples, size in ((m.elementwise, "numel"), (m.layernorm, "tokens"), (m.attention, "batch")):
        smallest, largest = min(samples, key=lambda s: s.flops), max(samples, key=lambda s: s.flops)
        assert largest.seconds > smallest.seconds, size
    for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
        runs = sorted((s.bytes_per_rank, s.seconds) for s in m.collectives_of(kind))
        # 4 MB at ~1.5 GB/s takes ~3 ms; gloo on loopback sometimes stalls a small collective for as long,
        # so the largest is compared with the fastest of the smaller ones
        assert runs[-1][1] > min(t for _, t in runs[:-1]), kind


def test_the_kernel_sweep_ran_every_kind_of_the_calibration_models_cold(measured: Path) -> None:
    m = load_measurements(measured)
    sizes = sizes_for("cpu", quick=True)
    cases = kernel_cases(sizes, 2, DType.FP32)
    assert [(k.model, k.name) for k in m.kernels] == [(c.model, c.op.name) for c in cases]
    for sample, case in zip(m.kernels, cases, strict=True):
        assert (sample.kind, sample.phase, sample.flops, sample.mem_bytes) == (
            case.op.kind, case.op.phase, case.op.flops, case.op.mem_bytes)
        assert sample.seconds > 0 and len(sample.rank_seconds) == 2
    assert {k.kind for k in m.kernels} >= {OpKind.LOSS, OpKind.OPTIMIZER, OpKind.PERMUTE, OpKind.ELEMENTWISE,
                                           OpKind.LAYERNORM, OpKind.EMBEDDING, OpKind.ROUTER, OpKind.MATMUL}
    # cold operands: every compute case cycled through at least two independent sets
    for sample in (*m.matmul, *m.elementwise, *m.attention, *m.layernorm, *m.kernels):
        assert sample.operand_sets >= 2, sample
    # a GELU costs 8 FLOP per element and a ReLU 1, on the same bytes: the GELU of one model is slower
    acts = {k.name: k.seconds for k in m.kernels if k.model == "cal-h96" and k.phase is Phase.FORWARD}
    assert acts["L1.act"] > acts["L0.expert_act"]  # 262144 elements each: GELU (dense) vs ReLU (experts)


def test_the_executor_adds_bookkeeping_to_every_task(measured: Path) -> None:
    overhead = load_measurements(measured).task_overhead
    assert overhead is not None and overhead.tasks == sizes_for("cpu", quick=True).overhead_tasks
    assert overhead.seconds_per_task > overhead.kernel_seconds > 0


def test_the_measurements_fit_and_the_spec_loads(measured: Path, tmp_path: Path) -> None:
    m = load_measurements(measured)
    result = fit_and_write(m, "cpu-microbench-test", base="cpu-loopback", out_dir=tmp_path)
    node = load_cluster(result.path).node
    assert node == result.fit.node and node.gpu.device == "cpu" and node.gpus_per_node == 2
    assert node.gpu.peak_tflops["fp32"] > 0 and node.intra.bandwidth_gb_per_s > 0
    assert result.report.error_of(Sweep.MATMUL).rms_relative_error < 0.5  # GEMMs are what a roofline fits best
    # every memory-bound kind measured has its efficiency fitted, or kept with the reason
    decided = {e.path for e in result.report.fitted} | set(result.report.kept_paths())
    for kind in {k.kind for k in m.kernels} - {OpKind.MATMUL, OpKind.ATTENTION}:
        assert f"cost.kind_efficiency.{kind.value}" in decided, kind
        assert result.report.error_of(KIND_SWEEPS[kind]) is not None, kind
    assert node.cost.kind_efficiency and all(0 < e <= 1 for e in node.cost.kind_efficiency.values())
    assert node.cost.launch_overhead_us >= units.to_us(m.bookkeeping_seconds) > 0
    assert node.cost.comm_slowdown_under_compute >= 0 and node.cost.comm_latency_under_compute_us >= 0
    assert result.report.fitted_value("cost.comm_slowdown_under_compute") == node.cost.comm_slowdown_under_compute
    assert (result.report.fitted_value("cost.comm_latency_under_compute_us")
            == node.cost.comm_latency_under_compute_us)
    assert result.report.error_of(Sweep.COMM_UNDER_COMPUTE).samples == len(m.comm_under_compute) == 12


def test_calibrate_runs_end_to_end(calibrated, folder: Path) -> None:
    result = calibrated
    assert result.path == folder / "cpu-calibrate-test.yaml"
    assert load_cluster(result.path).node == result.fit.node
    assert result.measurements.environment.world_size == 2
    assert "fitted by moesim calibrate" in result.path.read_text()
    assert result.summary().startswith(f"wrote {result.path}") and "fit error per sweep" in result.summary()
    assert json.loads(json.dumps(result.to_dict()))["node"]["name"] == "cpu-calibrate-test"


def test_calibrate_refuses_a_bad_name_before_running_anything(tmp_path: Path) -> None:
    with pytest.raises(MoesimError, match="^name: 'cpu-loopback' is a hand-written node preset"):
        calibrate("cpu-loopback", out_dir=tmp_path, timeout_s=1)
    assert list(tmp_path.iterdir()) == []


def test_a_collective_counts_from_its_groups_last_start():
    from moesim.validation.bench_comm import since_rendezvous

    mine = [(1.0, 1.5), (2.0, 2.2)]
    # call 0: the peer started at 1.3, so 0.2 s from the rendezvous; call 1: this rank was last (2.0)
    assert since_rendezvous(mine, [[1.0, 2.0], [1.3, 1.9]]) == pytest.approx([0.2, 0.2])
    assert since_rendezvous([(1.0, 1.1)], [[1.0], [1.1000001]]) == [0.0]  # clocks a hair apart: never negative
