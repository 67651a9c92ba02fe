"""Kineto traces, read without torch: a hand-written 2-rank GPU (NCCL) trace with bytes, clock offsets and
kernel times checkable by hand, a gloo all-to-all, malformed files refused in one line; and real 2-rank
gloo runs of the reference model whose exported traces give back the worker's own attribution."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import MoesimError
from moesim.overrides import parse_assignments
from moesim.validation.reference.attribution import attribute
from moesim.validation.reference.from_kineto import recorded_from_kineto
from moesim.validation.reference.opinfo import OpInfo, ops_of
from moesim.workload.kineto import CollectiveKind, align, compute_seconds, read_kineto, traffic_matrix
from moesim.workload.presets import load_workload

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kineto"
GPU = [FIXTURES / f"gpu_rank{rank}.json" for rank in (0, 1)]
US = 1e-6
SMALL = ("model.num_layers=2", "training.batch_per_gpu=2", "training.seq_len=32")
TOKENS = 2 * 32  # tiny-moe-a at SMALL: top-1, so one assignment per token


@pytest.fixture(scope="module")
def gpu():
    return [read_kineto(path) for path in GPU]


# --- the hand-written GPU trace (tests/fixtures/kineto) ------------------------------------------------
# rank 0 sends 16 rows to itself and 48 to rank 1; rank 1 sends 40 to rank 0 and keeps 24; rows of 32 fp32
# (128 bytes). Rank 1's clock runs 250 µs ahead of rank 0's: its collectives end at 1850 and 2230 µs where
# rank 0's end at 1600 and 1980 (the end of the last kernel each launched).

def test_a_matched_all_to_all_gives_its_byte_matrix(gpu):
    assert traffic_matrix(gpu, ("0", 3)).tolist() == [[16 * 128, 48 * 128], [40 * 128, 24 * 128]]


def test_each_collective_has_its_kind_group_sequence_and_bytes(gpu):
    dispatch, reduce = gpu[0].collectives
    assert (dispatch.kind, dispatch.key, dispatch.group) == (CollectiveKind.ALL_TO_ALL, ("0", 3), (0, 1))
    assert dispatch.sent_bytes == (16 * 128, 48 * 128) and dispatch.received_bytes == (16 * 128, 40 * 128)
    assert (dispatch.start_us, dispatch.end_us) == (1130.0, 1600.0) and dispatch.labels[0] == "L0.dispatch"
    assert (reduce.kind, reduce.key, reduce.payload_bytes, reduce.sent_rows) == (
        CollectiveKind.ALL_REDUCE, ("0", 4), 4096 * 4, ())


def test_clocks_align_on_the_ends_of_matched_collectives(gpu):
    assert align(gpu) == {0: 0.0, 1: -250.0}


def test_kernel_time_goes_to_the_label_around_the_op_that_launched_it(gpu):
    # qkv: one 200 µs kernel; dispatch: the 340 µs NCCL kernel; expert_fc1: 30 + 20 µs on one stream;
    # the backward's two kernels (60 + 40 µs) ran from the autograd thread, under no label of its own
    expected = {"L0.qkv": 200, "L0.dispatch": 340, "L0.expert_fc1": 50, "grad_sync": 40, "(no label)": 100}
    for rank in gpu:
        seconds = compute_seconds(rank)
        assert seconds == pytest.approx({name: us * US for name, us in expected.items()})


def test_the_attribution_rules_read_kineto_events_and_split_a_backward_by_shape(gpu):
    # MmBackward0 (sequence number 5, forward thread 1 = the main thread) belongs to L0.qkv: its first mm
    # reads w^T [96, 32] (dX, 60 µs of kernel), its second writes a [32, 96] gradient (dW, 40 µs)
    ops = {"L0.qkv": OpInfo(((32, 96),), matmul=True), "L0.dispatch": OpInfo(),
           "L0.expert_fc1": OpInfo(((2, 32, 64),), matmul=True)}
    names = {"L0.qkv", "L0.qkv.dx", "L0.qkv.dw", "L0.dispatch", "L0.expert_fc1", "L0.expert_fc1.dx"}
    step = attribute(gpu[1].roots, ops, names, device=True)
    assert step.step_s == pytest.approx(1000 * US) and step.unattributed == {}
    expected = {"L0.qkv": 200, "L0.qkv.dx": 60, "L0.qkv.dw": 40, "L0.dispatch": 340, "L0.expert_fc1": 50,
                "grad_sync": 40}
    assert step.op_seconds == pytest.approx({name: us * US for name, us in expected.items()})


def test_a_gzipped_trace_reads_the_same(gpu, tmp_path):
    path = tmp_path / "rank0.json.gz"
    path.write_bytes(gzip.compress(GPU[0].read_bytes()))
    assert read_kineto(path).collectives == gpu[0].collectives


def test_traffic_is_only_for_an_all_to_all_every_member_traced(gpu):
    with pytest.raises(MoesimError, match="is an all_reduce, not an all_to_all"):
        traffic_matrix(gpu, ("0", 4))
    with pytest.raises(MoesimError, match="the trace of rank 1 is missing"):
        traffic_matrix(gpu[:1], ("0", 3))


def test_gloo_all_to_all_reads_its_splits_and_ends_on_the_worker_thread(tmp_path):
    # c10d::alltoall_base_(output [56, 32], input [64, 32], group, out splits, in splits): the op only
    # enqueues; gloo's worker thread ends the exchange at 300 µs
    op = {"ph": "X", "cat": "cpu_op", "name": "c10d::alltoall_base_", "pid": 1, "tid": 1, "ts": 100.0, "dur": 5.0,
          "args": {"Concrete Inputs": ["", "", "", "[16, 40]", "[16, 48]", "False", "-1"],
                   "Input Dims": [[56, 32], [64, 32], [], [], [], [], []],
                   "Input type": ["float", "float", "", "ScalarList", "ScalarList", "Scalar", "Scalar"]}}
    worker = {"ph": "X", "cat": "user_annotation", "name": "gloo:all_to_all", "pid": 1, "tid": 2, "ts": 110.0,
              "dur": 190.0, "args": {"Input Dims": [[64, 32]], "Input type": ["float"]}}
    path = tmp_path / "rank0.json"
    path.write_text(json.dumps({"traceEvents": [op, worker], "distributedInfo": {
        "backend": "gloo", "rank": 0, "world_size": 2,
        "pg_config": [{"pg_name": "0", "pg_desc": "default_pg", "pg_size": 2, "ranks": [0, 1]}]}}))
    (collective,) = read_kineto(path).collectives
    assert (collective.kind, collective.key, collective.end_us) == (CollectiveKind.ALL_TO_ALL, ("0", 0), 300.0)
    assert collective.sent_bytes == (16 * 128, 48 * 128) and collective.received_bytes == (16 * 128, 40 * 128)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"events": []}', "not a Kineto trace: no 'traceEvents' list"),
    ('{"traceEvents": []}', "no 'distributedInfo' \\(rank, world_size\\)"),
    ('{"traceEvents": [], "distributedInfo": {"rank": 0}}', "distributedInfo.world_size: an integer expected"),
    ('{"traceEvents": [], "distributedInfo": {"rank": 2, "world_size": 2}}', "rank: 2 is not in 0..1"),
    ('{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 1, "pid": 1, "tid": 1}], '
     '"distributedInfo": {"rank": 0, "world_size": 1}}', "traceEvents\\[0\\] \\(cpu_op\\): no 'dur'"),
])
def test_a_file_that_is_not_a_kineto_trace_is_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MoesimError, match=message) as caught:
        read_kineto(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(MoesimError, match="no such file"):
        read_kineto(tmp_path / "missing.json")


def test_recorded_from_kineto_wants_one_trace_per_rank():
    workload = load_workload("tiny-moe-a", num_gpus=2, gpu="cpu-rank", overrides=parse_assignments(list(SMALL)))
    with pytest.raises(MoesimError, match="one per rank 0..1 expected; rank 1 is missing"):
        recorded_from_kineto(GPU[:1], workload, "cpu-rank")
    with pytest.raises(MoesimError, match="rank 0 is traced twice"):
        recorded_from_kineto([GPU[0], GPU[0]], workload, "cpu-rank")


def test_the_importer_never_imports_torch():
    code = ("import sys, moesim.workload.kineto, moesim.validation.reference.from_kineto; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- with torch: the reference model ---------------------------------------------------------------------

def test_op_infos_from_the_graph_are_the_reference_models_own(tmp_path):
    pytest.importorskip("torch")
    from moesim.validation.reference.model import RankGroups, ReferenceModel

    settings = [(*SMALL,), (*SMALL, "model.tie_embeddings=false", "model.learned_positions=0",
                            "model.num_shared_experts=1", "model.expert_activation=swiglu")]
    for chosen in settings:
        workload = load_workload("tiny-moe-a", num_gpus=1, gpu="cpu-rank", overrides=parse_assignments(list(chosen)))
        model = ReferenceModel(workload, RankGroups(ep=None, ep_size=1, ep_position=0, expert_dp=None), seed=0)
        assert ops_of(workload) == model.ops


def _traced(directory, settings):
    from moesim.validation.launch import torchrun

    out = directory / "reference.json"
    args = ["--model", "tiny-moe-a", "--steps", "1", "--warmup", "0", "--trace", "--kineto-dir",
            str(directory / "kineto"), "--out", str(out)]
    for setting in settings:
        args += ["--set", setting]
    torchrun("moesim.validation.reference.train", args, 2, timeout_s=120)
    workload = load_workload("tiny-moe-a", num_gpus=2, gpu="cpu-rank", overrides=parse_assignments(list(settings)))
    paths = sorted((directory / "kineto").glob("rank*.json"))
    return json.loads(out.read_text())["trace"], recorded_from_kineto(paths, workload, "cpu-rank")


def _agrees(in_process, imported):
    """The same op names, each op's seconds within 2 % (or 1 µs: timestamps are rounded to the ns), the sum
    within 2 %."""
    for theirs, mine in zip(in_process["ranks"], imported.ranks, strict=True):
        assert set(mine.op_seconds) == set(theirs["op_seconds"])
        for name, seconds in theirs["op_seconds"].items():
            assert mine.op_seconds[name] == pytest.approx(seconds, rel=0.02, abs=1e-6), name
        assert sum(mine.op_seconds.values()) == pytest.approx(sum(theirs["op_seconds"].values()), rel=0.02)
        assert mine.step_s == pytest.approx(theirs["step_s"], rel=0.02)


def test_a_dropless_runs_attribution_and_routing_come_back_from_its_exported_traces(tmp_path):
    """(The capacity case, through `moesim trace --kineto`: tests/validation/test_reference_trace.py.)"""
    pytest.importorskip("torch")
    in_process, imported = _traced(tmp_path, (*SMALL, "training.capacity_factor=null"))
    _agrees(in_process, imported)
    (layer,), (recorded,) = imported.routing, in_process["routing"]
    assert layer.capacity is None and layer.kept == layer.counts
    assert [sum(row) for row in layer.counts] == [TOKENS, TOKENS]
    # two experts per rank: the rows to each peer are exact, their split between its experts is not traced
    per_peer = np.array(recorded["counts"]).reshape(2, 2, 2).sum(axis=2)
    assert np.array(layer.counts).reshape(2, 2, 2).sum(axis=2).tolist() == per_peer.tolist()
