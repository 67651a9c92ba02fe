"""The reference model: real 2-rank gloo training runs (DDP, all-to-alls, a traced step mapped onto the op
graph) and, in one process, its capacity rule and the configurations it refuses."""

import json
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from moesim.errors import MoesimError  # noqa: E402
from moesim.overrides import parse_assignments  # noqa: E402
from moesim.validation.launch import torchrun  # noqa: E402
from moesim.validation.reference.attribution import _classify  # noqa: E402
from moesim.validation.reference.model import (  # noqa: E402
    MoELayer,
    OpInfo,
    RankGroups,
    ReferenceModel,
    check_supported,
)
from moesim.workload.builder import build_graph  # noqa: E402
from moesim.workload.ops import OpKind, Phase  # noqa: E402
from moesim.workload.presets import load_workload  # noqa: E402

WORKER = "moesim.validation.reference.train"
SMALL = ("model.num_layers=2", "training.batch_per_gpu=2", "training.seq_len=32")
# tiny-moe-a at SMALL: T = 2 x 32 tokens per rank, top-1, 2 x 2 experts, capacity ceil(1.0 x 64 x 1 / 4) = 16
TOKENS, CAPACITY = 64, 16
# SwiGLU everywhere, GQA (4 query heads on 2 kv heads), one shared expert, top-2; block 0 dense, block 1 MoE
VARIANT = """\
model:
  name: tiny-swiglu-gqa
  num_layers: 2
  hidden: 128
  num_heads: 4
  num_kv_heads: 2
  ffn_hidden: 256
  expert_ffn_hidden: 128
  num_experts: 4
  num_shared_experts: 1
  top_k: 2
  first_k_dense_layers: 1
  activation: swiglu
  expert_activation: swiglu
  vocab_size: 512
training:
  seq_len: 32
  batch_per_gpu: 2
  dtype: fp32
  capacity_factor: 1.25
  optimizer: adam
"""
COMPUTE_PHASES = (Phase.FORWARD, Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT)


def _train(model, settings, out, *, steps, warmup=0, trace=True, nproc=2):
    args = ["--model", str(model), "--steps", str(steps), "--warmup", str(warmup), "--out", str(out)]
    args += ["--trace"] if trace else []
    for setting in settings:
        args += ["--set", setting]
    torchrun(WORKER, args, nproc, timeout_s=60)
    return json.loads(out.read_text())


def _graph_names(model, settings):
    workload = load_workload(model, num_gpus=2, gpu="cpu-rank", overrides=parse_assignments(list(settings)))
    return {op.name for op in build_graph(workload).ops if op.phase in COMPUTE_PHASES or op.kind is OpKind.COPY}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _train("tiny-moe-a", SMALL, tmp_path_factory.mktemp("reference") / "small.json", steps=3)


def test_the_loss_falls_and_every_step_is_timed(small):
    losses = small["losses"]
    assert len(losses) == len(small["step_times_s"]) == 3
    assert losses[0] > losses[1] > losses[2]
    assert all(t > 0 for t in small["step_times_s"])
    assert small["median_step_s"] == sorted(small["step_times_s"])[1]
    assert small["format"] == "moesim-reference/1" and small["world_size"] == 2


def test_ddp_keeps_dense_parameters_equal_and_experts_stay_apart(small):
    first, second = small["parameter_digests"]
    assert first["dense"] == second["dense"]
    assert first["experts"] != second["experts"]


def test_the_trace_covers_every_compute_op_of_the_graph(small):
    names = _graph_names("tiny-moe-a", SMALL)
    for rank in small["trace"]["ranks"]:
        missing = sorted(names - set(rank["op_seconds"]))
        assert missing == []
        assert {"optimizer", "grad_sync", "zero_grad"} <= set(rank["op_seconds"])
        assert set(rank["op_seconds"]) - names <= {"optimizer", "grad_sync", "zero_grad"}


def test_the_traced_step_is_its_ops_plus_what_no_op_covers(small):
    for rank in small["trace"]["ranks"]:
        total = sum(rank["op_seconds"].values()) + sum(rank["unattributed"].values())
        assert total == pytest.approx(rank["step_s"], rel=0.03)
        assert len(rank["unattributed"]) <= 20
        assert sum(rank["unattributed"].values()) < 0.25 * rank["step_s"]


def test_each_rank_routes_every_token_once_and_keeps_at_most_the_capacity(small):
    (layer,) = small["trace"]["routing"]
    assert layer["layer"] == 0 and layer["capacity"] == CAPACITY
    for counts, kept in zip(layer["counts"], layer["kept"], strict=True):
        assert len(counts) == 4 and sum(counts) == TOKENS * 1
        assert kept == [min(c, CAPACITY) for c in counts]


def test_a_dropless_step_keeps_every_assignment(tmp_path):
    settings = (*SMALL, "training.capacity_factor=null")
    result = _train("tiny-moe-a", settings, tmp_path / "dropless.json", steps=1)
    (layer,) = result["trace"]["routing"]
    assert layer["capacity"] is None and layer["kept"] == layer["counts"]
    assert all(sum(counts) == TOKENS for counts in layer["counts"])
    names = _graph_names("tiny-moe-a", settings)
    assert all(sorted(names - set(rank["op_seconds"])) == [] for rank in result["trace"]["ranks"])


def test_swiglu_gqa_and_a_shared_expert_train_and_trace(tmp_path):
    model = tmp_path / "variant.yaml"
    model.write_text(VARIANT)
    result = _train(model, (), tmp_path / "variant.json", steps=1)
    names = _graph_names(model, ())
    assert {"L1.shared_fc1", "L1.shared_act.dx", "L1.shared_fc2.dw", "L0.fc1.dw"} <= names
    for rank in result["trace"]["ranks"]:
        assert sorted(names - set(rank["op_seconds"])) == []
    (layer,) = result["trace"]["routing"]
    assert layer["layer"] == 1 and all(sum(counts) == 2 * 32 * 2 for counts in layer["counts"])


def test_expert_replicas_stay_equal_across_their_expert_data_parallel_group(tmp_path):
    # 4 ranks, EP groups {0, 1} and {2, 3}: ranks 0 and 2 hold experts 0-3, ranks 1 and 3 experts 4-7
    result = _train("tiny-moe-a", (*SMALL, "training.ep_size=2"), tmp_path / "replicas.json", steps=1, trace=False,
                    nproc=4)
    experts = [rank["experts"] for rank in result["parameter_digests"]]
    assert experts[0] == experts[2] and experts[1] == experts[3] and experts[0] != experts[1]
    assert len({rank["dense"] for rank in result["parameter_digests"]}) == 1


# --- in one process: a single rank, whose all-to-alls are copies -----------------------------------------

def _alone(settings):
    workload = load_workload("tiny-moe-a", num_gpus=1, gpu="cpu-rank", overrides=parse_assignments(list(settings)))
    return workload, RankGroups(ep=None, ep_size=1, ep_position=0, expert_dp=None)


def test_capacity_drops_the_latest_tokens_of_a_full_expert():
    # 1 rank, 2 experts, T = 1 x 32 tokens, capacity ceil(1.0 x 32 x 1 / 2) = 16; every token picks expert 0
    workload, groups = _alone((*SMALL, "training.batch_per_gpu=1"))
    layer = MoELayer(0, workload, groups, torch.Generator().manual_seed(0), 0, {})
    with torch.no_grad():
        layer.router.copy_(torch.tensor([1.0, -1.0]).expand(256, 2))
        y = layer(torch.rand(32, 256) + 0.1)
    assert layer.last_routing is not None
    assert [t.tolist() for t in layer.last_routing] == [[32, 0], [16, 0]]
    assert y[:16].abs().sum(1).gt(0).all() and y[16:].abs().sum() == 0


def test_padded_buffers_that_drop_nothing_match_dropless():
    losses = []
    for factor in ("4.0", "null"):  # capacity 4 x 64 / 2 = 128 rows per expert: more than every token
        workload, groups = _alone((*SMALL, f"training.capacity_factor={factor}"))
        model = ReferenceModel(workload, groups, seed=0)
        tokens = torch.randint(workload.model.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
        losses.append(model(tokens[:, :-1], tokens[:, 1:]))
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-6)


@pytest.mark.parametrize(("model", "settings", "message"), [
    ("deepseek-v2-lite", (), "decoder-only models with standard attention; got attention mla"),
    ("switch-base-128", (), "decoder-only models with standard attention; got an encoder-decoder"),
    ("tiny-moe-a", ("training.dtype=bf16",), "training.dtype=bf16: the reference model runs fp32 on cpu"),
])
def test_what_the_reference_model_does_not_build_is_refused_in_one_line(model, settings, message):
    workload = load_workload(model, num_gpus=1, gpu="cpu-rank", overrides=parse_assignments(list(settings)))
    with pytest.raises(MoesimError, match=message):
        check_supported(workload, torch.device("cpu"))


def _mm(*shapes):
    return SimpleNamespace(input_shapes=[list(shape) for shape in shapes])


def test_a_projections_backward_matmuls_split_into_dx_and_dw_by_shape():
    # x [64, 256] @ w [256, 1024]: dX = g [64, 1024] @ w^T [1024, 256]; dW = x^T [256, 64] @ g [64, 1024]
    fc1 = OpInfo(((256, 1024),), matmul=True)
    assert _classify([_mm((256, 64), (64, 1024)), _mm((64, 1024), (1024, 256))], fc1) == ["dw", "dx"]
    assert _classify([_mm((64, 1024), (1024, 256))], fc1) == ["dx"]
    # local experts, batched: w [2, 256, 1024], 32 rows each
    experts = OpInfo(((2, 256, 1024),), matmul=True)
    assert _classify([_mm((2, 32, 1024), (2, 1024, 256)), _mm((2, 256, 32), (2, 32, 1024))], experts) == ["dx", "dw"]
    # 256 rows through a square 256 x 256 weight: shapes cannot tell, so autograd's order (dW first) does
    square = OpInfo(((256, 256),), matmul=True)
    assert _classify([_mm((256, 256), (256, 256)), _mm((256, 256), (256, 256))], square) == ["dw", "dx"]
