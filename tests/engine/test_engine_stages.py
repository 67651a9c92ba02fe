"""Staged collectives (hierarchical algorithms): stages run one after another, each sharing the network."""

from moesim.plan import StreamKind


def test_a_two_stage_collective_alone_adds_its_stages(story, assert_times):
    # stage 1: 1 s latency, 20 B on link 0 at 10 B/s (2 s); stage 2: 0.5 s latency, 10 B on link 1 (1 s)
    s = story(capacities=[10.0, 10.0])
    s.collective("a2a", latency=1.0, volumes=[{0: 20.0}])
    s.cost.next_stage["a2a"] = (0.5, {1: 10.0})
    assert_times(s.run(), {"a2a": (0.0, 4.5)})


def test_the_second_stage_shares_its_link_with_a_running_coflow(story, assert_times):
    # "grads" moves 50 B on link 1 from t=0 at 10 B/s; "a2a" reaches link 1 at 3.5 s (1 + 2 + 0.5).
    # By then grads has 15 B left; both get 5 B/s: a2a's 10 B end at 5.5 s, grads has 5 B left,
    # alone again at 10 B/s: it ends at 6.0 s.
    s = story(capacities=[10.0, 10.0])
    s.collective("a2a", latency=1.0, volumes=[{0: 20.0}])
    s.cost.next_stage["a2a"] = (0.5, {1: 10.0})
    s.collective("grads", stream=StreamKind.DP_COMM, volumes=[{1: 50.0}])
    assert_times(s.run(), {"a2a": (0.0, 5.5), "grads": (0.0, 6.0)})
