"""A collective's work on a CPU host's cores: when it starts, the compute its ranks run then ends that much later."""


def test_a_collective_that_starts_under_a_kernel_takes_its_work_from_it(story, assert_times):
    # 10 B at 10 B/s: the a2a runs 0-1 s beside a 5 s kernel and takes 0.3 s of it: the kernel ends at 5.3.
    s = story(capacities=[10.0])
    s.cost.host.cpu["a2a"] = 0.3
    s.compute("gemm", 5.0)
    s.collective("a2a", volumes=[{0: 10.0}])
    assert_times(s.run(), {"gemm": (0.0, 5.3), "a2a": (0.0, 1.0)})


def test_a_collective_the_compute_waits_for_takes_nothing(story, assert_times):
    # The kernel before it has ended and the next waits for it: an idle core does the work for free.
    s = story(capacities=[10.0])
    s.cost.host.cpu["a2a"] = 0.3
    s.compute("gemm", 2.0)
    s.collective("a2a", volumes=[{0: 10.0}], deps=[0])
    s.compute("gemm2", 1.0, deps=[1])
    assert_times(s.run(), {"gemm": (0.0, 2.0), "a2a": (2.0, 3.0), "gemm2": (3.0, 4.0)})


def test_the_work_adds_to_the_slowdown_while_it_runs(story, assert_times):
    # x = 1 while the a2a runs (0-1 s): the kernel does 0.5 s of work by 1 s, and the 0.3 s charged at its
    # start, at the half rate then, is 0.15 s of work: 5.15 - 0.5 = 4.65 s left at full speed after 1 s.
    s = story(capacities=[10.0], slowdown=1.0)
    s.cost.host.cpu["a2a"] = 0.3
    s.compute("gemm", 5.0)
    s.collective("a2a", volumes=[{0: 10.0}])
    assert_times(s.run(), {"gemm": (0.0, 5.65), "a2a": (0.0, 1.0)})
