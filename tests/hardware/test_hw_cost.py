"""RooflineCostModel compute times and capacities, checked against hand-computed numbers."""

from __future__ import annotations

import pytest

from moesim.errors import MoesimError
from moesim.hardware import CostModel, DType, RooflineCostModel, load_cluster
from moesim.workload.ops import Op, OpKind, Phase, Role

GB = 1e9
US = 1e-6
P4DE_EXACT = {  # turn off every default we do not want in a hand computation
    "node.cost.matmul_efficiency": 0.8,
    "node.cost.matmul_half_efficiency_us": 0.0,
    "node.cost.hbm_efficiency": 0.9,
    "node.cost.other_compute_efficiency": 0.5,
    "node.cost.launch_overhead_us": 5.0,
}


def test_the_model_satisfies_the_engine_protocol(tiny_cluster) -> None:
    model: CostModel = RooflineCostModel(tiny_cluster(), DType.FP32)
    assert model.num_ranks == 4


def test_large_matmul_on_a100_runs_at_its_fp16_peak_times_efficiency(compute_op, task) -> None:
    model = RooflineCostModel(load_cluster("p4de.24xlarge", overrides=P4DE_EXACT), DType.FP16)
    flops = 2 * 4096**3
    op = compute_op(OpKind.MATMUL, flops=flops, mem_bytes=3 * 4096**2 * 2)
    expected = flops / (312e12 * 0.8) + 5 * US  # A100 dense FP16 312 TFLOP/s; HBM term is far smaller
    assert model.compute_time(op, task(), rank=0) == pytest.approx(expected)


def test_fp32_matmul_uses_the_fp32_peak_not_tf32(compute_op, task) -> None:
    model = RooflineCostModel(load_cluster("p4de.24xlarge", overrides=P4DE_EXACT), DType.FP32)
    op = compute_op(OpKind.MATMUL, flops=1e12, mem_bytes=0)
    assert model.compute_time(op, task(), rank=0) == pytest.approx(1e12 / (19.5e12 * 0.8) + 5 * US)


def test_small_matmuls_pay_the_size_term(tiny_cluster, compute_op, task) -> None:
    cluster = tiny_cluster(matmul_efficiency=0.5, matmul_half_efficiency_us=10.0)  # fp16 peak 100 TFLOP/s
    model = RooflineCostModel(cluster, DType.FP16)
    small = compute_op(OpKind.MATMUL, flops=1e9, mem_bytes=0)  # 10 us at peak: reaches half of 0.5
    large = compute_op(OpKind.MATMUL, flops=1e12, mem_bytes=0)  # 10 ms at peak: ~0.5
    assert model.compute_time(small, task(), 0) == pytest.approx(1e9 / (100e12 * 0.25))
    assert model.compute_time(large, task(), 0) == pytest.approx((10e-3 + 10 * US) / 0.5)


def test_elementwise_op_is_memory_bound(compute_op, task) -> None:
    model = RooflineCostModel(load_cluster("p4de.24xlarge", overrides=P4DE_EXACT), DType.FP16)
    numel = 100_000_000
    op = compute_op(OpKind.ELEMENTWISE, flops=numel, mem_bytes=3 * 2 * numel)  # two reads, one write
    hbm_time = 3 * 2 * numel / (2039 * GB * 0.9)  # A100 80GB: 2,039 GB/s
    flop_time = numel / (19.5e12 * 0.5)  # vector (FP32) roof, ~10 us
    assert hbm_time > flop_time
    assert model.compute_time(op, task(), 0) == pytest.approx(hbm_time + 5 * US)


def test_a_part_does_its_fraction_of_the_work_and_pays_a_whole_launch(tiny_cluster, compute_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(launch_overhead_us=4.0), DType.FP32)  # fp32 peak 10 TFLOP/s
    op = compute_op(OpKind.MATMUL, flops=4e10, mem_bytes=0)
    whole = model.compute_time(op, task(), 0)
    quarter = model.compute_time(op, task(fraction=0.25), 0)
    assert whole == pytest.approx(4e-3 + 4 * US)
    assert quarter == pytest.approx(1e-3 + 4 * US)
    assert 4 * quarter > whole  # partitioning costs extra launches


def test_uneven_ranks_scale_their_work(tiny_cluster, compute_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    op = compute_op(OpKind.MATMUL, flops=1e10, mem_bytes=0, rank_scale=(1.0, 2.0, 0.5, 0.0))
    times = [model.compute_time(op, task(), r) for r in range(4)]
    assert times == pytest.approx([1e-3, 2e-3, 0.5e-3, 0.0])


def test_attention_uses_its_own_efficiency(tiny_cluster, compute_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(attention_efficiency=0.25), DType.FP16)
    op = compute_op(OpKind.ATTENTION, flops=1e11, mem_bytes=0)
    assert model.compute_time(op, task(), 0) == pytest.approx(1e11 / (100e12 * 0.25))


def test_collectives_are_not_compute(tiny_cluster, comm_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    with pytest.raises(AssertionError):
        model.compute_time(comm_op(OpKind.ALL_REDUCE, ((0, 1),), 1e6), task(), 0)


def test_a_dtype_the_gpu_lacks_is_a_user_error() -> None:
    with pytest.raises(MoesimError, match="dtype: V100-SXM2-32GB has no bf16"):
        RooflineCostModel(load_cluster("p3dn.24xlarge"), DType.BF16)


def test_interference_comes_from_the_cost_params(tiny_cluster) -> None:
    assert (
        RooflineCostModel(tiny_cluster(compute_slowdown_under_comm=0.2), DType.FP32).compute_slowdown == 0.2
    )


def test_p3dn_capacities_share_one_100g_nic_per_node() -> None:
    cluster = load_cluster(
        "p3dn.24xlarge",
        2,
        {
            "node.cost.intra_bandwidth_efficiency": 0.8,
            "node.cost.inter_bandwidth_efficiency": 0.9,
        },
    )
    model = RooflineCostModel(cluster, DType.FP32)
    ranks, nics = 16, 2
    assert model.capacities.shape == (2 * ranks + 2 * nics,)
    assert model.capacities[: 2 * ranks] == pytest.approx(150 * GB * 0.8)  # NVLink2 300 bidirectional / 2
    assert model.capacities[2 * ranks :] == pytest.approx(100e9 / 8 * 0.9)  # 12.5 GB/s line rate
    assert [model.resource_name(i) for i in (0, 17, 32, 33, 34, 35)] == [
        "rank0.intra_out",
        "rank1.intra_in",
        "node0.nic0.out",
        "node1.nic0.out",
        "node0.nic0.in",
        "node1.nic0.in",
    ]


def test_p4de_capacities_have_four_100g_nics_per_node_and_oversubscription_divides_them() -> None:
    cluster = load_cluster(
        "p4de.24xlarge",
        2,
        {
            "node.cost.intra_bandwidth_efficiency": 0.75,
            "node.cost.inter_bandwidth_efficiency": 1.0,
            "node.network.oversubscription": 2.0,
        },
    )
    model = RooflineCostModel(cluster, DType.FP32)
    assert model.capacities.shape == (2 * 16 + 2 * 8,)
    assert model.capacities[:32] == pytest.approx(300 * GB * 0.75)
    assert model.capacities[32:] == pytest.approx(12.5 * GB / 2)
    assert model.resource_name(32 + 8 + 7) == "node1.nic3.in"
    with pytest.raises(IndexError):
        model.resource_name(48)


def test_single_node_clusters_still_have_nic_resources(tiny_cluster) -> None:
    model = RooflineCostModel(tiny_cluster(num_nodes=1), DType.FP32)
    assert [model.resource_name(i) for i in range(4, 8)] == [
        "node0.nic0.out",
        "node0.nic1.out",
        "node0.nic0.in",
        "node0.nic1.in",
    ]


def test_matmuls_pay_the_shape_term_on_the_harmonic_mean_of_their_dimensions(tiny_cluster, task) -> None:
    model = RooflineCostModel(tiny_cluster(matmul_efficiency=1.0, matmul_half_efficiency_us=0.0,
                                           matmul_half_efficiency_dim=64.0, launch_overhead_us=0.0), DType.FP32)
    m = n = k = 256  # harmonic mean 256: 1 + 64 / 256 = 1.25 times the time at the fp32 peak (10 TFLOP/s)
    flops = 2.0 * m * n * k

    def op(phase: Phase, dims: dict[str, int]) -> Op:
        return Op(id=0, name="x.matmul", role=Role.FC1, kind=OpKind.MATMUL, phase=phase, layer=0, flops=flops,
                  mem_bytes=0.0, dims=dims)

    assert model.compute_time(op(Phase.FORWARD, {"m": m, "n": n, "k": k}), task(), 0) == pytest.approx(
        flops / 10e12 * 1.25)
    # a quarter of the tokens: m = 64, harmonic mean 3 / (1/64 + 2/256) = 128, so 1.5: the two halves of a
    # split matmul together take longer than the whole. A weight gradient's tokens are its k: a quarter
    # leaves k = 64, also 1.5; a sixteenth leaves k = 16, 3 / (1/16 + 2/256) = 42.67, so 1 + 1.5 = 2.5
    assert model.compute_time(op(Phase.FORWARD, {"m": m, "n": n, "k": k}), task(fraction=0.25), 0) == pytest.approx(
        flops / 4 / 10e12 * 1.5)
    weight = op(Phase.BACKWARD_WEIGHT, {"m": n, "n": k, "k": m})
    assert model.compute_time(weight, task(fraction=1 / 4), 0) == pytest.approx(flops / 4 / 10e12 * 1.5)
    assert model.compute_time(weight, task(fraction=1 / 16), 0) == pytest.approx(flops / 16 / 10e12 * 2.5)
    # a skinny GEMM: 2048 x 128 x 256, harmonic mean 3 / (1/2048 + 1/128 + 1/256) = 245.76
    skinny = op(Phase.FORWARD, {"m": 2048, "n": 128, "k": 256})
    assert model.compute_time(skinny, task(), 0) == pytest.approx(flops / 10e12 * (1 + 64 / 245.76))
    # an op without its dims (or with the term off) pays nothing extra
    assert model.compute_time(op(Phase.FORWARD, {}), task(), 0) == pytest.approx(flops / 10e12)


def test_attention_on_short_sequences_pays_the_sequence_term(tiny_cluster, task) -> None:
    model = RooflineCostModel(tiny_cluster(attention_efficiency=1.0, matmul_half_efficiency_us=0.0,
                                           attention_half_efficiency_seq=64.0, launch_overhead_us=0.0), DType.FP32)
    b, heads, s, d = 4, 8, 128, 64  # 1 + 64 / 128 = 1.5 times the time at the fp32 peak (10 TFLOP/s)
    flops = 4.0 * b * s * s * heads * d

    def op(dims: dict[str, int]) -> Op:
        return Op(id=0, name="x.attention", role=Role.ATTENTION, kind=OpKind.ATTENTION, phase=Phase.FORWARD, layer=0,
                  flops=flops, mem_bytes=0.0, dims=dims)

    dims = {"b": b, "heads": heads, "s": s, "head_dim": d}
    assert model.compute_time(op(dims), task(), 0) == pytest.approx(flops / 10e12 * 1.5)
    # a batch partition (Lancet's) keeps the sequence: half the time, the same stretch
    assert model.compute_time(op(dims), task(fraction=0.5), 0) == pytest.approx(flops / 2 / 10e12 * 1.5)
    assert model.compute_time(op({**dims, "s": 512}), task(), 0) == pytest.approx(flops / 10e12 * 1.125)
    assert model.compute_time(op({}), task(), 0) == pytest.approx(flops / 10e12)


def test_a_causal_attention_costs_its_share_of_the_square(tiny_cluster, task) -> None:
    """FlashAttention skips the masked half (causal_attention_work 0.5, the default); a CPU kernel that skips
    nothing is 1. The op's FLOPs stay the full square either way."""
    flops = 4.0 * 4 * 8 * 1024**2 * 64

    def op(causal: bool) -> Op:
        dims = {"b": 4, "heads": 8, "s": 1024, "head_dim": 64, **({"causal": 1} if causal else {})}
        return Op(id=0, name="x.attention", role=Role.ATTENTION, kind=OpKind.ATTENTION, phase=Phase.FORWARD, layer=0,
                  flops=flops, mem_bytes=0.0, dims=dims)

    exact = {"attention_efficiency": 1.0, "matmul_half_efficiency_us": 0.0, "launch_overhead_us": 0.0}
    gpu = RooflineCostModel(tiny_cluster(**exact), DType.FP16)
    assert gpu.compute_time(op(True), task(), 0) == pytest.approx(gpu.compute_time(op(False), task(), 0) / 2)
    cpu = RooflineCostModel(tiny_cluster(**exact, causal_attention_work=1.0), DType.FP16)
    assert cpu.compute_time(op(True), task(), 0) == pytest.approx(cpu.compute_time(op(False), task(), 0))
    # unset, the work follows the device: a CPU rank's kernel skips nothing
    cpu_rank = RooflineCostModel(load_cluster("cpu-loopback"), DType.FP32)
    assert cpu_rank.compute_time(op(True), task(), 0) == pytest.approx(cpu_rank.compute_time(op(False), task(), 0))
