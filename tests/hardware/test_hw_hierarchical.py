"""Tutel's 2DH all-to-all: two stages, bytes and latencies computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.hardware import DType, RooflineCostModel
from moesim.plan import StreamKind, Task
from moesim.workload.ops import A2AAlgorithm, OpKind

MB = 1e6
US = 1e-6
ALL4 = ((0, 1, 2, 3),)
TWO_DH = Task(id=0, op=0, stream=StreamKind.COMM, algorithm=A2AAlgorithm.HIERARCHICAL)


def loads(model, demand):
    return {model.resource_name(int(r)): float(v) for r, v in zip(demand.resources, demand.volume, strict=True)}


def test_uniform_2dh_gathers_inside_the_node_then_sends_one_message_per_node(tiny_cluster, comm_op):
    # ranks 0,1 on node 0 and 2,3 on node 1 (GPU g uses NIC g), 1 MB per pair.
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    op = comm_op(OpKind.ALL_TO_ALL, ALL4, 4 * MB, traffic=np.full((1, 4, 4), MB))
    first = model.collective_demand(op, TWO_DH, [0])
    # stage 1: rank 0 sends its node-mate rank 1 the bytes for rank 1 and, as relay, for rank 3 (2 MB);
    # its bytes for rank 2 wait at rank 0 itself, the member at rank 2's position.
    assert loads(model, first) == pytest.approx({f"rank{r}.intra_{d}": 2 * MB for r in range(4) for d in ("out", "in")})
    second = first.then
    assert second is not None and second.then is None
    # stage 2: rank 0 forwards to rank 2 its own and rank 1's bytes for rank 2 (2 MB) over its NIC 0.
    assert loads(model, second) == pytest.approx(
        {f"node{n}.nic{k}.{d}": 2 * MB for n in range(2) for k in range(2) for d in ("out", "in")})


def test_2dh_moves_the_same_bytes_between_nodes_as_the_flat_algorithm(tiny_cluster, comm_op, task):
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    matrix = np.arange(1.0, 17.0).reshape(1, 4, 4) * MB
    op = comm_op(OpKind.ALL_TO_ALL, ALL4, 0, traffic=matrix)
    flat = loads(model, model.collective_demand(op, task(), [0]))
    second = loads(model, model.collective_demand(op, TWO_DH, [0]).then)
    nic = lambda loads_: sum(v for k, v in loads_.items() if "nic" in k)  # noqa: E731
    assert nic(second) == pytest.approx(nic(flat))
    # node 0 -> node 1: 0->2 (3), 0->3 (4), 1->2 (7), 1->3 (8); rank 2's column leaves via rank 0 (NIC 0)
    assert second["node0.nic0.out"] == pytest.approx((3 + 7) * MB)
    assert second["node0.nic1.out"] == pytest.approx((4 + 8) * MB)


def test_2dh_latency_counts_node_mates_then_nodes(tiny_cluster, comm_op, task):
    # base 5 us, 1 us per peer; intra hop 2 us, network hop 10 us (the tiny cluster's fabric).
    model = RooflineCostModel(tiny_cluster(num_nodes=4, collective_base_latency_us=5.0,
                                           all_to_all_peer_latency_us=1.0), DType.FP32)
    ranks = (tuple(range(8)),)
    op = comm_op(OpKind.ALL_TO_ALL, ranks, 8 * MB, traffic=np.full((1, 8, 8), MB))
    staged = model.collective_demand(op, TWO_DH, [0])
    assert staged.latency_s == pytest.approx((5 + 2 + 1 * 1) * US)   # one node-mate
    assert staged.then.latency_s == pytest.approx((5 + 10 + 1 * 3) * US)  # three other nodes
    flat = model.collective_demand(op, task(), [0])
    assert flat.latency_s == pytest.approx((5 + 10 + 1 * 7) * US)    # seven peers


def test_2dh_stages_take_the_all_to_alls_own_base_and_bandwidth(tiny_cluster, comm_op, task):
    """Both stages are all-to-alls: the all-to-all's own base (3 us, not the rings' 5) and half the rate
    (each stage's bytes count double against the capacities)."""
    shared = RooflineCostModel(tiny_cluster(num_nodes=4, collective_base_latency_us=5.0,
                                            all_to_all_peer_latency_us=1.0), DType.FP32)
    own = RooflineCostModel(tiny_cluster(num_nodes=4, collective_base_latency_us=5.0, all_to_all_peer_latency_us=1.0,
                                         all_to_all_base_latency_us=3.0, all_to_all_bandwidth_ratio=0.5), DType.FP32)
    op = comm_op(OpKind.ALL_TO_ALL, (tuple(range(8)),), 8 * MB, traffic=np.full((1, 8, 8), MB))
    before, after = shared.collective_demand(op, TWO_DH, [0]), own.collective_demand(op, TWO_DH, [0])
    assert after.latency_s == pytest.approx((3 + 2 + 1 * 1) * US)
    assert after.then.latency_s == pytest.approx((3 + 10 + 1 * 3) * US)
    for stage_before, stage_after in ((before, after), (before.then, after.then)):
        assert np.array_equal(stage_after.resources, stage_before.resources)
        assert stage_after.volume == pytest.approx(2 * stage_before.volume)


def test_2dh_needs_the_same_number_of_members_on_every_node(tiny_cluster, comm_op):
    model = RooflineCostModel(tiny_cluster(), DType.FP32)
    op = comm_op(OpKind.ALL_TO_ALL, ((0, 1, 2),), 3 * MB, traffic=np.full((1, 3, 3), MB))
    with pytest.raises(MoesimError, match="2dh"):
        model.collective_demand(op, TWO_DH, [0])
