"""Configs and the preset loader: validation messages, derived sizes, process groups, batch tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moesim.errors import MoesimError
from moesim.workload import list_model_presets, load_workload
from moesim.workload.config import BatchVariant, DType

PRESETS = ["deepseek-v2-lite", "deepseek-v3", "gpt-moe-1.3b-128e", "gpt2-l-moe", "gpt2-s-moe", "mixtral-8x7b",
           "qwen3-235b-a22b", "switch-base-128", "tiny-moe-a", "tiny-moe-b"]


def test_list_model_presets() -> None:
    assert list_model_presets() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads(name: str) -> None:
    workload = load_workload(name, num_gpus=8, gpu="H100-SXM5-80GB")
    assert workload.preset == name
    assert workload.num_experts % workload.ep_size == 0 and 8 % workload.ep_size == 0


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_number_carries_a_source_comment(name: str) -> None:
    path = Path(__file__).resolve().parents[2] / "workloads" / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("#") and "Source" in text.split("\n\n")[0] + text.split("\n\n")[1]
    for section in ("model:", "training:"):
        assert section in text
    assert yaml.safe_load(text)["model"]["name"]


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(MoesimError, match="unknown preset; allowed: deepseek-v2-lite, deepseek-v3") as err:
        load_workload("gpt5-moe", num_gpus=8, gpu="B200")
    assert "\n" not in str(err.value)


def test_load_from_path(tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[2] / "workloads" / "mixtral-8x7b.yaml"
    copy = tmp_path / "my-model.yaml"
    copy.write_text(source.read_text())
    workload = load_workload(copy, num_gpus=8, gpu="B200")
    assert workload.preset == "my-model" and workload.model.name == "Mixtral-8x7B"
    with pytest.raises(MoesimError, match="no such file"):
        load_workload(tmp_path / "missing.yaml", num_gpus=8, gpu="B200")


def test_bad_yaml_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model: {name: x, num_layers: 2, hidden: 64, num_heads: 4, expert_ffn_hidden: 64,"
                    " num_experts: 4, top_k: 1, vocab_size: 10, colour: red}\ntraining: {seq_len: 8}\n")
    with pytest.raises(MoesimError, match=r"^broken: model\.colour: "):
        load_workload(path, num_gpus=4, gpu="B200")


def test_derived_sizes_and_groups() -> None:
    workload = load_workload("mixtral-8x7b", num_gpus=16, gpu="H100-SXM5-80GB",
                             overrides={"training.batch_per_gpu": 2})
    assert workload.tokens_per_gpu == 2 * 4096
    assert workload.ep_size == 8 and workload.experts_per_rank == 1 and workload.expert_dp_size == 2
    assert workload.dp_size == 16
    assert workload.capacity is None
    assert workload.ep_groups == (tuple(range(8)), tuple(range(8, 16)))
    assert workload.expert_dp_groups == tuple((p, p + 8) for p in range(8))
    assert workload.dense_dp_group == tuple(range(16))
    assert workload.expert_position(5) == 5
    with_cap = load_workload("mixtral-8x7b", num_gpus=16, gpu="B200",
                             overrides={"training.capacity_factor": 1.25, "training.ep_size": 4})
    assert with_cap.capacity == 1280  # ceil(1.25 * 4096 * 2 / 8)
    assert with_cap.experts_per_rank == 2 and with_cap.expert_position(5) == 2
    assert with_cap.expert_dp_groups[0] == (0, 4, 8, 12)


def test_default_ep_is_gcd_of_experts_and_gpus() -> None:
    assert load_workload("qwen3-235b-a22b", num_gpus=48, gpu="B200").ep_size == 16  # gcd(128, 48)
    lancet = load_workload("gpt2-s-moe", num_gpus=16, gpu="B200")
    assert lancet.num_experts == 32 and lancet.ep_size == 16 and lancet.experts_per_rank == 2


@pytest.mark.parametrize(("overrides", "gpus", "field", "allowed"), [
    ({"training.ep_size": 3}, 8, "training.ep_size", "allowed with 8 GPUs: 1, 2, 4, 8"),
    ({"training.ep_size": 8}, 12, "training.ep_size", "allowed: 1, 2, 4"),
    ({"model.top_k": 9}, 8, "model.top_k", "allowed: 1..8"),
    ({"training.batch_per_gpu": 0}, 8, "training.batch_per_gpu", "greater than 0"),
    ({"model.hidden": 4000, "model.num_heads": 48}, 8, "model.head_dim", "does not divide hidden"),
    ({"model.num_kv_heads": 5}, 8, "model.num_kv_heads", "allowed: 1, 2, 4, 8, 16, 32"),
    ({"training.dp_size": 4}, 8, "training.dp_size", "must equal num_gpus=8"),
    ({"model.experts_per_gpu": 2}, 8, "model.experts_per_gpu", "exactly one"),
    ({"model.moe_layer_offset": 3, "model.moe_layer_period": 2}, 8, "model.moe_layer_offset", "0..1"),
    ({"training.capacity_factor": -1}, 8, "training.capacity_factor", "greater than 0"),
    ({"training.routing.kind": "pareto"}, 8, "training.routing.kind", "uniform"),
])
def test_impossible_configs_name_the_field(overrides: dict, gpus: int, field: str, allowed: str) -> None:
    with pytest.raises(MoesimError) as err:
        load_workload("mixtral-8x7b", num_gpus=gpus, gpu="B200", overrides=overrides)
    message = str(err.value)
    assert message.startswith(field + ":") and allowed in message
    assert "\n" not in message


def test_unknown_override_key() -> None:
    with pytest.raises(MoesimError, match="unknown setting 'training.batch'"):
        load_workload("mixtral-8x7b", num_gpus=8, gpu="B200", overrides={"training.batch": 2})
    with pytest.raises(MoesimError, match="must start with one of model., training."):
        load_workload("mixtral-8x7b", num_gpus=8, gpu="B200", overrides={"schedule.degree": 2})


def test_mla_requires_its_sizes() -> None:
    with pytest.raises(MoesimError, match=r"^model\.mla: required when attention is mla"):
        load_workload("mixtral-8x7b", num_gpus=8, gpu="B200", overrides={"model.attention": "mla"})


def test_lancet_batch_follows_the_gpu_and_variant() -> None:
    def batch(name: str, gpu: str, **overrides: object) -> int:
        return load_workload(name, num_gpus=16, gpu=gpu, overrides=overrides).training.batch_per_gpu

    assert batch("gpt2-s-moe", "V100-SXM2-32GB") == 16
    assert batch("gpt2-l-moe", "V100-SXM2-32GB") == 8
    assert batch("gpt2-s-moe", "A100-SXM4-80GB") == 48
    assert batch("gpt2-l-moe", "A100-SXM4-80GB") == 24
    assert batch("gpt2-s-moe", "A100-SXM4-80GB", **{"training.batch_variant": "paper"}) == 24
    assert batch("gpt2-l-moe", "A100-SXM4-80GB", **{"training.batch_variant": "paper"}) == 48
    assert batch("gpt2-l-moe", "V100-SXM2-32GB", **{"training.batch_variant": "paper"}) == 8  # falls back
    assert batch("gpt2-s-moe", "TPU-v5") == 16                                               # default
    assert batch("gpt2-s-moe", "A100-SXM4-80GB", **{"training.batch_per_gpu": 4}) == 4        # explicit wins
    workload = load_workload("gpt2-l-moe", num_gpus=8, gpu="B200")
    assert set(workload.training.batch_per_gpu_by_gpu) == {BatchVariant.REPO, BatchVariant.PAPER}
    assert set(workload.training.batch_per_gpu_by_gpu[BatchVariant.REPO]) == {
        "V100-SXM2-32GB", "A100-SXM4-80GB", "A100-SXM4-40GB", "H100-SXM5-80GB", "H200-SXM-141GB", "B200",
        "MI300X"}


def test_lancet_model_facts() -> None:
    small = load_workload("gpt2-s-moe", num_gpus=8, gpu="V100-SXM2-32GB")
    large = load_workload("gpt2-l-moe", num_gpus=8, gpu="V100-SXM2-32GB")
    for workload, layers, hidden in ((small, 12, 768), (large, 24, 1024)):
        model, training = workload.model, workload.training
        assert (model.num_layers, model.hidden, model.num_heads) == (layers, hidden, 16)
        assert model.moe_layers == tuple(range(0, layers, 2))
        assert (model.top_k, model.experts_per_gpu, model.vocab_size) == (1, 2, 50257)
        assert (model.expert_ffn_hidden, model.expert_activation.value, model.activation.value) == (
            4 * hidden, "relu", "gelu")
        assert (training.seq_len, training.dtype, training.capacity_factor) == (512, DType.FP32, 1.0)
        assert training.optimizer.value == "sgd_momentum"


def test_big_models_are_dropless_bf16_batch_1_seq_4096() -> None:
    for name in ("mixtral-8x7b", "deepseek-v2-lite", "deepseek-v3", "qwen3-235b-a22b"):
        training = load_workload(name, num_gpus=8, gpu="B200").training
        assert (training.batch_per_gpu, training.seq_len, training.dtype, training.capacity_factor) == (
            1, 4096, DType.BF16, None)


def test_dtype_bytes() -> None:
    assert [d.bytes for d in DType] == [4, 4, 2, 2, 1]
    assert DType.FP8.grad_bytes == 2 and DType.FP32.grad_bytes == 4
