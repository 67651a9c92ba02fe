"""The measurement schema: FLOP / byte conventions, JSON round trip, and one-line errors."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moesim.calibration.measurements import (
    AttentionSample,
    CollectiveSample,
    ElementwiseSample,
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
    kernel = KernelSample(model="cal-h128", name="loss", kind=OpKind.LOSS, phase=Phase.FORWARD, flops=8.0,
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


def test_a_version_1_file_still_loads(cpu_measurements, tmp_path) -> None:
    path = tmp_path / "m.json"
    path.write_text(cpu_measurements.model_dump_json(exclude={"kernels", "task_overhead"}).replace(
        '"schema_version":2', '"schema_version":1'))
    old = load_measurements(path)
    assert old.schema_version == 1 and old.kernels == () and old.task_overhead is None
    assert old.bookkeeping_seconds == 0.0
