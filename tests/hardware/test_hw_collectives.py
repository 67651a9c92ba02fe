"""Collective demands: exact bytes per resource and latencies, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.hardware import DType, RooflineCostModel, load_cluster
from moesim.hardware.interface import CollectiveDemand
from moesim.workload.ops import OpKind

GB = 1e9
US = 1e-6
MB = 1e6
ALL4 = ((0, 1, 2, 3),)


def loads(model: RooflineCostModel, demand: CollectiveDemand) -> dict[str, float]:
    return {
        model.resource_name(int(r)): float(v) for r, v in zip(demand.resources, demand.volume, strict=True)
    }


def test_uniform_all_to_all_on_two_nodes_of_two_gpus(tiny_cluster, comm_op, task) -> None:
    # ranks 0,1 on node 0 and 2,3 on node 1; GPU g of a node uses NIC g; 1 MB per pair
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    op = comm_op(OpKind.ALL_TO_ALL, ALL4, 4 * MB, traffic=np.full((1, 4, 4), MB))
    demand = model.collective_demand(op, task(), [0])
    expected = {f"rank{r}.intra_{d}": MB for r in range(4) for d in ("out", "in")}  # the node-mate
    expected |= {f"node{n}.nic{k}.{d}": 2 * MB for n in range(2) for k in range(2) for d in ("out", "in")}
    assert loads(model, demand) == pytest.approx(expected)


def test_uneven_all_to_all_loads_follow_the_matrix(tiny_cluster, comm_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    matrix = np.arange(1.0, 17.0).reshape(1, 4, 4) * MB  # matrix[0, a, b] = 4a + b + 1 MB
    got = loads(
        model, model.collective_demand(comm_op(OpKind.ALL_TO_ALL, ALL4, 0, traffic=matrix), task(), [0])
    )
    assert got["rank0.intra_out"] == pytest.approx(2 * MB)  # 0 -> 1
    assert got["rank1.intra_in"] == pytest.approx(2 * MB)
    assert got["rank3.intra_out"] == pytest.approx(15 * MB)  # 3 -> 2
    assert got["node0.nic0.out"] == pytest.approx((3 + 4) * MB)  # 0 -> 2, 0 -> 3
    assert got["node1.nic1.in"] == pytest.approx((4 + 8) * MB)  # 0 -> 3, 1 -> 3
    assert got["node1.nic0.out"] == pytest.approx((9 + 10) * MB)  # 2 -> 0, 2 -> 1


def test_all_to_all_fraction_task_traffic_and_uniform_fallback(tiny_cluster, comm_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    op = comm_op(OpKind.ALL_TO_ALL, ALL4, 4 * MB, traffic=np.full((1, 4, 4), MB))
    half = loads(model, model.collective_demand(op, task(fraction=0.5), [0]))
    assert half["node0.nic0.out"] == pytest.approx(1 * MB)
    own = np.zeros((1, 4, 4))
    own[0, 1, 2] = 3 * MB
    got = loads(model, model.collective_demand(op, task(traffic=own), [0]))
    assert got == pytest.approx({"node0.nic1.out": 3 * MB, "node1.nic0.in": 3 * MB})  # rank 1 -> rank 2
    no_matrix = comm_op(OpKind.ALL_TO_ALL, ALL4, 4 * MB)  # 4 MB per rank, 1 MB to each member
    assert loads(model, model.collective_demand(no_matrix, task(), [0]))["node1.nic1.out"] == pytest.approx(
        2 * MB
    )


def test_p3dn_all_to_all_funnels_every_gpu_through_the_single_nic(comm_op, task) -> None:
    model = RooflineCostModel(load_cluster("p3dn.24xlarge", 2), DType.FP32)
    op = comm_op(OpKind.ALL_TO_ALL, (tuple(range(16)),), 0, traffic=np.full((1, 16, 16), MB))
    got = loads(model, model.collective_demand(op, task(), [0]))
    assert got["node0.nic0.out"] == pytest.approx(8 * 8 * MB)  # 8 GPUs x 8 remote peers
    assert got["node1.nic0.in"] == pytest.approx(8 * 8 * MB)


def test_p4de_all_to_all_uses_each_gpus_nic_share(comm_op, task) -> None:
    model = RooflineCostModel(load_cluster("p4de.24xlarge", 2), DType.FP32)
    op = comm_op(OpKind.ALL_TO_ALL, (tuple(range(16)),), 0, traffic=np.full((1, 16, 16), MB))
    got = loads(model, model.collective_demand(op, task(), [0]))
    assert all(got[f"node{n}.nic{k}.out"] == pytest.approx(2 * 8 * MB) for n in range(2) for k in range(4))
    assert got["rank5.intra_out"] == pytest.approx(7 * MB)


def test_cube_mesh_relays_pairs_without_a_direct_link(comm_op, task) -> None:
    model = RooflineCostModel(load_cluster("p3dn.24xlarge"), DType.FP32)
    group = (tuple(range(8)),)
    single = np.zeros((1, 8, 8))
    single[0, 0, 5] = 8 * MB  # GPU 0 and 5 share no NVLink: relayed via 4 (= 0^4) and 1 (= 5^4)
    got = loads(
        model, model.collective_demand(comm_op(OpKind.ALL_TO_ALL, group, 0, traffic=single), task(), [0])
    )
    assert got == pytest.approx(
        {
            "rank0.intra_out": 8 * MB,
            "rank5.intra_in": 8 * MB,
            "rank4.intra_in": 4 * MB,
            "rank4.intra_out": 4 * MB,
            "rank1.intra_in": 4 * MB,
            "rank1.intra_out": 4 * MB,
        }
    )
    uniform = comm_op(OpKind.ALL_TO_ALL, group, 0, traffic=np.full((1, 8, 8), MB))
    got = loads(model, model.collective_demand(uniform, task(), [0]))
    # 7 own sends + 3 relayed pairs per GPU, 24 relayed pairs x 2 halves spread over 8 GPUs = 3 MB each
    assert len(got) == 16
    assert all(volume == pytest.approx(10 * MB) for volume in got.values())


def test_ring_all_reduce_across_two_nodes(tiny_cluster, comm_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    got = loads(model, model.collective_demand(comm_op(OpKind.ALL_REDUCE, ALL4, 8 * MB), task(), [0]))
    v = 2 * 3 / 4 * 8 * MB  # each rank sends 2(n-1)/n S to its successor: 0->1, 1->2, 2->3, 3->0
    expected = {"rank0.intra_out": v, "rank1.intra_in": v, "rank2.intra_out": v, "rank3.intra_in": v}
    expected |= {f"node{n}.nic{k}.{d}": v / 2 for n in range(2) for k in range(2) for d in ("out", "in")}
    assert got == pytest.approx(expected)


def test_ring_volumes_inside_one_node(comm_op, task) -> None:
    model = RooflineCostModel(load_cluster("p4de.24xlarge"), DType.FP32)
    ranks = (tuple(range(8)),)
    for kind, factor in (
        (OpKind.ALL_REDUCE, 2 * 7 / 8),
        (OpKind.ALL_GATHER, 7 / 8),
        (OpKind.REDUCE_SCATTER, 7 / 8),
    ):
        demand = model.collective_demand(comm_op(kind, ranks, 16 * MB), task(fraction=0.5), [0])
        assert len(demand.resources) == 16  # every GPU's egress and ingress, no NIC
        assert demand.volume == pytest.approx(factor * 8 * MB)


def test_sibling_groups_form_one_coflow_on_shared_nics(tiny_cluster, comm_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    op = comm_op(OpKind.ALL_REDUCE, ((0, 2), (1, 3)), 4 * MB)  # two 2-rank rings, both crossing nodes
    both = loads(model, model.collective_demand(op, task(), [0, 1]))
    one = loads(model, model.collective_demand(op, task(), [0]))
    # each ring sends S both ways; a node's 2 NICs share its rings' bytes evenly
    assert both == pytest.approx(
        {f"node{n}.nic{k}.{d}": 4 * MB for n in range(2) for k in range(2) for d in ("out", "in")}
    )
    assert one["node0.nic1.out"] == pytest.approx(2 * MB)


def test_latencies_follow_the_alpha_terms(tiny_cluster, comm_op, task) -> None:
    # intra hop 2 us, network hop 10 us (tiny cluster); base 8 us, 0.5 us per extra all-to-all peer
    model = RooflineCostModel(
        tiny_cluster(collective_base_latency_us=8, all_to_all_peer_latency_us=0.5), DType.FP32
    )
    a2a = model.collective_demand(comm_op(OpKind.ALL_TO_ALL, ALL4, 4 * MB), task(), [0])
    assert a2a.latency_s == pytest.approx((8 + 10 + 3 * 0.5) * US)
    local_a2a = model.collective_demand(comm_op(OpKind.ALL_TO_ALL, ((0, 1), (2, 3)), 4 * MB), task(), [0, 1])
    assert local_a2a.latency_s == pytest.approx((8 + 2 + 0.5) * US)
    # 4 ranks, 2 nodes: per traversal 3 steps, 2 of them crossing nodes
    ring = model.collective_demand(comm_op(OpKind.ALL_REDUCE, ALL4, 4 * MB), task(), [0])
    assert ring.latency_s == pytest.approx((8 + 2 * (1 * 2 + 2 * 10)) * US)
    gather = model.collective_demand(comm_op(OpKind.ALL_GATHER, ((0, 1),), 4 * MB), task(), [0])
    assert gather.latency_s == pytest.approx((8 + 2) * US)


def test_the_all_to_all_has_its_own_base_latency_and_bandwidth(tiny_cluster, comm_op, task) -> None:
    """Its own base (3 us, not the rings' 8) and half the rings' rate: the same 1 MB per pair takes twice
    as long on the NICs (10 GB/s each), while the all-reduce beside it is untouched."""
    own = RooflineCostModel(tiny_cluster(collective_base_latency_us=8, all_to_all_peer_latency_us=0.5,
                                         all_to_all_base_latency_us=3, all_to_all_bandwidth_ratio=0.5), DType.FP32)
    shared = RooflineCostModel(tiny_cluster(collective_base_latency_us=8, all_to_all_peer_latency_us=0.5), DType.FP32)
    a2a = comm_op(OpKind.ALL_TO_ALL, ALL4, 4 * MB, traffic=np.full((1, 4, 4), MB))
    assert own.collective_demand(a2a, task(), [0]).latency_s == pytest.approx((3 + 10 + 3 * 0.5) * US)
    assert own.collective_time(a2a, task()) == pytest.approx((3 + 10 + 1.5) * US + 2 * 2 * MB / (10 * GB))
    assert shared.collective_time(a2a, task()) == pytest.approx((8 + 10 + 1.5) * US + 2 * MB / (10 * GB))
    ring = comm_op(OpKind.ALL_REDUCE, ALL4, 4 * MB)
    assert own.collective_time(ring, task()) == shared.collective_time(ring, task())


def test_a_collectives_work_on_the_cores_is_a_fixed_part_and_a_part_per_mib(tiny_cluster, comm_op, task) -> None:
    """250 us + 400 us per MiB of the per-rank payload, of this task's share; none by default (a GPU)."""
    a2a = comm_op(OpKind.ALL_TO_ALL, ALL4, 2 * 2**20)
    model = RooflineCostModel(tiny_cluster(comm_cpu_us=250, comm_cpu_us_per_mib=400), DType.FP32)
    assert model.host.collective_cpu(a2a, task()) == pytest.approx((250 + 800) * US)
    assert model.host.collective_cpu(a2a, task(fraction=0.5)) == pytest.approx((250 + 400) * US)
    assert RooflineCostModel(tiny_cluster(), DType.FP32).host.collective_cpu(a2a, task()) == 0.0


def test_groups_of_one_rank_cost_nothing(tiny_cluster, comm_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(collective_base_latency_us=8), DType.FP32)
    for kind in (OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE):
        demand = model.collective_demand(comm_op(kind, ((0,), (1,)), 4 * MB), task(), [0, 1])
        assert demand.latency_s == 0.0
        assert demand.resources.size == 0 and demand.volume.size == 0


def test_collective_time_alone_is_latency_plus_bottleneck(tiny_cluster, comm_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(), DType.FP32)  # NIC 10 GB/s, intra 100 GB/s, latency 10 us
    op = comm_op(OpKind.ALL_TO_ALL, ALL4, 4 * MB, traffic=np.full((1, 4, 4), MB))
    assert model.collective_time(op, task()) == pytest.approx(10 * US + 2 * MB / (10 * GB))


def test_demands_are_cached_per_op_fraction_and_groups(tiny_cluster, comm_op, task) -> None:
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    op = comm_op(OpKind.ALL_REDUCE, ALL4, 4 * MB)
    first = model.collective_demand(op, task(), [0])
    assert model.collective_demand(op, task(), [0]) is first
    assert model.collective_demand(op, task(fraction=0.5), [0]) is not first


def test_a_256_rank_all_to_all_demand_conserves_bytes(comm_op, task) -> None:
    model = RooflineCostModel(load_cluster("p4de.24xlarge", 32), DType.FP32)
    ranks = tuple(range(256))
    traffic = np.random.default_rng(0).random((1, 256, 256)) * MB
    op = comm_op(OpKind.ALL_TO_ALL, (ranks,), 0, traffic=traffic)
    demand = model.collective_demand(op, task(fraction=1.0 / 5), [0])
    sent = (traffic.sum() - np.trace(traffic[0])) / 5
    assert demand.volume.sum() == pytest.approx(2 * sent)  # every byte leaves one resource and enters another
