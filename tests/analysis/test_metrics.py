"""Busy unions, exposed communication and overlap on small stories whose answers are worked out by hand."""

from __future__ import annotations

import json

import pytest

from moesim.analysis.metrics import compute_metrics, union
from moesim.errors import MoesimError
from moesim.plan import StreamKind
from moesim.workload.ops import OpKind

C, A, D = StreamKind.COMPUTE, StreamKind.COMM, StreamKind.DP_COMM


@pytest.fixture
def story(make_span, make_timeline):
    """Rank 0, seconds:
    compute  [0,2] [3,5]                 flops 10 + 20
    comm     [1,4] all-to-all, [6,8] all-to-all   bytes 100 + 50
    dp_comm  [4.5,7] all-reduce          bytes 999 (not all-to-all)
    """
    spans = [
        make_span(0, C, 0.0, 2.0, task=0, flops=10.0),
        make_span(0, A, 1.0, 4.0, task=1, nbytes=100.0),
        make_span(0, C, 3.0, 5.0, task=2, flops=20.0),
        make_span(0, D, 4.5, 7.0, task=3, nbytes=999.0),
        make_span(0, A, 6.0, 8.0, task=4, nbytes=50.0),
    ]
    return make_timeline(spans)


def test_busy_unions_exposed_and_overlap_of_a_hand_story(story):
    rank = compute_metrics(story).per_rank[0]
    # compute [0,2]+[3,5] = 4; comm [1,4] + ([4.5,7] U [6,8] = [4.5,8]) = 3 + 3.5
    assert rank.compute_busy_s == pytest.approx(4.0)
    assert rank.comm_busy_s == pytest.approx(6.5)
    assert rank.a2a_busy_s == pytest.approx(3.0 + 2.0)
    # comm with compute idle: [2,3] and [5,8]
    assert rank.exposed_comm_s == pytest.approx(1.0 + 3.0)
    # all-to-all with compute idle: [2,3] and [6,8]
    assert rank.exposed_a2a_s == pytest.approx(1.0 + 2.0)
    assert rank.overlap_ratio == pytest.approx(1 - 4.0 / 6.5)
    assert rank.iteration_time_s == pytest.approx(8.0)
    assert rank.flops == pytest.approx(30.0)
    assert rank.a2a_bytes == pytest.approx(150.0)


def test_top_level_metrics_are_the_slowest_ranks_shares_of_the_iteration(story):
    metrics = compute_metrics(story)
    assert metrics.iteration_time_s == pytest.approx(8.0)
    assert metrics.num_gpus == 1
    assert metrics.slowest_rank == 0
    assert metrics.a2a_time_s == pytest.approx(5.0)
    assert metrics.a2a_share == pytest.approx(5.0 / 8.0)
    assert metrics.exposed_comm_share == pytest.approx(4.0 / 8.0)
    assert metrics.overlap_ratio == pytest.approx(2.5 / 6.5)


def test_contained_and_touching_intervals_are_counted_once(make_span, make_timeline):
    spans = [
        make_span(0, C, 0.0, 10.0), make_span(0, C, 2.0, 3.0),    # nested
        make_span(0, C, 10.0, 12.0),                              # touches the first
        make_span(0, A, 11.0, 15.0), make_span(0, D, 12.0, 13.0),  # dp_comm inside comm
    ]
    rank = compute_metrics(make_timeline(spans)).per_rank[0]
    assert rank.compute_busy_s == pytest.approx(12.0)
    assert rank.comm_busy_s == pytest.approx(4.0)
    assert rank.exposed_comm_s == pytest.approx(3.0)  # [12,15]


def test_no_communication_means_full_overlap_and_nothing_exposed(make_span, make_timeline):
    rank = compute_metrics(make_timeline([make_span(0, C, 0.0, 1.0)])).per_rank[0]
    assert rank.comm_busy_s == 0.0
    assert rank.exposed_comm_s == 0.0
    assert rank.overlap_ratio == 1.0


def test_fully_hidden_communication_has_overlap_one(make_span, make_timeline):
    spans = [make_span(0, C, 0.0, 4.0), make_span(0, A, 1.0, 2.0), make_span(0, D, 2.5, 4.0)]
    rank = compute_metrics(make_timeline(spans)).per_rank[0]
    assert rank.exposed_comm_s == 0.0
    assert rank.overlap_ratio == pytest.approx(1.0)


def test_a_collective_on_the_compute_stream_counts_as_communication(make_span, make_timeline):
    spans = [make_span(0, C, 0.0, 1.0, kind=OpKind.ALL_TO_ALL, nbytes=8.0), make_span(0, C, 1.0, 3.0)]
    rank = compute_metrics(make_timeline(spans)).per_rank[0]
    assert rank.compute_busy_s == pytest.approx(2.0)
    assert rank.comm_busy_s == pytest.approx(1.0)
    assert rank.exposed_comm_s == pytest.approx(1.0)
    assert rank.a2a_bytes == 8.0


def test_slowest_rank_is_the_last_to_finish_and_ties_go_to_the_lowest(make_span, make_timeline):
    spans = [
        make_span(0, C, 0.0, 5.0),
        make_span(1, C, 0.0, 6.0), make_span(1, A, 6.0, 7.0),   # ends at 7, 1 s exposed
        make_span(2, C, 0.0, 7.0),                              # also ends at 7
    ]
    metrics = compute_metrics(make_timeline(spans))
    assert metrics.slowest_rank == 1
    assert metrics.iteration_time_s == pytest.approx(7.0)
    assert metrics.exposed_comm_s == pytest.approx(1.0)
    assert metrics.compute_busy_s == pytest.approx(6.0)
    assert [m.rank for m in metrics.per_rank] == [0, 1, 2]


def test_per_gpu_means_weight_each_simulated_rank_by_the_ranks_it_represents(make_span, make_timeline):
    spans = [
        make_span(0, C, 0.0, 1.0, flops=10.0), make_span(0, A, 1.0, 2.0, nbytes=40.0),
        make_span(5, C, 0.0, 1.0, flops=50.0), make_span(5, A, 1.0, 2.0, nbytes=80.0),
    ]
    timeline = make_timeline(spans, represents={0: (0, 1, 2), 5: (5,)}, num_ranks=4)
    metrics = compute_metrics(timeline)
    assert metrics.num_gpus == 4
    assert metrics.flops_per_gpu == pytest.approx((3 * 10.0 + 50.0) / 4)
    assert metrics.a2a_bytes_per_gpu == pytest.approx((3 * 40.0 + 80.0) / 4)


def test_to_dict_has_the_documented_keys_and_is_json(story):
    data = compute_metrics(story).to_dict()
    required = {"iteration_time_s", "num_gpus", "compute_busy_s", "comm_busy_s", "exposed_comm_s",
                "overlap_ratio", "flops_per_gpu", "a2a_bytes_per_gpu", "a2a_time_s", "a2a_share",
                "exposed_comm_share", "slowest_rank"}
    assert required <= set(data)
    assert data["exposed_comm_s"] == pytest.approx(4.0)
    assert json.loads(json.dumps(data))["per_rank"][0]["rank"] == 0


def test_a_span_of_an_unknown_rank_is_a_clear_error(make_span, make_timeline):
    timeline = make_timeline([make_span(3, C, 0.0, 1.0)], represents={0: (0,)})
    with pytest.raises(MoesimError, match="rank 3"):
        compute_metrics(timeline)


def test_an_empty_represents_is_a_clear_error(make_timeline):
    with pytest.raises(MoesimError, match="represents"):
        compute_metrics(make_timeline([], represents={}))


def test_union_merges_unsorted_overlapping_intervals():
    import numpy as np

    starts, ends = union(np.array([5.0, 0.0, 1.0, 9.0]), np.array([6.0, 2.0, 3.0, 9.5]))
    assert starts.tolist() == [0.0, 5.0, 9.0]
    assert ends.tolist() == [3.0, 6.0, 9.5]


def test_64_ranks_of_2000_spans(make_span, make_timeline):
    # Each rank: compute [2i, 2i+1] and all-to-all [2i+0.5, 2i+1.5] for i < 1000,
    # so compute and comm are each busy 1000 s and [2i+1, 2i+1.5] is exposed: 500 s.
    spans = [make_span(r, stream, 2 * i + offset, 2 * i + offset + 1.0, task=2 * i + (stream is A))
             for r in range(64) for i in range(1000) for stream, offset in ((C, 0.0), (A, 0.5))]
    timeline = make_timeline(spans)
    metrics = compute_metrics(timeline)
    assert len(metrics.per_rank) == 64
    assert all(m.exposed_comm_s == pytest.approx(500.0) for m in metrics.per_rank)
    assert metrics.comm_busy_s == pytest.approx(1000.0)
    assert metrics.iteration_time_s == pytest.approx(2 * 999 + 1.5)
