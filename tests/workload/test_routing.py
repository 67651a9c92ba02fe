"""Routing models: uniform spreading, Zipf sampling, capacity, and what they do to the op graph."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.workload import build_graph, load_workload
from moesim.workload.config import Workload
from moesim.workload.ops import OpGraph, OpKind
from moesim.workload.routing import received_rows, route, sample_counts, uniform_counts, zipf_popularity


def _counts(graph: OpGraph) -> dict[int, np.ndarray]:
    return {r.layer: r.counts for r in graph.facts.routing}

GPU = "H100-SXM5-80GB"


def _mixtral(gpus: int = 8, **overrides: object) -> Workload:
    small = {"model.num_layers": 4, "training.seq_len": 256}
    return load_workload("mixtral-8x7b", num_gpus=gpus, gpu=GPU, overrides={**small, **overrides})


def test_uniform_counts_exact_when_divisible() -> None:
    counts = uniform_counts(4, 8, 64)
    assert counts.shape == (4, 8) and (counts == 8).all()


def test_uniform_remainder_spread_round_robin() -> None:
    counts = uniform_counts(3, 4, 10)  # 2 each + 2 extras per rank, rotated by 2 per rank
    assert counts.tolist() == [[3, 3, 2, 2], [2, 2, 3, 3], [3, 3, 2, 2]]
    assert (counts.sum(axis=1) == 10).all()
    received = counts.sum(axis=0)
    assert received.max() - received.min() <= 1


def test_zipf_popularity_is_a_permuted_power_law() -> None:
    popularity = zipf_popularity(6, 1.0, np.random.default_rng(3))
    harmonic = sum(1 / r for r in range(1, 7))
    assert sorted(popularity, reverse=True) == pytest.approx([1 / (r * harmonic) for r in range(1, 7)])
    assert zipf_popularity(4, 0.0, np.random.default_rng(0)) == pytest.approx([0.25] * 4)


def test_samples_respect_top_k_distinct_experts() -> None:
    popularity = np.array([0.9, 0.05, 0.03, 0.02])  # the first expert would get 180 of 200 assignments
    counts = sample_counts(popularity, 16, 100, 2, np.random.default_rng(0))
    assert (counts.sum(axis=1) == 200).all()
    assert counts.max() <= 100
    assert (counts[:, 0] == 100).all()  # every token takes the hot expert once


def test_same_seed_same_graph_other_seed_other_counts() -> None:
    zipf = {"training.routing.kind": "zipf", "training.routing.alpha": 1.1}
    first = build_graph(_mixtral(**zipf, **{"training.routing.seed": 7}))
    again = build_graph(_mixtral(**zipf, **{"training.routing.seed": 7}))
    other = build_graph(_mixtral(**zipf, **{"training.routing.seed": 8}))
    counts, counts_again = _counts(first), _counts(again)
    for layer in first.moe_layers:
        np.testing.assert_array_equal(counts[layer], counts_again[layer])
    assert [(op.name, op.flops, op.rank_scale) for op in first.ops] == [
        (op.name, op.flops, op.rank_scale) for op in again.ops]
    for a, b in zip(first.ops, again.ops, strict=True):
        if a.comm is not None and a.comm.traffic is not None:
            np.testing.assert_array_equal(a.comm.traffic, b.comm.traffic)
    assert any(not np.array_equal(_counts(first)[layer], _counts(other)[layer])
               for layer in first.moe_layers)


def test_dropless_zipf_makes_ranks_uneven() -> None:
    workload = _mixtral(**{"training.routing.kind": "zipf", "training.routing.alpha": 1.5})
    graph = build_graph(workload)
    assert not graph.rank_symmetric
    tokens, top_k = workload.tokens_per_gpu, workload.model.top_k
    for layer_routing in graph.facts.routing:
        layer = layer_routing.layer
        received = received_rows(workload, layer_routing)
        assert received.sum() == 8 * tokens * top_k  # dropless: nothing lost
        fc1 = graph.by_name(f"L{layer}.expert_fc1")
        assert fc1.rank_scale == pytest.approx(tuple(received / (tokens * top_k)))
        assert fc1.flops_on(int(np.argmax(received))) == pytest.approx(
            2 * received.max() * (2 * 14336) * 4096)
        dispatch = graph.by_name(f"L{layer}.dispatch").comm
        # member a sends member b the tokens routed to b's expert (one expert per rank), 4096 x 2 bytes each
        np.testing.assert_array_equal(dispatch.traffic[0], layer_routing.counts * 4096 * 2)
        assert graph.facts.routing_of(layer).dropped_fraction == 0.0
    assert graph.by_name(f"L{graph.moe_layers[0]}.expert_fc1.dw").rank_scale is not None


def test_capacity_pads_buffers_and_drops_the_skew() -> None:
    workload = _mixtral(**{"training.routing.kind": "zipf", "training.routing.alpha": 1.5,
                           "training.capacity_factor": 1.0})
    graph = build_graph(workload)
    capacity = workload.capacity
    assert capacity == 256 * 2 // 8
    assert graph.rank_symmetric
    for layer_routing in graph.facts.routing:
        kept = np.minimum(layer_routing.counts, capacity)
        dropped = 1 - kept.sum() / layer_routing.counts.sum()
        assert layer_routing.dropped_fraction == pytest.approx(dropped)
        assert dropped > 0
    dispatch = graph.by_name("L0.dispatch").comm
    assert (dispatch.traffic == capacity * 4096 * 2).all()
    assert dispatch.bytes == 8 * capacity * 4096 * 2
    assert graph.by_name("L0.expert_fc1").flops == 2 * 8 * capacity * (2 * 14336) * 4096


def test_uniform_routing_counts() -> None:
    workload = _mixtral(16)
    routing = route(workload)
    assert len(routing) == 4
    assert all(r.counts is routing[0].counts for r in routing)  # shared, not copied
    assert (routing[0].counts == 256 * 2 // 8).all()
    assert routing[0].dropped_fraction == 0.0


def test_a2a_ops_are_collectives_over_ep_groups() -> None:
    graph = build_graph(_mixtral(16))
    a2a = [op for op in graph.ops if op.kind is OpKind.ALL_TO_ALL]
    assert all(op.kind.is_collective and op.comm.traffic.shape == (2, 8, 8) for op in a2a)
