"""The plan executor: real 2-rank gloo runs of three schedules obey the plan; kernels and split sizes."""

import os
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest

pytest.importorskip("torch")

from moesim.api import scenario  # noqa: E402
from moesim.engine import simulate_plan  # noqa: E402
from moesim.errors import DeadlockError, MoesimError  # noqa: E402
from moesim.plan import ExecutionPlan, StreamKind, Task  # noqa: E402
from moesim.timeline import Timeline  # noqa: E402
from moesim.validation.collective_kernels import a2a_splits  # noqa: E402
from moesim.validation.executor import topological_order  # noqa: E402
from moesim.validation.kernels import KERNELS, TensorPool, compute_kernel  # noqa: E402
from moesim.validation.launch import free_port, torchrun  # noqa: E402
from moesim.validation.run_plan import load_measured, plan_for  # noqa: E402
from moesim.workload.ops import Axis, CommSpec, Op, OpGraph, OpKind, Phase, Role  # noqa: E402

SMALL = {"model.num_layers": 2, "training.batch_per_gpu": 2}
LABELS = ("sequential", "tutel:degree=2", "lancet")
ITERATIONS = 3
# tiny-moe-a at this size, per rank: T = 2 x 128 tokens, h = 256, E = 2 ranks x 2 experts, top-1,
# capacity factor 1, fp32. Capacity C = T / E = 64 rows per expert; a rank sends its 2 peer experts'
# slots, 2 x 64 rows of h fp32 values, to the other rank.
TOKENS, HIDDEN, ELEMENT_BYTES = 2 * 128, 256, 4
DISPATCH_SENT_BYTES = 2 * (TOKENS // 4) * HIDDEN * ELEMENT_BYTES


@pytest.fixture(scope="module")
def scn():
    return scenario("tiny-moe-a", "cpu-loopback", 1, SMALL)


@pytest.fixture(scope="module")
def plans(scn):
    return {label: plan_for(scn, label) for label in LABELS}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("measured") / "measured.json"
    args = ["--model", "tiny-moe-a", "--hardware", "cpu-loopback", "--nodes", "1", "--warmup", "1",
            "--iterations", str(ITERATIONS), "--out", str(out)]
    for key, value in SMALL.items():
        args += ["--set", f"{key}={value}"]
    for label in LABELS:
        args += ["--schedule", label]
    torchrun("moesim.validation.run_plan", args, 2, timeout_s=240)
    return load_measured(out)


def _round(size, share):
    return max(0, int(size * share + 0.5))


def expected_shapes(op, share):
    """The output shape(s) of ``op``'s kernel at ``share``, from the op's dims (the harness's contract:
    the token dimension scales with the share, every other size is the op's)."""
    d, phase = op.dims, op.phase
    twice = phase is Phase.BACKWARD_INPUT and op.kind not in (OpKind.MATMUL, OpKind.ROUTER, OpKind.ATTENTION,
                                                              OpKind.LOSS)
    if op.kind is OpKind.MATMUL:
        lead = (d["batch"],) if d.get("batch", 1) > 1 else ()
        m = d["m"] if phase is Phase.BACKWARD_WEIGHT else _round(d["m"], share)
        once = lead + (m, d["n"])
    elif op.kind is OpKind.ATTENTION:
        b, kv_heads = _round(d["b"], share), d.get("kv_heads", d["heads"])
        once = (b, d["heads"], d["s"], d.get("v_head_dim", d["head_dim"]))
        if phase is Phase.BACKWARD_INPUT:  # the real backward: dQ, dK, dV
            once = ((b, d["heads"], d["s"], d["head_dim"]), (b, kv_heads, d["s"], d["head_dim"]),
                    (b, kv_heads, d["s"], d.get("v_head_dim", d["head_dim"])))
    elif op.kind is OpKind.LAYERNORM:
        once = (((d["hidden"],), (d["hidden"],)) if phase is Phase.BACKWARD_WEIGHT
                else (_round(d["tokens"], share), d["hidden"]))
    elif op.kind is OpKind.ELEMENTWISE:
        once = (_round(d["numel"], share),)
    elif op.kind is OpKind.SOFTMAX:
        once = (_round(d["rows"], share), d["cols"])
    elif op.kind is OpKind.ROUTER:
        tokens = _round(d["tokens"], share)
        once = {Phase.FORWARD: ((tokens, min(d["top_k"], d["experts"])),) * 2,
                Phase.BACKWARD_INPUT: (tokens, d["hidden"]),
                Phase.BACKWARD_WEIGHT: (d["hidden"], d["experts"])}[phase]
    elif op.kind is OpKind.PERMUTE:
        once = ((max(_round(d["tokens"], share), 1), d["hidden"]) if op.role is Role.UNPERMUTE
                else (_round(d["rows"], share), d["hidden"]))
    elif op.kind is OpKind.EMBEDDING:
        rows = d["vocab"] if phase is Phase.BACKWARD_WEIGHT else _round(d["tokens"], share)
        once = (rows, d["hidden"])
        if d.get("accumulate"):  # and the sum of a tied table's other gradients
            once = (once, (_round(d["accumulate"], share),))
    elif op.kind is OpKind.COPY:
        once = (_round(d["numel"], share),)
    elif op.kind is OpKind.LOSS:  # forward: the scalar loss; dX: the logits' gradient
        once = ((_round(d["tokens"], share), d["vocab"]),) if phase is Phase.BACKWARD_INPUT else ()
    else:
        assert op.kind is OpKind.OPTIMIZER
        once = (_round(d["params"], share),)
    return (once, once) if twice else once


def shapes(output):
    """The shape of a kernel's output: a tensor's, or a tuple of its parts' (top-k's values and indices)."""
    if isinstance(output, tuple):
        return tuple(shapes(part) for part in output)
    return tuple(output.shape)


def tensors(output):
    return [t for part in output for t in tensors(part)] if isinstance(output, tuple) else [output]


def by_rank_and_task(timeline):
    return {(s.rank, s.task): s for s in timeline.spans}


@pytest.mark.parametrize("label", LABELS)
def test_every_task_runs_once_per_rank_on_its_stream(measured, plans, label):
    plan, timeline = plans[label], measured[label].timeline
    counts = Counter((s.rank, s.task) for s in timeline.spans)
    assert counts == Counter({(rank, task.id): 1 for rank in (0, 1) for task in plan.tasks})
    assert all(s.stream is plan.tasks[s.task].stream for s in timeline.spans)
    assert timeline.source == "measured" and timeline.schedule == plan.schedule
    assert timeline.represents == {0: (0,), 1: (1,)}
    assert timeline.task_deps == tuple(task.deps for task in plan.tasks)


@pytest.mark.parametrize("label", LABELS)
def test_streams_follow_the_plan_order_without_overlap(measured, plans, label):
    plan, timeline = plans[label], measured[label].timeline
    lanes = defaultdict(list)
    for span in timeline.spans:
        lanes[span.rank, span.stream].append(span)
    assert set(lanes) == {(rank, kind) for rank in (0, 1) for kind in plan.streams}
    for (_, kind), spans in lanes.items():
        spans.sort(key=lambda s: (s.start, s.end))
        assert [s.task for s in spans] == list(plan.streams[kind])
        assert all(s.start <= s.end for s in spans)
        assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("label", LABELS)
def test_every_dependency_ends_before_its_dependant_starts(measured, plans, label):
    spans = by_rank_and_task(measured[label].timeline)
    checked = 0
    for task in plans[label].tasks:
        for dep in task.deps:
            for rank in (0, 1):
                assert spans[rank, dep].end <= spans[rank, task.id].start, (rank, dep, task.id)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize("label", LABELS)
def test_all_to_alls_of_both_ranks_meet_in_time(measured, plans, label):
    timeline = measured[label].timeline
    assert timeline.meta["clock"] == "shared monotonic"  # one host: both ranks' spans on one clock
    spans = by_rank_and_task(timeline)
    a2a = [task.id for task in plans[label].tasks if plans[label].op_of(task).kind is OpKind.ALL_TO_ALL]
    assert len(a2a) >= 4
    for tid in a2a:
        pair = (spans[0, tid], spans[1, tid])
        assert max(s.start for s in pair) < min(s.end for s in pair), tid


@pytest.mark.parametrize("label", LABELS)
def test_flops_and_bytes_are_the_engines(measured, plans, scn, label):
    plan = plans[label]
    predicted = by_rank_and_task(simulate_plan(plan, scn.cost, symmetric=False))
    for key, span in by_rank_and_task(measured[label].timeline).items():
        assert span.flops == pytest.approx(predicted[key].flops)
        assert span.bytes == pytest.approx(predicted[key].bytes)


def test_flops_and_bytes_match_closed_forms(measured):
    sequential = {(s.rank, s.name): s for s in measured["sequential"].timeline.spans}
    tutel = [s for s in measured["tutel:degree=2"].timeline.spans if s.name == "L0.dispatch"]
    for rank in (0, 1):
        assert sequential[rank, "L0.dispatch"].bytes == DISPATCH_SENT_BYTES
        assert sequential[rank, "L0.qkv"].flops == 2 * TOKENS * (3 * HIDDEN) * HIDDEN
    assert sorted(s.bytes for s in tutel) == [DISPATCH_SENT_BYTES / 2] * 4


@pytest.mark.parametrize("label", LABELS)
def test_iteration_times_are_positive_and_the_timeline_is_the_median(measured, label):
    result = measured[label]
    times = result.iteration_times_s
    assert len(times) == ITERATIONS and all(t > 0 for t in times)
    assert result.median_s == sorted(times)[1]
    assert result.timeline.makespan == pytest.approx(result.median_s)
    assert result.environment["backend"] == "gloo" and result.environment["world_size"] == 2


@pytest.mark.parametrize("label", LABELS)
def test_every_iteration_is_broken_into_its_parts(measured, plans, label):
    """Per measured iteration, mean over ranks: the compute of each role and phase of the plan, the waits for
    collectives of other streams (and the hand-over after them), and the rest of the iteration; together
    they are the iteration."""
    from moesim.validation.breakdown import HANDOVER, IDLE, WAITING, part_of

    result, plan = measured[label], plans[label]
    compute = {part_of(plan.op_of(task)) for task in plan.tasks if task.stream is StreamKind.COMPUTE}
    awaited = {WAITING + part_of(plan.op_of(task)) for task in plan.tasks if task.stream is not StreamKind.COMPUTE}
    assert compute | {IDLE, HANDOVER} <= set(result.parts_s) <= compute | {IDLE, HANDOVER} | awaited
    assert set(result.parts_s) & awaited  # the compute stream waits for a collective at least once
    for index, total in enumerate(result.iteration_times_s):
        parts = [values[index] for values in result.parts_s.values()]
        assert all(value >= 0 for value in parts) and sum(parts) == pytest.approx(total, rel=1e-9)
        assert 0 < result.parts_s[IDLE][index] < total


@pytest.mark.parametrize("label", LABELS)
def test_every_collective_call_of_every_iteration_is_kept(measured, plans, label):
    """Per collective part, one call per member rank per task per measured iteration, none negative; the
    median iteration's calls are among them, timed from the rendezvous as its timeline times them."""
    from moesim.validation.breakdown import part_of

    result, plan = measured[label], plans[label]
    members = Counter(part_of(plan.op_of(task)) for task in plan.tasks if plan.op_of(task).kind.is_collective
                      for group in plan.op_of(task).comm.groups for _ in group)
    assert {part: len(calls) for part, calls in result.collective_calls_s.items()} == {
        part: count * ITERATIONS for part, count in members.items()}
    kept = sorted(seconds for calls in result.collective_calls_s.values() for seconds in calls)
    assert kept[0] >= 0
    for span in result.timeline.spans:
        if span.kind.is_collective:
            assert min(abs(span.duration - seconds) for seconds in kept) < 1e-12


# --- without a job ------------------------------------------------------------------------------

def a2a_op(traffic, groups=((0, 1, 2),), payload=0.0):
    comm = CommSpec(groups=groups, bytes=payload, traffic=traffic)
    return Op(id=0, name="L0.dispatch", role=Role.DISPATCH, kind=OpKind.ALL_TO_ALL, phase=Phase.FORWARD, layer=0,
              comm=comm)


def test_split_sizes_of_an_uneven_traffic_matrix():
    # bytes a -> b among 3 ranks, 4-byte elements; 2 bytes round up to 1 element, 1 byte down to 0
    traffic = np.array([[[40.0, 8.0, 0.0], [12.0, 0.0, 1.0], [2.0, 6.0, 100.0]]])
    op = a2a_op(traffic)
    task = Task(id=0, op=0, stream=StreamKind.COMM)
    assert a2a_splits(op, task, 0, 0, 4) == ([10, 2, 0], [10, 3, 1])
    assert a2a_splits(op, task, 0, 1, 4) == ([3, 0, 0], [2, 0, 2])   # 6 bytes = 1.5 elements -> 2
    assert a2a_splits(op, task, 0, 2, 4) == ([1, 2, 25], [0, 0, 25])
    splits = [a2a_splits(op, task, 0, member, 4) for member in range(3)]
    for a in range(3):
        for b in range(3):
            assert splits[a][0][b] == splits[b][1][a]  # what a sends to b is what b expects from a


def test_split_sizes_follow_the_task_traffic_or_the_fraction():
    op = a2a_op(np.array([[[0.0, 80.0], [40.0, 0.0]]]), groups=((0, 1),))
    half = Task(id=0, op=0, stream=StreamKind.COMM, parts=2, fraction=0.5)
    assert a2a_splits(op, half, 0, 0, 4) == ([0, 10], [0, 5])
    own = Task(id=0, op=0, stream=StreamKind.COMM, parts=2, fraction=0.5, traffic=np.array([[[4.0, 0.0],
                                                                                               [16.0, 8.0]]]))
    assert a2a_splits(op, own, 0, 1, 4) == ([4, 2], [0, 2])
    even = a2a_op(None, groups=((0, 1),), payload=64.0)
    assert a2a_splits(even, Task(id=0, op=0, stream=StreamKind.COMM), 0, 0, 4) == ([8, 8], [8, 8])


def test_every_compute_kernel_of_the_graph_runs_whole_and_empty(scn):
    import torch

    pool = TensorPool.for_training(scn.workload.training.dtype, torch.device("cpu"))
    compute = [op for op in scn.graph.ops if not op.kind.is_collective]
    assert {(op.kind, op.phase) for op in compute} <= set(KERNELS)
    kinds_run = Counter()
    for op in compute:
        for fraction in (1.0, 0.0):
            output = compute_kernel(op, Task(id=0, op=op.id, stream=StreamKind.COMPUTE, fraction=fraction), 0, pool)()
            assert shapes(output) == expected_shapes(op, fraction), op.name
            if fraction == 1.0 and op.kind is not OpKind.LOSS:  # the loss of no token is NaN, as in torch
                assert all(torch.isfinite(t).all() for t in tensors(output)), op.name
        kinds_run[op.kind] += 1
    assert set(kinds_run) == {op.kind for op in compute} and sum(kinds_run.values()) == len(compute)


@pytest.mark.parametrize("model", ["gpt2-s-moe", "mixtral-8x7b", "deepseek-v3", "switch-base-128"])
def test_every_compute_op_of_the_presets_has_a_kernel_of_its_shapes(model):
    import torch

    graph = scenario(model, "dgx-h100", 2).graph
    pool = TensorPool.for_training(graph.dtype, torch.device("meta"))  # shapes only
    matmuls = 0
    for op in graph.ops:
        if op.kind.is_collective:
            continue
        output = compute_kernel(op, Task(id=0, op=op.id, stream=StreamKind.COMPUTE), 0, pool)()
        assert shapes(output) == expected_shapes(op, 1.0), op.name
        if op.kind is OpKind.MATMUL:  # the GEMM run is the one the simulator charges: 2 x batch x m x n x k
            d = op.dims
            assert 2 * d.get("batch", 1) * d["m"] * d["n"] * d["k"] == pytest.approx(op.flops, rel=1e-9), op.name
            matmuls += 1
    assert matmuls > 0


def test_kernel_shapes_follow_the_parts_share(scn):
    import torch

    pool = TensorPool.for_training(scn.workload.training.dtype, torch.device("cpu"))
    qkv, attention = scn.graph.by_name("L0.qkv"), scn.graph.by_name("L0.attention")
    half = Task(id=0, op=qkv.id, stream=StreamKind.COMPUTE, parts=2, fraction=0.5)
    assert tuple(compute_kernel(qkv, half, 0, pool)().shape) == (TOKENS // 2, 3 * HIDDEN)
    heads, seq = 4, 128
    out = compute_kernel(attention, Task(id=0, op=attention.id, stream=StreamKind.COMPUTE, fraction=0.5), 0, pool)()
    assert tuple(out.shape) == (1, heads, seq, HIDDEN // heads)
    # the last of 4 causal sequence parts does 7/16 of the whole: 7/16 of the query rows against every key
    span = Task(id=0, op=attention.id, stream=StreamKind.COMPUTE, part=3, parts=4, fraction=7 / 16,
                axis=Axis.SEQUENCE)
    out = compute_kernel(attention, span, 0, pool)()
    assert tuple(out.shape) == (2, heads, round(seq * 7 / 16), HIDDEN // heads)


def test_topological_order_keeps_streams_and_deps_and_rejects_cycles(plans, scn):
    plan = plans["lancet"]
    order = topological_order(plan)
    position = {tid: index for index, tid in enumerate(order)}
    assert sorted(order) == list(range(len(plan.tasks)))
    assert all(position[dep] < position[task.id] for task in plan.tasks for dep in task.deps)
    for stream in plan.streams.values():
        assert [position[tid] for tid in stream] == sorted(position[tid] for tid in stream)
    ops = (Op(id=0, name="a", role=None, kind=OpKind.ELEMENTWISE, phase=Phase.FORWARD, layer=0),
           Op(id=1, name="b", role=None, kind=OpKind.ELEMENTWISE, phase=Phase.FORWARD, layer=0))
    graph = OpGraph(ops=ops, num_ranks=1, num_layers=1, moe_layers=())
    cyclic = ExecutionPlan(graph=graph, schedule="cyclic",
                           tasks=(Task(id=0, op=0, stream=StreamKind.COMPUTE, deps=(1,)),
                                  Task(id=1, op=1, stream=StreamKind.COMM, deps=(0,))),
                           streams={StreamKind.COMPUTE: (0,), StreamKind.COMM: (1,)})
    with pytest.raises(DeadlockError, match="cycle"):
        topological_order(cyclic)


def test_a_plan_for_another_world_size_stops_the_rank_with_one_line(tmp_path):
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    command = [sys.executable, "-m", "moesim.validation.run_plan", "--model", "tiny-moe-a", "--hardware",
               "cpu-loopback", "--schedule", "sequential", "--set", "model.num_layers=2",
               "--out", str(tmp_path / "never.json")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: nodes: the plan is for 2 ranks but the job has 1; "
                                                "launch one rank per simulated GPU"]
    assert not (tmp_path / "never.json").exists()
    with pytest.raises(MoesimError, match="2-rank run failed"):
        torchrun("moesim.validation.run_plan", [*command[3:-2], "--nodes", "2", "--out", command[-1]], 2,
                 timeout_s=120)


def test_bad_schedules_and_files_raise_one_line_errors(scn, tmp_path):
    with pytest.raises(MoesimError, match="nope"):
        plan_for(scn, "nope")
    with pytest.raises(MoesimError, match="degree"):
        plan_for(scn, "tutel:degree=3")
    (tmp_path / "other.json").write_text('{"traceEvents": []}')
    with pytest.raises(MoesimError, match="not a measured-run file"):
        load_measured(tmp_path / "other.json")


def test_schedules_run_interleaved_in_blocks_and_keep_every_iteration(monkeypatch, plans):
    """7 iterations in 3 blocks: 3, 2 and 2 per plan, the plans in turn within each block; the median is over
    all 7, and the timeline is the one of the block whose own median is nearest it."""
    from moesim.validation import executor, run_plan

    calls, clock = [], iter(range(1, 100))

    def fake(plan, ctx, *, warmup, iterations):
        calls.append((plan.schedule, iterations, warmup))
        times = [float(next(clock)) for _ in range(iterations)]
        timeline = Timeline(spans=(), num_ranks=2, represents={0: (0,)}, task_deps=(), schedule=plan.schedule,
                            source="measured", meta={"block": len(calls)})
        return executor.MeasuredRun(timeline=timeline, iteration_times_s=times, environment={"backend": "fake"},
                                    collective_calls_s={"dispatch:forward": [t / 10 for t in times]})

    monkeypatch.setattr(executor, "execute_plan", fake)
    chosen = [(label, plans[label]) for label in ("sequential", "lancet")]
    results = run_plan._measure_interleaved(chosen, ctx=None, warmup=1, iterations=7, blocks=3)
    assert calls == [("sequential", 3, 1), ("lancet", 3, 1), ("sequential", 2, 1), ("lancet", 2, 1),
                     ("sequential", 2, 1), ("lancet", 2, 1)]
    sequential = results["sequential"]
    assert sequential["iteration_times_s"] == [1.0, 2.0, 3.0, 7.0, 8.0, 11.0, 12.0]
    assert sequential["median_s"] == 7.0
    assert sequential["timeline"]["meta"] == {"block": 3}  # block medians 2, 7, 11: the second is nearest
    assert sequential["collective_calls_s"] == {"dispatch:forward": [t / 10 for t in sequential["iteration_times_s"]]}
