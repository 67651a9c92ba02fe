"""Flow-level bandwidth sharing: stories on one or two links with hand-computed finish times."""

import numpy as np
import pytest

from moesim.engine.network import max_min_rates
from moesim.errors import MoesimError
from moesim.plan import StreamKind

DP_COMM = StreamKind.DP_COMM


def test_a_coflow_alone_moves_at_link_speed(story, assert_times):
    s = story(capacities=[10.0])
    s.collective("a2a", volumes=[{0: 100.0}])
    assert_times(s.run(), {"a2a": (0, 10)})


def test_two_coflows_sharing_one_nic_take_twice_as_long(story, assert_times):
    s = story(capacities=[10.0])
    s.collective("a2a", volumes=[{0: 100.0}])
    s.collective("allreduce", stream=DP_COMM, volumes=[{0: 100.0}])
    assert_times(s.run(), {"a2a": (0, 20), "allreduce": (0, 20)})


def test_a_coflow_joining_half_way_splits_the_rest(story, assert_times):
    s = story(capacities=[10.0])
    s.collective("first", volumes=[{0: 100.0}])
    wait = s.compute("wait", 5.0)
    s.collective("second", stream=DP_COMM, deps=[wait], volumes=[{0: 100.0}])
    # 0-5: first alone moves 50. Then 5 B/s each: first's last 50 take 10 s (ends 15);
    # second has moved 50 by then and moves its last 50 alone at 10 B/s (ends 20).
    assert_times(s.run(), {"first": (0, 15), "wait": (0, 5), "second": (5, 20)})


def test_a_multi_resource_coflow_alone_takes_its_slowest_resource(story, assert_times):
    s = story(capacities=[10.0, 40.0])
    s.collective("a2a", volumes=[{0: 100.0, 1: 200.0}])
    assert_times(s.run(), {"a2a": (0, max(100.0 / 10.0, 200.0 / 40.0))})


def test_max_min_a_coflow_bottlenecked_elsewhere_leaves_the_rest_of_the_link(story, assert_times):
    s = story(capacities=[10.0, 100.0])
    s.collective("narrow", volumes=[{0: 100.0, 1: 100.0}])
    s.collective("wide", stream=DP_COMM, volumes=[{1: 1800.0}])
    # narrow is held to 10 B/s by link 0 (uses 10 of link 1), wide gets the other 90 B/s:
    # narrow ends at 10; wide has moved 900 and moves 900 more alone at 100 B/s, ending at 19.
    # (An equal split of link 1 would have given 50 B/s each.)
    assert_times(s.run(), {"narrow": (0, 10), "wide": (0, 19)})


def test_an_ending_coflow_frees_bandwidth_along_a_chain_of_shared_links(story, assert_times):
    s = story(capacities=[10.0, 20.0])
    s.collective("a", volumes=[{0: 50.0}])
    s.collective("b", stream=DP_COMM, volumes=[{0: 100.0, 1: 100.0}])
    s.collective("c", stream=StreamKind.COMPUTE, volumes=[{1: 300.0}])
    # 0-10: link 0 splits 5/5 between a and b; c takes link 1's other 15 B/s. a ends at 10.
    # c shares nothing with a, but b now gets 10 B/s, which leaves c 10 B/s (not 15):
    # b's last 50 B end at 15; c has 150 - 50 = 100 B left and moves them alone at 20 B/s.
    assert_times(s.run(), {"a": (0, 10), "b": (0, 15), "c": (0, 20)})


def test_latency_comes_before_the_transfer_and_uses_no_bandwidth(story, assert_times):
    s = story(capacities=[10.0])
    s.collective("late", latency=5.0, volumes=[{0: 100.0}])
    s.collective("early", stream=DP_COMM, volumes=[{0: 50.0}])
    assert_times(s.run(), {"early": (0, 5), "late": (0, 15)})


def test_a_zero_volume_collective_takes_only_its_latency(story, assert_times):
    s = story(capacities=[10.0])
    s.collective("empty", latency=0.25)
    s.collective("zeros", stream=DP_COMM, latency=0.5, volumes=[{0: 0.0}])
    assert_times(s.run(), {"empty": (0, 0.25), "zeros": (0, 0.5)})


def test_coflows_on_separate_links_do_not_slow_each_other(story, assert_times):
    s = story(capacities=[10.0, 5.0])
    s.collective("a", volumes=[{0: 100.0}])
    s.collective("b", stream=DP_COMM, volumes=[{1: 100.0}])
    assert_times(s.run(), {"a": (0, 10), "b": (0, 20)})


def test_max_min_rates_by_progressive_filling():
    # Links 0 (12 B/s) and 1 (2 B/s). Coflows 0 and 1 cross link 0; coflow 2 crosses both.
    # Link 1 saturates first at lambda = 2 (coflow 2 frozen: 2/6 of its 6 bytes per second);
    # link 0 has 10 B/s left for coflows 0 and 1: lambda = 5 each, 5/6 per second.
    rates = max_min_rates(
        [np.array([0]), np.array([0]), np.array([0, 1])],
        [np.array([6.0]), np.array([6.0]), np.array([6.0, 6.0])],
        np.array([12.0, 2.0]),
    )
    assert rates.tolist() == pytest.approx([5 / 6, 5 / 6, 1 / 3])


def test_max_min_rates_weigh_each_resource_by_its_share_of_the_heaviest_volume():
    # One coflow moves 10 bytes on link 0 and 5 on link 1; another moves 10 on link 1 only.
    # Link 1 (cap 6) carries lambda*0.5 + lambda*1 -> lambda = 4, under link 0's limit of 20.
    rates = max_min_rates(
        [np.array([0, 1]), np.array([1])], [np.array([10.0, 5.0]), np.array([10.0])], np.array([20.0, 6.0])
    )
    assert rates.tolist() == pytest.approx([4 / 10, 4 / 10])


def test_an_unknown_resource_id_is_a_user_error(story):
    s = story(capacities=[10.0])
    s.collective("a2a", volumes=[{3: 100.0}])
    with pytest.raises(MoesimError, match="resource id 3"):
        s.run()


def test_a_zero_capacity_resource_is_a_user_error(story):
    s = story(capacities=[10.0, 0.0])
    s.collective("a2a", volumes=[{1: 100.0}])
    with pytest.raises(MoesimError, match=r"capacities\[1\]"):
        s.run()
