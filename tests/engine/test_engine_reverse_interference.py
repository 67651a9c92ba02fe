"""Reverse interference: a collective's transfer slows while a member rank computes."""

from moesim.plan import StreamKind


def test_a_transfer_under_a_long_kernel_takes_1_plus_y_times_longer(story, assert_times):
    # 10 B at 10 B/s alone takes 1 s; the rank computes for 5 s meanwhile, y = 1: 2 s.
    s = story(capacities=[10.0])
    s.cost.comm_slowdown = 1.0
    s.compute("gemm", 5.0)
    s.collective("a2a", volumes=[{0: 10.0}])
    assert_times(s.run(), {"gemm": (0.0, 5.0), "a2a": (0.0, 2.0)})


def test_the_rate_changes_exactly_when_the_kernel_ends(story, assert_times):
    # kernel [0, 0.5]: the transfer moves 0.5 s x 5 B/s = 2.5 B slowed, then 7.5 B at 10 B/s = 0.75 s.
    s = story(capacities=[10.0])
    s.cost.comm_slowdown = 1.0
    s.compute("gemm", 0.5)
    s.collective("a2a", volumes=[{0: 10.0}])
    assert_times(s.run(), {"gemm": (0.0, 0.5), "a2a": (0.0, 1.25)})


def test_only_member_ranks_slow_their_collective(story, assert_times):
    # Two groups on their own links; only rank 0 computes, so only group (0,)'s transfer slows (y = 3).
    s = story(num_ranks=2, capacities=[10.0, 10.0])
    s.cost.comm_slowdown = 3.0
    s.compute("gemm", (4.0, 0.0))
    s.collective("a2a", groups=((0,), (1,)), volumes=[{0: 10.0}, {1: 10.0}])
    timeline = s.run(symmetric=False)
    assert_times(timeline, {(0, "gemm"): (0.0, 4.0), (1, "gemm"): (0.0, 0.0),
                            (0, "a2a"): (0.0, 4.0), (1, "a2a"): (0.0, 1.0)})


def test_both_directions_together(story, assert_times):
    # x = y = 1: the kernel's 1 s of work runs at half speed while the collective is in flight, and the
    # transfer's 10 B move at 5 B/s while the kernel runs; neither ends before t = 2, so both end there.
    s = story(capacities=[10.0], slowdown=1.0)
    s.cost.comm_slowdown = 1.0
    s.compute("gemm", 1.0)
    s.collective("a2a", stream=StreamKind.COMM, volumes=[{0: 10.0}])
    assert_times(s.run(), {"gemm": (0.0, 2.0), "a2a": (0.0, 2.0)})


def test_a_collective_starting_under_compute_waits_for_a_core(story, assert_times):
    # z = 0.3 s extra latency when a member computes at the stage's start: 0.1 s latency + 0.3 s + 1 s.
    s = story(capacities=[10.0])
    s.cost.host.comm_latency_under_compute = 0.3
    s.compute("gemm", 5.0)
    s.collective("a2a", latency=0.1, volumes=[{0: 10.0}])
    s.collective("later", latency=0.1, volumes=[{0: 10.0}], deps=[0])  # after the kernel: no wait
    assert_times(s.run(), {"gemm": (0.0, 5.0), "a2a": (0.0, 1.4), "later": (5.0, 6.1)})


def test_a_task_woken_by_another_stream_starts_a_handoff_later(story, assert_times):
    # h = 0.05 s: the collective waited for the gemm (another stream) and starts at 1.05; the second gemm
    # waited for the collective and starts 0.05 after it ends; a task whose dependency had already ended,
    # or that followed its own stream, pays nothing.
    s = story(capacities=[10.0])
    s.cost.host.stream_handoff = 0.05
    s.compute("gemm", 1.0)
    s.collective("a2a", latency=0.0, volumes=[{0: 10.0}], deps=[0])
    s.compute("gemm2", 1.0, deps=[1])
    s.compute("gemm3", 1.0, deps=[0])  # same stream, its dependency long done
    assert_times(s.run(), {"gemm": (0.0, 1.0), "a2a": (1.05, 2.05), "gemm2": (2.1, 3.1), "gemm3": (3.1, 4.1)})


def test_the_wait_for_a_core_ends_when_the_rank_stops_computing(story, assert_times):
    # z = 0.3 s, but the rank's compute stream goes idle at 0.1 s (gemm2 waits for the collective), so the
    # collective's threads get a core then: 0.1 + 0.1 latency + 1 s transfer = 1.2 s.
    s = story(capacities=[10.0])
    s.cost.host.comm_latency_under_compute = 0.3
    s.compute("gemm", 0.1)
    s.collective("a2a", latency=0.1, volumes=[{0: 10.0}])
    s.compute("gemm2", 0.5, deps=[1])
    assert_times(s.run(), {"gemm": (0.0, 0.1), "a2a": (0.0, 1.2), "gemm2": (1.2, 1.7)})


def test_a_kernel_that_follows_at_once_keeps_the_core_busy(story, assert_times):
    # gemm then gemm2 back to back on the compute stream: no idle moment at 0.1 s, so the full z = 0.3 s.
    s = story(capacities=[10.0])
    s.cost.host.comm_latency_under_compute = 0.3
    s.compute("gemm", 0.1)
    s.collective("a2a", latency=0.1, volumes=[{0: 10.0}])
    s.compute("gemm2", 5.0)
    assert_times(s.run(), {"gemm": (0.0, 0.1), "a2a": (0.0, 1.4), "gemm2": (0.1, 5.1)})


def test_a_collective_waits_a_share_of_the_compute_since_the_last_one(story, assert_times):
    # skew 0.1: the a2a follows 2 s of compute, so it starts moving bytes 0.2 s late; the second follows
    # 1 s more of compute since the first (not 3), so 0.1 s late.
    s = story(capacities=[10.0])
    s.cost.host.rendezvous_skew = 0.1
    s.compute("gemm", 2.0)
    s.collective("a2a", latency=0.0, volumes=[{0: 10.0}], deps=[0])
    s.compute("gemm2", 1.0, deps=[1])
    s.collective("a2a2", latency=0.0, volumes=[{0: 10.0}], deps=[2])
    assert_times(s.run(), {"gemm": (0.0, 2.0), "a2a": (2.0, 3.2), "gemm2": (3.2, 4.2), "a2a2": (4.2, 5.3)})


def test_the_rendezvous_wait_levels_off_at_its_cap(story, assert_times):
    # skew 0.1 of 2 s would be 0.2 s; the cap holds it to 0.05 s.
    s = story(capacities=[10.0])
    s.cost.host.rendezvous_skew, s.cost.host.rendezvous_skew_cap = 0.1, 0.05
    s.compute("gemm", 2.0)
    s.collective("a2a", latency=0.0, volumes=[{0: 10.0}], deps=[0])
    assert_times(s.run(), {"gemm": (0.0, 2.0), "a2a": (2.0, 3.05)})


def test_compute_is_not_slowed_while_the_collective_waits_for_a_core(story, assert_times):
    # z = 0.3 s, x = 1: the collective waits 0-0.3 for a core (no cycles taken), runs 0.3-0.4 and halves
    # the kernel's speed only then: 0.35 s of work by 0.4, the other 4.65 s at full speed.
    s = story(slowdown=1.0)
    s.cost.host.comm_latency_under_compute = 0.3
    s.compute("gemm", 5.0)
    s.collective("a2a", latency=0.1)
    assert_times(s.run(), {"gemm": (0.0, 5.05), "a2a": (0.0, 0.4)})


def test_compute_is_not_slowed_while_the_collective_waits_for_its_last_member(story, assert_times):
    # skew 0.1 after 2 s of compute: the a2a waits 2.0-2.2 for its late member, runs 2.2-3.2; gemm2
    # (same stream as gemm, not waiting for the a2a) runs at half speed only 2.2-3.2: 0.7 s of work by 3.2.
    s = story(slowdown=1.0)
    s.cost.host.rendezvous_skew = 0.1
    s.compute("gemm", 2.0)
    s.collective("a2a", latency=1.0, deps=[0])
    s.compute("gemm2", 5.0)
    assert_times(s.run(), {"gemm": (0.0, 2.0), "a2a": (2.0, 3.2), "gemm2": (2.0, 7.5)})


def test_compute_woken_while_a_collective_runs_waits_for_the_core(story, assert_times):
    # w = 0.3 s: a2a ends at 1.0 and wakes gemm, but a2a2 (same stream, right after) runs 1.0-1.2 on the
    # core gemm needs: gemm starts when a2a2 ends. a2a4 (3 s) outlasts w: gemm2, woken at 4.2, starts at 4.5.
    s = story(capacities=[10.0])
    s.cost.host.compute_wait_under_comm = 0.3
    s.collective("a2a", latency=1.0)
    s.collective("a2a2", latency=0.2)
    s.compute("gemm", 1.0, deps=[0])
    s.collective("a2a3", latency=2.0, deps=[2])
    s.compute("gemm2", 1.0, deps=[3])
    s.collective("a2a4", latency=3.0, deps=[3])
    assert_times(s.run(), {"a2a": (0.0, 1.0), "a2a2": (1.0, 1.2), "gemm": (1.2, 2.2), "a2a3": (2.2, 4.2),
                           "gemm2": (4.5, 5.5), "a2a4": (4.2, 7.2)})
