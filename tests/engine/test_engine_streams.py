"""Streams, dependencies and the shape of the returned timeline."""

import pickle

import numpy as np
import pytest

from moesim.plan import StreamKind
from moesim.workload.ops import OpKind, Phase

COMPUTE, COMM, DP_COMM = StreamKind.COMPUTE, StreamKind.COMM, StreamKind.DP_COMM


def test_two_tasks_back_to_back_on_one_stream(story, assert_times):
    s = story()
    s.compute("a", 2.0)
    s.compute("b", 3.0)
    assert_times(s.run(), {"a": (0.0, 2.0), "b": (2.0, 5.0)})


def test_cross_stream_dependency_holds_the_waiting_task(story, assert_times):
    s = story()
    a = s.compute("a", 2.0)
    c = s.collective("c", deps=[a], latency=1.0)
    s.compute("d", 2.0)
    s.compute("b", 1.0, deps=[c])
    # c waits for a (ends 2) and runs 1 s; b waits for d on its stream (ends 4), c is done by then.
    assert_times(s.run(), {"a": (0, 2), "c": (2, 3), "d": (2, 4), "b": (4, 5)})


def test_dependency_on_a_later_task_of_another_stream(story, assert_times):
    s = story()
    first = s.compute("first", 1.0, stream=COMM)
    s.compute("slow", 5.0, stream=COMM)
    s.compute("waits", 1.0, deps=[3])  # the task on DP_COMM below
    s.compute("after", 2.0, stream=DP_COMM, deps=[first])
    assert_times(s.run(), {"first": (0, 1), "slow": (1, 6), "after": (1, 3), "waits": (3, 4)})


def test_compute_span_carries_flops_and_bytes_of_its_part_on_its_rank(story):
    s = story(num_ranks=2)
    s.compute("fc", 4.0, flops=100.0, mem_bytes=40.0, rank_scale=(1.0, 3.0), fraction=0.5,
              phase=Phase.BACKWARD_WEIGHT, layer=3)
    spans = {span.rank: span for span in s.run(symmetric=False).spans}
    assert (spans[0].flops, spans[0].bytes) == (50.0, 20.0)
    assert (spans[1].flops, spans[1].bytes) == (150.0, 60.0)
    assert spans[1].kind is OpKind.MATMUL and spans[1].phase is Phase.BACKWARD_WEIGHT
    assert spans[1].layer == 3 and spans[1].stream is StreamKind.COMPUTE
    assert spans[1].end == pytest.approx(2.0)  # 4 s at fraction 0.5


def test_spans_sorted_by_rank_start_stream_then_task(story):
    s = story(num_ranks=2)
    early = s.compute("early_comm", 1.0, stream=COMM)
    s.compute("also_at_zero", 1.0, stream=DP_COMM)
    s.compute("compute_at_zero", 3.0, stream=COMPUTE)
    s.compute("late_compute", 0.0, stream=COMPUTE, deps=[early])
    spans = s.run(symmetric=False).spans
    order = [(span.rank, span.name) for span in spans]
    # At t=0 compute precedes comm precedes dp_comm (stream order, not task id); late_compute starts at 3.
    per_rank = ["compute_at_zero", "early_comm", "also_at_zero", "late_compute"]
    assert order == [(0, n) for n in per_rank] + [(1, n) for n in per_rank]


def test_timeline_describes_the_run(story):
    s = story(num_ranks=4)
    a = s.compute("a", 1.0)
    s.compute("b", 1.0, deps=[a])
    symmetric = s.run()
    assert symmetric.represents == {0: (0, 1, 2, 3)}
    assert symmetric.meta == {"symmetric": True, "simulated_tasks": 2}
    assert symmetric.task_deps == ((), (0,))
    assert (symmetric.schedule, symmetric.source, symmetric.num_ranks) == ("story", "predicted", 4)
    full = s.run(symmetric=False)
    assert full.represents == {0: (0,), 1: (1,), 2: (2,), 3: (3,)}
    assert full.meta == {"symmetric": False, "simulated_tasks": 8}


def test_uneven_compute_falls_back_to_every_rank(story):
    s = story(num_ranks=3)
    s.compute("expert", (1.0, 2.0, 3.0), rank_scale=(1.0, 2.0, 3.0))
    timeline = s.run()
    assert timeline.meta["symmetric"] is False
    assert [span.end for span in timeline.spans] == [1.0, 2.0, 3.0]


def test_same_plan_and_cost_give_byte_identical_timelines(story):
    def build():
        s = story(num_ranks=4, capacities=[10.0, 7.0, 3.0, 5.0], slowdown=0.3)
        traffic = np.array([[[1.0, 9.0], [4.0, 2.0]], [[3.0, 3.0], [8.0, 1.0]]])
        x = s.compute("x", (1.0, 1.5, 0.7, 1.1))
        d = s.collective("d", groups=((0, 1), (2, 3)), deps=[x], latency=0.1, traffic=traffic,
                         volumes=[{0: 30.0, 1: 12.0}, {2: 9.0, 3: 20.0}])
        s.collective("g", groups=((0, 1, 2, 3),), kind=OpKind.ALL_REDUCE, stream=DP_COMM, deps=[x],
                     volumes=[{0: 50.0, 1: 50.0, 2: 50.0, 3: 50.0}], payload=64.0)
        s.compute("y", (2.0, 1.0, 1.0, 3.0), deps=[d])
        return s.run(symmetric=False)

    first, second = build(), build()
    assert pickle.dumps(first.spans) == pickle.dumps(second.spans)
    assert repr(first.meta) == repr(second.meta) and first.represents == second.represents
