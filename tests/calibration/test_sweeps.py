"""What the microbenchmark measures, checked without running it: cold operand sets and the kernel cases."""

from __future__ import annotations

from collections import Counter

import pytest

from moesim.calibration import sweeps
from moesim.calibration.measurements import KIND_SWEEPS
from moesim.calibration.sweeps import (
    CALIBRATION_MODELS,
    DEFAULT_CACHE_BYTES,
    MAX_OPERAND_SETS,
    group_sizes,
    handoff_plan,
    host_cache_bytes,
    kernel_cases,
    operand_sets,
    overhead_plan,
    sizes_for,
    skew_plan,
)
from moesim.dtypes import DType
from moesim.engine import simulate_plan
from moesim.hardware import RooflineCostModel, load_cluster
from moesim.plan import StreamKind
from moesim.units import GIB, KIB, MIB
from moesim.workload.ops import OpKind, Phase
from moesim.workload.presets import load_workload

VALIDATION_WORKLOADS = ("tiny-moe-a", "tiny-moe-b")


@pytest.mark.parametrize(("set_bytes", "cache", "expected"), [
    (1 * MIB, 16 * MIB, 32),        # 2 x 16 MiB of 1 MiB sets
    (3 * MIB, 16 * MIB, 11),        # ceil(32 / 3)
    (3 * KIB, 16 * MIB, MAX_OPERAND_SETS),  # 10923 wanted: capped
    (40 * MIB, 16 * MIB, 2),        # bigger than the cache alone, still two sets
    (400 * MIB, 16 * MIB, 2),       # 800 MiB fit in the 1 GiB a case may use
    (600 * MIB, 16 * MIB, 1),       # two would not: one set, which outgrows the cache by itself
    (0.0, 16 * MIB, MAX_OPERAND_SETS),
])
def test_operand_sets_span_twice_the_cache(set_bytes, cache, expected) -> None:
    assert operand_sets(set_bytes, cache) == expected
    assert 1 <= expected * set_bytes <= GIB or set_bytes == 0


def test_the_full_run_covers_every_kind_and_phase_the_builder_emits() -> None:
    cases = kernel_cases(sizes_for("cpu", quick=False), 2, DType.FP32)
    kinds = Counter(case.op.kind for case in cases)
    # every memory-bound kind with a sweep, except softmax (attention holds its softmax; no op has that kind)
    assert set(kinds) == {*KIND_SWEEPS, OpKind.MATMUL, OpKind.ATTENTION} - {OpKind.SOFTMAX}
    assert all(not kind.is_collective for kind in kinds)
    matmul_phases = {case.op.phase for case in cases if case.op.kind is OpKind.MATMUL}
    assert matmul_phases == {Phase.FORWARD, Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT}
    assert {case.op.phase for case in cases if case.op.kind is OpKind.OPTIMIZER} == {Phase.OPTIMIZER}
    # both activations' kernels and both permute kernels are there
    roles = {case.op.role for case in cases}
    assert {"residual", "attn_residual", "act", "expert_act", "permute", "unpermute"} <= roles
    # tall-skinny expert matmuls (batched over local experts) and their dX / dW transposes
    assert any("batch" in case.op.dims for case in cases if case.op.phase is Phase.BACKWARD_WEIGHT)


def test_cases_are_distinct_and_under_the_flop_cap() -> None:
    sizes = sizes_for("cpu", quick=True)
    cases = kernel_cases(sizes, 2, DType.FP32)
    assert {case.model for case in cases} == set(sizes.kernel_models) and len(sizes.kernel_models) == 2
    assert all(case.op.flops <= sizes.kernel_flop_cap for case in cases)
    keys = [(c.op.kind, c.op.phase, c.op.role.endswith("residual"), c.op.role == "unpermute",
             tuple(sorted(c.op.dims.items())), c.op.flops, c.op.mem_bytes) for c in cases]
    assert len(keys) == len(set(keys))
    # ln1 and ln2 of a block have one shape: one case, not two per layer
    assert sum(1 for c in cases if c.model == "cal-h96" and c.op.kind is OpKind.LAYERNORM
               and c.op.phase is Phase.FORWARD) == 1


def test_the_quick_run_is_a_subset_of_the_full_one() -> None:
    quick, full = sizes_for("cpu", quick=True), sizes_for("cpu", quick=False)
    assert set(quick.kernel_models) < set(full.kernel_models) == set(CALIBRATION_MODELS)
    assert quick.kernel_flop_cap < full.kernel_flop_cap and quick.repeats < full.repeats
    assert quick.paired_repeats < full.paired_repeats and quick.paired_repeats % 3 == full.paired_repeats % 3 == 0


def test_no_calibration_model_is_a_validation_workload() -> None:
    """The fit must never see the workloads it is judged on: neither their names nor their shapes."""
    shapes = set()
    for name in VALIDATION_WORKLOADS:
        workload = load_workload(name, num_gpus=2, gpu="cpu-rank")
        shapes.add((workload.model.hidden, workload.tokens_per_gpu, workload.model.vocab_size))
    for name, model in CALIBRATION_MODELS.items():
        workload = model.workload(2, DType.FP32)
        assert name not in VALIDATION_WORKLOADS and workload.model.name == name
        assert (workload.model.hidden, workload.tokens_per_gpu, workload.model.vocab_size) not in shapes
        assert workload.model.hidden not in {hidden for hidden, _, _ in shapes}


def test_the_overhead_plan_is_a_chain_of_one_element_adds() -> None:
    plan = overhead_plan(5, world_size=2, dtype=DType.FP32)
    assert plan.graph.num_ranks == 2 and plan.graph.dtype is DType.FP32
    assert plan.streams == {StreamKind.COMPUTE: (0, 1, 2, 3, 4)}
    assert [task.deps for task in plan.tasks] == [(), (0,), (1,), (2,), (3,)]
    for op in plan.graph.ops:  # the harness runs a residual op as torch.add: 1 FLOP, 3 x 4 bytes per element
        assert (op.kind, op.role, dict(op.dims), op.flops, op.mem_bytes) == (
            OpKind.ELEMENTWISE, "residual", {"numel": 1}, 1.0, 12.0)


@pytest.mark.parametrize(("world", "expected"), [(1, []), (2, [2]), (4, [2, 4]), (6, [2, 6]), (8, [2, 4, 8])])
def test_group_sizes_are_powers_of_two_dividing_the_world_and_the_world(world, expected) -> None:
    assert group_sizes(world) == expected


@pytest.mark.parametrize(("reported", "expected"), [(8 * MIB, 8 * MIB), (0, DEFAULT_CACHE_BYTES),
                                                    (-1, DEFAULT_CACHE_BYTES), (ValueError, DEFAULT_CACHE_BYTES)])
def test_the_host_cache_is_what_the_os_reports_else_the_default(monkeypatch, reported, expected) -> None:
    def sysconf(name: str) -> int:
        assert name == "SC_LEVEL3_CACHE_SIZE"
        if reported is ValueError:
            raise ValueError(name)
        return reported

    monkeypatch.setattr(sweeps.os, "sysconf", sysconf)
    assert host_cache_bytes() == expected


def test_the_handoff_plan_alternates_streams_and_the_engine_charges_each_handover() -> None:
    """3 rounds: add, all-to-all, add, ...: every task but the first waits for the other stream, so with
    the hand-over h each of the 5 waits adds h to the iteration (compute and comm times aside)."""
    plan = handoff_plan(3, world_size=2, dtype=DType.FP32)
    assert plan.streams == {StreamKind.COMPUTE: (0, 2, 4), StreamKind.COMM: (1, 3, 5)}
    assert [task.deps for task in plan.tasks] == [(), (0,), (1,), (2,), (3,), (4,)]
    assert all(plan.tasks[dep].stream is not task.stream for task in plan.tasks for dep in task.deps)
    (a2a,) = {plan.graph.ops[t.op].comm for t in plan.tasks if t.stream is StreamKind.COMM}
    assert a2a is not None and a2a.groups == ((0, 1),) and a2a.bytes == 8.0  # one float per peer

    def iteration(handoff_us: float) -> float:
        cluster = load_cluster("cpu-loopback", overrides={"node.cost.stream_handoff_us": handoff_us})
        timeline = simulate_plan(plan, RooflineCostModel(cluster, DType.FP32))
        return max(span.end for span in timeline.spans)

    assert iteration(100.0) - iteration(0.0) == pytest.approx(5 * 100e-6, rel=1e-9)


def test_the_skew_plan_puts_segments_of_matmuls_between_collectives() -> None:
    """2 rounds of 3 matmuls then an all-to-all; with skew 0.1 the engine delays each collective by a tenth
    of its segment's compute, so the iteration grows by 0.1 x the compute of both segments."""
    plan = skew_plan(2, 3, 64, world_size=2, dtype=DType.FP32)
    assert plan.streams == {StreamKind.COMPUTE: (0, 1, 2, 4, 5, 6), StreamKind.COMM: (3, 7)}
    assert [task.deps for task in plan.tasks] == [(), (0,), (1,), (2,), (3,), (4,), (5,), (6,)]
    assert {plan.graph.ops[i].dims["m"] for i in plan.streams[StreamKind.COMPUTE]} == {64}

    def run(skew: float) -> tuple[float, float]:
        cluster = load_cluster("cpu-loopback", overrides={"node.cost.rendezvous_skew": skew})
        timeline = simulate_plan(plan, RooflineCostModel(cluster, DType.FP32))
        compute = sum(span.duration for span in timeline.spans if span.stream is StreamKind.COMPUTE)
        return max(span.end for span in timeline.spans), compute

    (plain, compute), (skewed, _) = run(0.0), run(0.1)
    assert skewed - plain == pytest.approx(0.1 * compute, rel=1e-9)
