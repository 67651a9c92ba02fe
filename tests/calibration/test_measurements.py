"""The measurement schema: FLOP / byte conventions, JSON round trip, and one-line errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moesim.calibration.measurements import (
    AttentionSample,
    CollectiveSample,
    CommUnderComputeSample,
    ElementwiseSample,
    Environment,
    KernelSample,
    LayernormSample,
    MatmulSample,
    TaskOverheadSample,
    load_measurements,
)
from moesim.dtypes import DType
from moesim.errors import MoesimError
from moesim.workload.ops import OpKind, Phase


def test_samples_cost_what_an_op_of_the_same_shape_costs() -> None:
    matmul = MatmulSample(m=2, n=3, k=4, dtype=DType.FP32, seconds=1.0)
    assert (matmul.flops, matmul.mem_bytes) == (2 * 2 * 3 * 4, (8 + 12 + 6) * 4)
    add = ElementwiseSample(numel=10, dtype=DType.BF16, seconds=1.0)
    assert (add.flops, add.mem_bytes) == (10, 3 * 10 * 2)
    # 2 B S^2 H (d_qk + d_v) FLOP; q, k, v and the output, B S H d elements each
    attention = AttentionSample(batch=2, heads=3, seq=5, head_dim=7, dtype=DType.FP16, seconds=1.0)
    assert (attention.flops, attention.mem_bytes) == (2 * 2 * 25 * 3 * 14, 4 * 2 * 5 * 3 * 7 * 2)
    norm = LayernormSample(tokens=4, hidden=8, dtype=DType.FP32, seconds=1.0)
    assert (norm.flops, norm.mem_bytes) == (5 * 32, 2 * 32 * 4)


def test_measurements_survive_a_json_round_trip(cpu_measurements, tmp_path) -> None:
    path = tmp_path / "m.json"
    path.write_text(cpu_measurements.model_dump_json(indent=1))
    assert load_measurements(path) == cpu_measurements


def test_a_bad_file_raises_one_line_naming_the_field(cpu_measurements, tmp_path) -> None:
    path = tmp_path / "m.json"
    path.write_text(cpu_measurements.model_dump_json().replace('"repeats":5', '"repeats":0'))
    with pytest.raises(MoesimError, match=r"repeats: .*greater than or equal to 1"):
        load_measurements(path)
    with pytest.raises(MoesimError, match="measurements: cannot read"):
        load_measurements(tmp_path / "missing.json")


def test_only_measured_collectives_are_accepted() -> None:
    with pytest.raises(ValidationError, match="all_to_all or all_reduce"):
        CollectiveSample(kind=OpKind.MATMUL, group_size=2, bytes_per_rank=1.0, seconds=1.0)
    with pytest.raises(ValidationError):
        MatmulSample(m=2, n=3, k=4, dtype=DType.FP32, seconds=0.0)


def test_kernel_and_overhead_samples() -> None:
    kernel = KernelSample(model="cal-h96", name="loss", kind=OpKind.LOSS, phase=Phase.FORWARD, flops=8.0,
                          mem_bytes=2.0, dtype=DType.FP32, seconds=1e-3, operand_sets=16)
    assert (kernel.kind, kernel.flops, kernel.mem_bytes, kernel.operand_sets) == (OpKind.LOSS, 8.0, 2.0, 16)
    with pytest.raises(ValidationError, match="must be a compute kind"):
        KernelSample(model="m", name="x", kind=OpKind.ALL_TO_ALL, phase=Phase.FORWARD, flops=0.0, mem_bytes=1.0,
                     dtype=DType.FP32, seconds=1.0)
    overhead = TaskOverheadSample(tasks=512, seconds_per_task=5e-6, kernel_seconds=1.5e-6, flops=1.0,
                                  mem_bytes=12.0, dtype=DType.FP32)
    assert overhead.bookkeeping_seconds == pytest.approx(3.5e-6)
    faster = overhead.model_copy(update={"seconds_per_task": 1e-6})  # noise: never a negative bookkeeping
    assert faster.bookkeeping_seconds == 0.0
    assert MatmulSample(m=1, n=1, k=1, dtype=DType.FP32, seconds=1.0).kind is OpKind.MATMUL


def test_older_files_still_load(cpu_measurements, tmp_path) -> None:
    assert cpu_measurements.schema_version == 4 and cpu_measurements.comm_under_compute
    path = tmp_path / "m.json"
    path.write_text(cpu_measurements.model_dump_json(exclude={"kernels", "task_overhead", "comm_under_compute"})
                    .replace('"schema_version":4', '"schema_version":1'))
    old = load_measurements(path)
    assert old.schema_version == 1 and old.kernels == () and old.task_overhead is None
    assert old.bookkeeping_seconds == 0.0 and old.comm_under_compute == ()
    path.write_text(cpu_measurements.model_dump_json(exclude={"comm_under_compute"}).replace(
        '"schema_version":4', '"schema_version":2'))
    two = load_measurements(path)
    assert two.schema_version == 2 and two.kernels == cpu_measurements.kernels and two.comm_under_compute == ()


def test_a_comm_under_compute_sample_is_a_measured_collective_with_its_ratio() -> None:
    sample = CommUnderComputeSample(kind=OpKind.ALL_TO_ALL, group_size=2, bytes_per_rank=4e6, m=256, n=256, k=256,
                                    dtype=DType.FP32, seconds_alone=2e-3, seconds_with_compute=3e-3)
    assert sample.ratio == pytest.approx(1.5)
    with pytest.raises(ValidationError, match="all_to_all or all_reduce"):
        sample.model_validate({**sample.model_dump(), "kind": OpKind.ALL_GATHER})
    with pytest.raises(ValidationError, match="greater than 0"):
        sample.model_validate({**sample.model_dump(), "seconds_with_compute": 0.0})


def test_the_environment_from_a_ranks_description() -> None:
    info = {"torch": "2.13.0+cpu", "backend": "gloo", "world_size": 2, "devices": ["x86_64"], "threads_per_rank": 1,
            "cpu_count": 2, "python": "3.11.9", "platform": None, "nested": {"not": "a scalar"}}
    env = Environment.from_info(info, device="cpu", ranks_per_host=2)
    assert (env.torch, env.backend, env.device, env.world_size, env.ranks_per_host, env.devices) == (
        "2.13.0+cpu", "gloo", "cpu", 2, 2, ("x86_64",))
    assert env.details == {"cpu_count": 2, "python": "3.11.9", "platform": None}
