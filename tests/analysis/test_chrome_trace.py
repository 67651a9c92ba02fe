"""Chrome Trace Event export: one X per span in µs, metadata per rank and stream, matched flow arrows."""

from __future__ import annotations

import json

import pytest

from moesim.analysis.chrome_trace import chrome_trace, write_chrome_trace
from moesim.plan import StreamKind
from moesim.workload.ops import Phase

C, A, D = StreamKind.COMPUTE, StreamKind.COMM, StreamKind.DP_COMM


@pytest.fixture
def two_ranks(make_span, make_timeline):
    """Per rank: task 0 (compute) -> task 1 (all-to-all on comm) -> task 2 (compute, also needs task 0)
    -> task 3 (all-reduce on dp_comm); task 4 (compute) follows task 2 back to back on the compute stream.
    Task 2 starts exactly when task 1 ends. Rank 1 runs 0.5 ms later. Rank 0 stands for 4 ranks."""
    spans = []
    for rank, shift in ((0, 0.0), (1, 0.0005)):
        spans += [
            make_span(rank, C, 0.0 + shift, 0.0010 + shift, task=0, name="L0.router", layer=0),
            make_span(rank, A, 0.0010 + shift, 0.0025 + shift, task=1, name="L0.dispatch", layer=0),
            make_span(rank, C, 0.0025 + shift, 0.0030 + shift, task=2, name="L0.expert_fc1", layer=0),
            make_span(rank, D, 0.0030 + shift, 0.0040 + shift, task=3, name="bucket0", phase=Phase.GRAD_SYNC),
            make_span(rank, C, 0.0030 + shift, 0.0035 + shift, task=4, name="L1.ln1", layer=1),
        ]
    deps = [(), (0,), (1, 0), (2,), (2,)]
    return make_timeline(spans, represents={0: (0, 2, 4, 6), 1: (1,)}, num_ranks=5, task_deps=deps)


def by_phase(trace, ph):
    return [e for e in trace["traceEvents"] if e["ph"] == ph]


def test_one_complete_event_per_span_in_microseconds(two_ranks):
    trace = chrome_trace(two_ranks)
    complete = by_phase(trace, "X")
    assert len(complete) == len(two_ranks.spans)
    dispatch0 = next(e for e in complete if e["pid"] == 0 and e["name"] == "L0.dispatch")
    assert dispatch0["ts"] == pytest.approx(1000.0)   # 0.0010 s
    assert dispatch0["dur"] == pytest.approx(1500.0)  # 0.0015 s
    assert dispatch0["tid"] == 1
    assert dispatch0["cat"] == "forward"
    assert dispatch0["args"] == {"task": 1, "op": 1, "kind": "all_to_all", "phase": "forward", "layer": 0,
                                 "flops": 0.0, "bytes": 0.0}
    bucket1 = next(e for e in complete if e["pid"] == 1 and e["name"] == "bucket0")
    assert (bucket1["ts"], bucket1["tid"], bucket1["cat"]) == (pytest.approx(3500.0), 2, "grad_sync")
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"]["schedule"] == "test"
    assert trace["otherData"]["source"] == "predicted"


def test_metadata_names_each_rank_and_stream(two_ranks):
    meta = by_phase(chrome_trace(two_ranks), "M")
    process_names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert process_names == {0: "rank 0 (represents 4 ranks)", 1: "rank 1"}
    sort_index = {e["pid"]: e["args"]["sort_index"] for e in meta if e["name"] == "process_sort_index"}
    assert sort_index == {0: 0, 1: 1}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert threads == {(r, t): name for r in (0, 1) for t, name in enumerate(("compute", "comm", "dp_comm"))}
    thread_order = {(e["pid"], e["tid"]): e["args"]["sort_index"]
                    for e in meta if e["name"] == "thread_sort_index"}
    assert thread_order == {(r, t): t for r in (0, 1) for t in range(3)}


def test_cross_stream_dependencies_become_matched_flow_arrows(two_ranks):
    trace = chrome_trace(two_ranks)
    starts, finishes = by_phase(trace, "s"), by_phase(trace, "f")
    # Per rank: 0->1 (compute->comm), 1->2 (comm->compute), 2->3 (compute->dp_comm);
    # 0->2 and 2->4 stay on one stream: no arrow.
    assert len(starts) == len(finishes) == 6
    assert len({e["id"] for e in starts}) == 6
    finish_of = {e["id"]: e for e in finishes}
    arrows = set()
    for start in starts:
        finish = finish_of[start["id"]]
        assert start["cat"] == finish["cat"] == "dependency"
        assert start["name"] == finish["name"]
        assert finish["bp"] == "e"
        assert start["pid"] == finish["pid"]
        arrows.add((start["pid"], start["tid"], start["ts"], finish["tid"], finish["ts"]))
    expected = set()
    for rank, shift_us in ((0, 0.0), (1, 500.0)):
        # producer end (less Perfetto's 1 ns, see the next test) -> consumer start
        expected |= {(rank, 0, 999.999 + shift_us, 1, 1000.0 + shift_us),   # router -> dispatch
                     (rank, 1, 2499.999 + shift_us, 0, 2500.0 + shift_us),  # dispatch -> expert
                     (rank, 0, 2999.999 + shift_us, 2, 3000.0 + shift_us)}  # expert -> bucket
    assert {tuple(round(v, 3) for v in arrow) for arrow in arrows} == expected


def test_flow_ends_lie_inside_the_slices_they_bind_to(two_ranks):
    # Perfetto binds a flow event to the slice open on its track and opens slices first at a tie: an "s"
    # exactly at the end of L0.expert_fc1 would bind to L1.ln1, which starts then on the same track.
    events = chrome_trace(two_ranks)["traceEvents"]
    complete = {(e["pid"], e["name"]): (i, e) for i, e in enumerate(events) if e["ph"] == "X"}
    arrow = "L0.expert_fc1 -> bucket0"
    for rank in (0, 1):
        _, expert = complete[(rank, "L0.expert_fc1")]
        _, ln1 = complete[(rank, "L1.ln1")]
        [start] = [e for e in events if e["ph"] == "s" and e["pid"] == rank and e["name"] == arrow]
        assert expert["ts"] < start["ts"] < expert["ts"] + expert["dur"] == ln1["ts"]
        assert expert["ts"] + expert["dur"] - start["ts"] == pytest.approx(0.001)  # 1 ns
        bucket_at, bucket = complete[(rank, "bucket0")]
        [(finish_at, finish)] = [(i, e) for i, e in enumerate(events)
                                 if e["ph"] == "f" and e["pid"] == rank and e["name"] == arrow]
        assert finish["ts"] == bucket["ts"] and finish["tid"] == bucket["tid"]
        assert finish_at > bucket_at  # after the slice it binds to, for viewers that break ties by file order


def test_same_timeline_same_bytes_whatever_the_span_order(two_ranks, make_timeline, tmp_path):
    first = write_chrome_trace(two_ranks, tmp_path / "a.json")
    second = write_chrome_trace(two_ranks, tmp_path / "b.json")
    shuffled = make_timeline(list(reversed(two_ranks.spans)), represents=two_ranks.represents, num_ranks=5,
                             task_deps=two_ranks.task_deps)
    third = write_chrome_trace(shuffled, tmp_path / "c.json")
    assert first == tmp_path / "a.json"
    assert first.read_bytes() == second.read_bytes() == third.read_bytes()
    assert json.loads(first.read_text())["traceEvents"]


def test_timelines_without_dependencies_have_no_flows(make_span, make_timeline):
    timeline = make_timeline([make_span(0, C, 0.0, 1.0, task=0), make_span(0, A, 1.0, 2.0, task=1)])
    trace = chrome_trace(timeline)
    assert by_phase(trace, "s") == [] and by_phase(trace, "f") == []
    assert len(by_phase(trace, "X")) == 2
