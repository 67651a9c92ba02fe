"""Compute slows by exactly (1 + slowdown) while its rank communicates, piecewise when partly overlapped."""

from moesim.plan import StreamKind


def test_compute_under_comm_the_whole_time_stretches_by_one_plus_x(story, assert_times):
    s = story(slowdown=0.5)
    s.compute("gemm", 6.0)
    s.collective("a2a", latency=100.0)
    assert_times(s.run(), {"gemm": (0, 6.0 * 1.5), "a2a": (0, 100)})


def test_compute_partly_overlapped_is_slowed_only_while_comm_runs(story, assert_times):
    s = story(slowdown=0.5)
    s.compute("gemm", 6.0)
    s.collective("a2a", latency=2.0)
    # 0-2 at 1/1.5 speed: 4/3 s of work done; the remaining 14/3 s run at full speed.
    assert_times(s.run(), {"gemm": (0, 2 + (6 - 2 / 1.5)), "a2a": (0, 2)})


def test_comm_starting_mid_kernel_slows_the_rest_piecewise(story, assert_times):
    # Rank 1 reaches the collective at 2 s (its warm-up), so it is in flight on both ranks 2-5.
    s = story(num_ranks=2, slowdown=0.5)
    warm = s.compute("warmup", (0.0, 2.0))
    s.compute("gemm", (6.0, 1.0))
    s.collective("a2a", groups=((0, 1),), deps=[warm], latency=3.0)
    # rank 0: 2 s of work by t=2, 3 s at 1/1.5 speed = 2 s more, the last 2 s at full speed -> 7.
    # rank 1: starts gemm at 2 under comm; 1 s of work at 1/1.5 speed takes 1.5 s -> 3.5.
    assert_times(s.run(symmetric=False), {
        (0, "warmup"): (0, 0), (0, "gemm"): (0, 7), (0, "a2a"): (2, 5),
        (1, "warmup"): (0, 2), (1, "gemm"): (2, 3.5), (1, "a2a"): (2, 5),
    })


def test_overlapping_collectives_slow_compute_once_not_twice(story, assert_times):
    s = story(slowdown=1.0)
    s.compute("gemm", 5.0)
    s.collective("a2a", latency=2.0)
    s.collective("allreduce", stream=StreamKind.DP_COMM, latency=4.0)
    # In flight 0-4: 2 s of work at half speed, then 3 s at full speed.
    assert_times(s.run(), {"gemm": (0, 7), "a2a": (0, 2), "allreduce": (0, 4)})


def test_only_the_communicating_rank_is_slowed(story, assert_times):
    s = story(num_ranks=2, slowdown=0.5)
    s.compute("gemm", 6.0)
    s.collective("a2a", groups=((0,),), latency=4.0)
    # Rank 1 is in no group: its collective completes at once and never slows its compute.
    # Rank 0: 4 s at 1/1.5 speed (8/3 s of work), then 10/3 s at full speed.
    assert_times(s.run(symmetric=False), {
        (0, "gemm"): (0, 4 + (6 - 4 / 1.5)), (0, "a2a"): (0, 4),
        (1, "gemm"): (0, 6), (1, "a2a"): (0, 0),
    })


def test_no_slowdown_leaves_compute_at_full_speed(story, assert_times):
    s = story(slowdown=0.0)
    s.compute("gemm", 6.0)
    s.collective("a2a", latency=3.0)
    assert_times(s.run(), {"gemm": (0, 6), "a2a": (0, 3)})
