"""Rendezvous, coflow grouping, symmetric vs full simulation, and the bytes collective spans carry."""

import numpy as np
import pytest

from moesim.plan import StreamKind
from moesim.workload.ops import OpKind

DP_COMM = StreamKind.DP_COMM


def test_a_collective_waits_for_its_slowest_member(story, assert_times):
    s = story(num_ranks=2)
    a = s.compute("a", (1.0, 3.0))
    s.collective("a2a", groups=((0, 1),), deps=[a], latency=0.5)
    assert_times(s.run(symmetric=False), {
        (0, "a"): (0, 1), (1, "a"): (0, 3), (0, "a2a"): (3, 3.5), (1, "a2a"): (3, 3.5),
    })


def test_groups_meet_separately_in_full_simulation(story, assert_times):
    s = story(num_ranks=4, capacities=[10.0, 10.0])
    a = s.compute("a", (1.0, 4.0, 2.0, 2.0))
    s.collective("a2a", groups=((0, 1), (2, 3)), deps=[a], volumes=[{0: 10.0}, {1: 20.0}])
    timeline = s.run(symmetric=False)
    # Group (0, 1) meets at 4 and moves 10 B at 10 B/s; group (2, 3) meets at 2 and moves 20 B.
    assert_times(timeline, {
        (0, "a"): (0, 1), (1, "a"): (0, 4), (2, "a"): (0, 2), (3, "a"): (0, 2),
        (0, "a2a"): (4, 5), (1, "a2a"): (4, 5), (2, "a2a"): (2, 4), (3, "a2a"): (2, 4),
    })
    assert sorted(s.cost.calls) == [("a2a", (0,)), ("a2a", (1,))]


def test_symmetric_simulation_runs_one_coflow_over_all_groups(story, assert_times):
    s = story(num_ranks=4, capacities=[10.0])
    s.collective("a2a", groups=((0, 1), (2, 3)), volumes=[{0: 10.0}, {0: 20.0}])
    # Both groups' volumes land on link 0 as one coflow: 30 B at 10 B/s.
    assert_times(s.run(), {"a2a": (0, 3)})
    assert s.cost.calls == [("a2a", (0, 1))]


def symmetric_story(story):
    """Four ranks, two expert-parallel pairs, one data-parallel all-reduce, interference on.

    Link r is rank r's NIC; the all-reduce crosses every NIC while the all-to-alls run.
    """
    s = story(num_ranks=4, capacities=[10.0, 10.0, 10.0, 10.0], slowdown=0.25)
    nics = {r: {r: 20.0} for r in range(4)}
    fwd = s.compute("fwd", 2.0)
    d = s.collective("dispatch", groups=((0, 1), (2, 3)), deps=[fwd], latency=0.1,
                     volumes=[nics[0] | nics[1], nics[2] | nics[3]])
    exp = s.compute("expert", 3.0, deps=[d])
    c = s.collective("combine", groups=((0, 1), (2, 3)), deps=[exp], latency=0.1,
                     volumes=[nics[0] | nics[1], nics[2] | nics[3]])
    s.collective("grads", groups=((0, 1, 2, 3),), kind=OpKind.ALL_REDUCE, stream=DP_COMM, deps=[fwd],
                 latency=0.2, volumes=[{0: 30.0, 1: 30.0, 2: 30.0, 3: 30.0}])
    s.compute("bwd", 4.0, deps=[c])
    return s


def test_symmetric_and_full_simulation_agree_on_rank_zero(story):
    symmetric = symmetric_story(story).run()
    full = symmetric_story(story).run(symmetric=False)
    assert symmetric.meta["symmetric"] is True and full.meta["symmetric"] is False
    rank_zero = [(s.name, s.start, s.end) for s in full.of_rank(0)]
    assert [s.name for s in symmetric.spans] == [name for name, _, _ in rank_zero]
    for span, (_, start, end) in zip(symmetric.spans, rank_zero, strict=True):
        assert (span.start, span.end) == (pytest.approx(start, abs=1e-12), pytest.approx(end, abs=1e-12))
    # Every rank of the full run ends where rank 0 does: the plan is the same everywhere.
    assert {s.rank: s.end for s in full.spans if s.name == "bwd"} == pytest.approx(
        {r: symmetric.makespan for r in range(4)})


def test_symmetric_story_times_by_hand(story, assert_times):
    # fwd 0-2. dispatch and grads both in flight from 2: latencies 0.1 / 0.2, then each NIC carries
    # dispatch's 20 B and grads' 30 B. 2.1-2.2 dispatch alone (10 B/s): 1 B done, 19 B left.
    # From 2.2 both share each NIC, progressive filling in lambda = bytes/s of each one's heaviest
    # volume: 5 B/s each. dispatch's 19 B take 3.8 s -> ends 6.0; grads moved 19 B, its last
    # 11 B at 10 B/s -> ends 7.1. expert 6.0-9.0 slowed by 1.25 while grads is in flight (6.0-7.1):
    # 1.1 s wall = 0.88 s of work, 2.12 s left at full speed -> ends 7.1 + 2.12 = 9.22.
    # combine 9.22 + 0.1 + 20 B / 10 B/s -> 11.32. bwd 11.32 + 4 -> 15.32.
    assert_times(symmetric_story(story).run(), {
        "fwd": (0, 2), "dispatch": (2, 6.0), "grads": (2, 7.1), "expert": (6.0, 9.22),
        "combine": (9.22, 11.32), "bwd": (11.32, 15.32),
    })


def test_all_to_all_span_counts_bytes_sent_to_other_ranks(story):
    s = story(num_ranks=2)
    traffic = np.array([[[5.0, 7.0], [2.0, 11.0]]])  # rank 0 sends 7 to rank 1, rank 1 sends 2
    s.collective("a2a", groups=((0, 1),), traffic=traffic, fraction=0.5)
    sent = {span.rank: span.bytes for span in s.run().spans}
    assert sent == {0: 7.0 * 0.5, 1: 2.0 * 0.5}


def test_a_task_traffic_overrides_the_op_traffic_unscaled(story):
    s = story(num_ranks=2)
    op_traffic = np.array([[[5.0, 7.0], [2.0, 11.0]]])
    part = np.array([[[1.0, 3.0], [4.0, 1.0]]])
    s.collective("a2a", groups=((0, 1),), traffic=op_traffic, task_traffic=part, fraction=0.5)
    sent = {span.rank: span.bytes for span in s.run(symmetric=False).spans}
    assert sent == {0: 3.0, 1: 4.0}


def test_all_to_all_without_a_matrix_sends_all_but_its_own_share(story):
    s = story(num_ranks=4)
    s.collective("a2a", groups=((0, 1, 2, 3),), payload=400.0)
    assert [span.bytes for span in s.run().spans] == [pytest.approx(400.0 * 3 / 4)]


@pytest.mark.parametrize(("kind", "factor"), [
    (OpKind.ALL_REDUCE, 2 * 3 / 4), (OpKind.ALL_GATHER, 3 / 4), (OpKind.REDUCE_SCATTER, 3 / 4),
])
def test_ring_collectives_count_their_ring_traffic(story, kind, factor):
    s = story(num_ranks=4)
    s.collective("coll", groups=((0, 1, 2, 3),), kind=kind, payload=800.0, fraction=0.25)
    span = s.run().spans[0]
    assert (span.bytes, span.flops) == (pytest.approx(800.0 * 0.25 * factor), 0.0)
