"""Collective demands: exact bytes per resource and latencies, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.hardware import DType, RooflineCostModel, load_cluster
from moesim.hardware.interface import CollectiveDemand
from moesim.workload.ops import OpKind

GB = 1e9
US = 1e-6
MB = 1e6
ALL4 = ((0, 1, 2, 3),)
NO_SMALL_MESSAGE_TERM = {"node.cost.collective_half_rate_kib": 0, "node.cost.network_half_rate_kib": 0}


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
    model = RooflineCostModel(load_cluster("p4de.24xlarge", 2, NO_SMALL_MESSAGE_TERM), DType.FP32)
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
    model = RooflineCostModel(tiny_cluster(all_reduce_algorithm="ring"), DType.FP32)
    got = loads(model, model.collective_demand(comm_op(OpKind.ALL_REDUCE, ALL4, 8 * MB), task(), [0]))
    v = 2 * 3 / 4 * 8 * MB  # each rank sends 2(n-1)/n S to its successor: 0->1, 1->2, 2->3, 3->0
    expected = {"rank0.intra_out": v, "rank1.intra_in": v, "rank2.intra_out": v, "rank3.intra_in": v}
    expected |= {f"node{n}.nic{k}.{d}": v / 2 for n in range(2) for k in range(2) for d in ("out", "in")}
    assert got == pytest.approx(expected)


def test_a_tree_over_two_nodes_sends_each_node_its_payload_once(tiny_cluster, comm_op, task) -> None:
    """Each of NCCL's two trees is one edge between two nodes: a node sends half the payload up one and half
    down the other, payload each way, where a ring's node sends 2 (n - 1) / n of it; on three nodes a node
    interior in one tree moves twice its payload, as much as the ring's (tree factor 1 here)."""
    model = RooflineCostModel(tiny_cluster(all_reduce_algorithm="tree", tree_bandwidth_factor=1.0), DType.FP32)
    got = loads(model, model.collective_demand(comm_op(OpKind.ALL_REDUCE, ALL4, 8 * MB), task(), [0]))
    nics = {name: volume for name, volume in got.items() if ".nic" in name}
    assert nics == pytest.approx({f"node{n}.nic{k}.{d}": 8 * MB / 2 for n in range(2) for k in range(2)
                                  for d in ("out", "in")})
    assert model.all_reduce_algorithm(comm_op(OpKind.ALL_REDUCE, ALL4, 8 * MB), task(), [0]) == "tree"
    three = RooflineCostModel(tiny_cluster(3, all_reduce_algorithm="tree", tree_bandwidth_factor=1.0), DType.FP32)
    got = loads(three, three.collective_demand(comm_op(OpKind.ALL_REDUCE, (tuple(range(6)),), 6 * MB), task(), [0]))
    assert got["node0.nic0.out"] == pytest.approx(2 * 6 * MB / 2)  # 2 x payload over the node's 2 NICs


def test_nvls_moves_one_and_an_eighth_payload_each_way(comm_op, task) -> None:
    """NVLink SHARP: up to the switch and back, (1 + 1/n) x payload per rank each way; a group across nodes
    runs NCCL's NVLSTree (NVLS in the nodes, the tree's bytes through the NICs); none on a node without NVLS."""
    cluster = load_cluster("hgx-h200")
    cluster = cluster.with_cost(cluster.cost.model_copy(update={"all_reduce_algorithm": "nvls",
                                                                "nvls_bandwidth_factor": 0.5,
                                                                "collective_half_rate_kib": 0.0}))
    model = RooflineCostModel(cluster, DType.BF16)
    op = comm_op(OpKind.ALL_REDUCE, (tuple(range(8)),), 8 * MB)
    got = loads(model, model.collective_demand(op, task(), [0]))
    assert got == pytest.approx({f"rank{r}.intra_{d}": 9 / 8 * 8 * MB / 0.5 for r in range(8) for d in ("out", "in")})
    assert model.all_reduce_algorithm(op, task(), [0]) == "nvls"
    two = RooflineCostModel(load_cluster("hgx-h200", 2).with_cost(cluster.cost), DType.BF16)
    across = comm_op(OpKind.ALL_REDUCE, (tuple(range(16)),), 8 * MB)
    assert two.all_reduce_algorithm(across, task(), [0]) == "nvls_tree"
    got = loads(two, two.collective_demand(across, task(), [0]))
    tree_factor = cluster.cost.tree_bandwidth_factor
    assert got["rank3.intra_out"] == pytest.approx(17 / 16 * 8 * MB / 0.5)
    assert got["node0.nic0.out"] == pytest.approx(8 * MB / tree_factor / 8)  # two nodes: payload over 8 NICs
    with pytest.raises(MoesimError, match="nvls needs a fabric with intra.nvls: true"):
        load_cluster("p4de.24xlarge", 1, {"node.cost.all_reduce_algorithm": "nvls"})


def test_small_messages_move_slower_by_the_half_rate_term(tiny_cluster, comm_op, task) -> None:
    """A message of m bytes moves 1 + (m_half / m) ** exponent times slower: at m = m_half the collective runs
    at half the rate; off (0) by default; a collective across nodes takes the network's m_half."""
    op = comm_op(OpKind.ALL_TO_ALL, (ALL4[0],), 4 * MB)  # uniform: 1 MB per member pair, across 2 nodes
    plain = RooflineCostModel(tiny_cluster(), DType.FP32)
    base = plain.collective_demand(op, task(), [0])
    for half_kib, exponent in ((MB / 1024, 1.0), (4 * MB / 1024, 0.5)):
        for settings in ({"collective_half_rate_kib": half_kib},
                         {"collective_half_rate_kib": 1.0, "network_half_rate_kib": half_kib}):
            model = RooflineCostModel(tiny_cluster(collective_rate_exponent=exponent, **settings), DType.FP32)
            demand = model.collective_demand(op, task(), [0])
            stretch = 1 + (half_kib * 1024 / MB) ** exponent
            assert demand.latency_s == base.latency_s
            assert demand.volume == pytest.approx(base.volume * stretch)
