"""Spec validation, unit conversion, rank -> node / NIC mapping, overrides on a whole cluster."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moesim.errors import MoesimError
from moesim.hardware import DType, GPUSpec, IntraNodeFabric, NetworkSpec, NodeSpec, load_cluster
from moesim.overrides import apply_overrides


def test_gpu_spec_converts_to_si_units() -> None:
    gpu = GPUSpec(
        name="g", peak_tflops={"fp32": 19.5, "bf16": 312}, hbm_gib=80, hbm_gb_per_s=2039, sm_count=108
    )
    assert gpu.peak_flops(DType.FP32) == pytest.approx(19.5e12)
    assert gpu.peak_flops(DType.BF16) == pytest.approx(312e12)
    assert gpu.hbm_bytes == 80 * 2**30
    assert gpu.hbm_bytes_per_s == pytest.approx(2039e9)
    with pytest.raises(KeyError):
        gpu.peak_flops(DType.FP8)


def test_network_and_fabric_convert_to_si_units() -> None:
    net = NetworkSpec(nics_per_node=4, nic_gbps=100, latency_us=9.6)
    assert net.nic_bytes_per_s == pytest.approx(12.5e9)
    assert net.latency_s == pytest.approx(9.6e-6)
    assert net.oversubscription == 1.0
    fabric = IntraNodeFabric(topology="nvswitch", bandwidth_gb_per_s=300, latency_us=3.4)
    assert fabric.bandwidth_bytes_per_s == pytest.approx(300e9)


def test_dtype_storage_bytes() -> None:
    assert [d.bytes for d in (DType.FP32, DType.TF32, DType.FP16, DType.BF16, DType.FP8)] == [4, 4, 2, 2, 1]


def test_gpu_needs_sm_count_but_cpu_host_does_not() -> None:
    with pytest.raises(ValidationError, match="sm_count"):
        GPUSpec(name="g", peak_tflops={"fp32": 1.0}, hbm_gib=1, hbm_gb_per_s=1)
    host = GPUSpec(name="laptop", device="cpu", peak_tflops={"fp32": 0.5}, hbm_gib=16, hbm_gb_per_s=40)
    assert host.sm_count is None


@pytest.mark.parametrize(
    "fields",
    [
        {"peak_tflops": {}},
        {"peak_tflops": {"fp32": -1.0}},
        {"peak_tflops": {"fp64": 1.0}},
        {"hbm_gib": 0},
        {"device": "tpu"},
        {"clock_mhz": 1500},
    ],
)
def test_gpu_spec_rejects_bad_fields(fields: dict[str, object]) -> None:
    base: dict[str, object] = {
        "name": "g",
        "peak_tflops": {"fp32": 1.0},
        "hbm_gib": 1,
        "hbm_gb_per_s": 1,
        "sm_count": 1,
    }
    with pytest.raises(ValidationError):
        GPUSpec.model_validate(base | fields)


def test_specs_are_frozen(tiny_cluster) -> None:
    cluster = tiny_cluster()
    with pytest.raises(ValidationError):
        cluster.num_nodes = 3  # type: ignore[misc]


def test_hybrid_cube_mesh_needs_eight_gpus() -> None:
    node = load_cluster("p3dn.24xlarge").node
    data = node.model_dump() | {"gpus_per_node": 4}
    with pytest.raises(ValidationError, match="hybrid_cube_mesh"):
        NodeSpec.model_validate(data)


def test_ranks_map_to_nodes_and_nics_node_major() -> None:
    p4de = load_cluster("p4de.24xlarge", nodes=2)  # 8 GPUs, 4 NICs: two GPUs per NIC
    assert p4de.num_gpus == 16
    assert [p4de.node_of(r) for r in (0, 7, 8, 15)] == [0, 0, 1, 1]
    assert [p4de.nic_of(r) for r in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert p4de.nic_of(13) == 2
    p3dn = load_cluster("p3dn.24xlarge", nodes=2)  # 8 GPUs share one NIC
    assert {p3dn.nic_of(r) for r in range(16)} == {0}
    p5 = load_cluster("p5.48xlarge")  # 32 NICs for 8 GPUs: four each
    assert list(p5.nics_of(1)) == [4, 5, 6, 7]
    assert p5.nic_of(7) == 28
    with pytest.raises(IndexError):
        p4de.node_of(16)


def test_cluster_cost_shortcut_is_the_node_cost(tiny_cluster) -> None:
    cluster = tiny_cluster(hbm_efficiency=0.7)
    assert cluster.cost is cluster.node.cost
    assert cluster.cost.hbm_efficiency == 0.7


def test_overrides_change_a_nested_field_and_revalidate() -> None:
    cluster = load_cluster("p4de.24xlarge", nodes=2)
    faster = apply_overrides(cluster, {"node.network.nic_gbps": 200, "node.cost.launch_overhead_us": 2})
    assert faster.node.network.nic_gbps == 200
    assert faster.cost.launch_overhead_us == 2
    assert cluster.node.network.nic_gbps == 100  # the original is untouched
    with pytest.raises(MoesimError, match="node.network.nic_gbps"):
        apply_overrides(cluster, {"node.network.nic_gbps": 0})
    with pytest.raises(MoesimError, match="node.network.nic_gbs"):
        apply_overrides(cluster, {"node.network.nic_gbs": 200})


def test_override_of_a_dtype_peak_replaces_it() -> None:
    cluster = load_cluster("p4de.24xlarge")
    changed = apply_overrides(cluster, {"node.gpu.peak_tflops.fp32": 20.0})
    assert changed.node.gpu.peak_tflops == cluster.node.gpu.peak_tflops | {DType.FP32: 20.0}


def test_gpu_can_be_swapped_by_preset_name() -> None:
    cluster = load_cluster("p4de.24xlarge")
    swapped = load_cluster("p4de.24xlarge", overrides={"node.gpu": "H100-SXM5-80GB"})
    assert swapped.node.gpu.name == "H100-SXM5-80GB"
    assert swapped.node.gpu.peak_flops(DType.BF16) > cluster.node.gpu.peak_flops(DType.BF16)
    with pytest.raises(MoesimError, match="gpu: unknown GPU preset 'Z9000'"):
        load_cluster("p4de.24xlarge", overrides={"node.gpu": "Z9000"})
