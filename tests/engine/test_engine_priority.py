"""Strict priority classes on shared links: stories with hand-computed finish times.

The MoE all-to-all stream (``comm``) is class 0 and the gradient buckets' stream (``dp_comm``) class 1:
on a link they share the all-to-all is served first and a bucket moves on what it leaves.
"""

import numpy as np
import pytest

from moesim.engine.network import max_min_rates
from moesim.plan import StreamKind

COMM, DP_COMM = StreamKind.COMM, StreamKind.DP_COMM


def _prioritised(story, **kwargs):
    s = story(**kwargs)
    s.priority = {COMM: 0, DP_COMM: 1}
    return s


def test_the_high_class_takes_what_it_can_the_low_one_what_is_left_then_all_of_it(story, assert_times):
    s = _prioritised(story, capacities=[10.0, 8.0])
    s.collective("a2a", volumes=[{0: 40.0, 1: 40.0}])
    s.collective("bucket", stream=DP_COMM, volumes=[{0: 100.0}])
    # The all-to-all is held to 8 B/s by link 1 and takes 8 of link 0's 10: it ends at 40 / 8 = 5.
    # The bucket moves on the 2 B/s left (10 B by 5), then alone at 10 B/s: 90 / 10 = 9 more, ends at 14.
    assert_times(s.run(), {"a2a": (0, 5), "bucket": (0, 14)})


def test_without_classes_the_same_links_are_shared_max_min_fairly(story, assert_times):
    s = story(capacities=[10.0, 8.0])
    s.collective("a2a", volumes=[{0: 40.0, 1: 40.0}])
    s.collective("bucket", stream=DP_COMM, volumes=[{0: 100.0}])
    # 5 B/s each on link 0: the all-to-all ends at 40 / 5 = 8 with the bucket at 40 B; 60 / 10 = 6 more.
    assert_times(s.run(), {"a2a": (0, 8), "bucket": (0, 14)})


def test_a_low_class_flow_waits_while_a_high_one_takes_the_whole_link(story, assert_times):
    s = _prioritised(story, capacities=[10.0])
    s.collective("a2a", volumes=[{0: 50.0}])
    s.collective("bucket", stream=DP_COMM, volumes=[{0: 100.0}])
    # 0-5: the all-to-all at 10 B/s, the bucket at 0; then the bucket alone: 100 / 10 = 10, ends at 15.
    assert_times(s.run(), {"a2a": (0, 5), "bucket": (0, 15)})


def test_a_high_class_flow_arriving_later_preempts_the_low_one(story, assert_times):
    s = _prioritised(story, capacities=[10.0])
    s.collective("bucket", stream=DP_COMM, volumes=[{0: 100.0}])
    wait = s.compute("wait", 2.0)
    s.collective("a2a", deps=[wait], volumes=[{0: 30.0}])
    # 0-2: the bucket alone moves 20 B. 2-5: the all-to-all takes all 10 B/s (30 B), the bucket stops.
    # From 5 the bucket moves its last 80 B alone: ends at 13.
    assert_times(s.run(), {"bucket": (0, 13), "wait": (0, 2), "a2a": (2, 5)})


def test_max_min_rates_serves_classes_in_order():
    resources = [np.array([0, 1]), np.array([0]), np.array([0])]
    volumes = [np.array([40.0, 40.0]), np.array([100.0]), np.array([100.0])]
    capacities = np.array([10.0, 8.0])
    rates = max_min_rates(resources, volumes, capacities, [0, 1, 1])
    # class 0 alone: 8 B/s (link 1) on 40 B -> 0.2/s; class 1 splits link 0's 2 B/s left: 1 B/s each on 100 B.
    assert rates.tolist() == pytest.approx([0.2, 0.01, 0.01])
    # the same coflows in one class: 10/3 B/s each on link 0
    assert max_min_rates(resources, volumes, capacities).tolist() == pytest.approx([1 / 12, 1 / 30, 1 / 30])
