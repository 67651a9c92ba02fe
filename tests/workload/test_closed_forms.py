"""Every preset's FLOPs, parameters and all-to-all bytes against closed forms derived from its config.

The forms below are written from the model definition (see the cost conventions in
moesim/workload/blocks.py and builder.py), term by term, not read back from the builder:
- matmul rows x k by k x n: 2 rows n k forward, the same again for dX and for dW;
- attention core: 2 B S^2 H (d_qk + d_v) forward, twice that backward;
- layernorm 5 FLOP/element forward, dX twice that, dW 2 FLOP/element;
- residual add 1 FLOP/element, activation (GELU 8, ReLU 1, SwiGLU 5) per output element,
  unpermute 2 T top_k h, loss 4 FLOP/logit; their dX cost twice the forward;
- router 2 T h E forward, dX and dW each the same; embedding dW T h (scatter-add);
- optimizer 4 FLOP/param (SGD momentum) or 12 (Adam);
- autograd sums the vocabulary table's gradients from its other uses (tied lm_head, a decoder's
  embedding): 1 FLOP per element each; DDP scales every gradient it synchronises on the way into its
  bucket: 1 FLOP per dense parameter (more than one rank) and per expert parameter (expert-data-parallel
  group above one).
"""

from __future__ import annotations

import math

import pytest

from moesim.workload import build_graph, load_workload
from moesim.workload.config import Workload
from moesim.workload.facts import ParamCounts
from moesim.workload.ops import OpKind, Phase

GPU = "A100-SXM4-80GB"
ACT = {"gelu": 8, "relu": 1, "swiglu": 5}

CASES = [
    ("gpt2-s-moe", 8), ("gpt2-s-moe", 16), ("gpt2-s-moe", 64),
    ("gpt2-l-moe", 8), ("gpt2-l-moe", 16), ("gpt2-l-moe", 64),
    ("gpt-moe-1.3b-128e", 8), ("switch-base-128", 8), ("mixtral-8x7b", 8),
    ("deepseek-v2-lite", 8), ("deepseek-v3", 8), ("qwen3-235b-a22b", 8),
    ("tiny-moe-a", 2), ("tiny-moe-b", 2),
]


def _matmul(rows: float, n: int, k: int) -> tuple[float, float]:
    forward = 2.0 * rows * n * k
    return forward, 2 * forward  # dX + dW


def _memory_bound(forward: float) -> tuple[float, float]:
    return forward, 2 * forward


def _expert_rows(w: Workload) -> float:
    """Rows a rank's experts process: E * C padded, T * top_k dropless (uniform routing)."""
    if w.capacity is not None:
        return w.num_experts * w.capacity
    return w.tokens_per_gpu * w.model.top_k


def _terms(w: Workload) -> list[tuple[float, float]]:
    """(forward, backward) FLOP of every op of one iteration on one rank, excluding the optimizer."""
    m, t = w.model, w.training
    T, h, B, S, H, V = w.tokens_per_gpu, m.hidden, t.batch_per_gpu, t.seq_len, m.num_heads, m.vocab_size
    Th = T * h
    layernorm = (5.0 * Th, 10.0 * Th + 2.0 * Th)
    add = _memory_bound(1.0 * Th)
    terms = [(Th if m.learned_positions else 0.0, 1.0 * Th)]  # embed: position add; dW scatter-add
    for layer in range(m.total_layers):
        terms.append(layernorm)
        if m.mla is None:
            d, kv = m.head_dim or h // H, m.num_kv_heads or H
            terms.append(_matmul(T, (H + 2 * kv) * d, h))
            dqk = dv = d
        else:
            a = m.mla
            dqk, dv = a.qk_nope_head_dim + a.qk_rope_head_dim, a.v_head_dim
            if a.q_lora_rank is None:
                terms.append(_matmul(T, H * dqk, h))
            else:
                terms += [_matmul(T, a.q_lora_rank, h), _matmul(T, H * dqk, a.q_lora_rank)]
            terms += [_matmul(T, a.kv_lora_rank + a.qk_rope_head_dim, h),
                      _matmul(T, H * (a.qk_nope_head_dim + dv), a.kv_lora_rank)]
        core = 2.0 * B * S * S * H * (dqk + dv)
        terms += [(core, 2.5 * core), _matmul(T, h, H * dv), add]  # attention dX: five matmuls to two
        if m.encoder_decoder and layer >= m.num_layers:
            d, kv = m.head_dim or h // H, m.num_kv_heads or H
            cross = 2.0 * B * S * S * H * 2 * d
            terms += [layernorm, _matmul(T, H * d, h), _matmul(T, 2 * kv * d, h), (cross, 2.5 * cross),
                      _matmul(T, h, H * d), add]
        terms.append(layernorm)
        if m.is_moe_block(layer):
            E, k, f = w.num_experts, m.top_k, m.expert_ffn_hidden
            gate = 2 if m.expert_activation.value == "swiglu" else 1
            rows = _expert_rows(w)
            terms.append((2.0 * T * h * E, 4.0 * T * h * E))
            terms += [_matmul(rows, gate * f, h), _memory_bound(ACT[m.expert_activation.value] * rows * f),
                      _matmul(rows, h, f), _memory_bound(2.0 * T * k * h)]
            if m.num_shared_experts:
                sf = m.num_shared_experts * f
                terms += [_matmul(T, gate * sf, h), _memory_bound(ACT[m.expert_activation.value] * T * sf),
                          _matmul(T, h, sf)]
        else:
            f = m.ffn_hidden
            assert f is not None
            gate = 2 if m.activation.value == "swiglu" else 1
            act = _memory_bound(ACT[m.activation.value] * T * f)
            terms += [_matmul(T, gate * f, h), act, _matmul(T, h, f)]
        terms.append(add)
    if m.encoder_decoder:
        terms += [layernorm, (0.0, 1.0 * Th)]  # encoder ln_f, decoder embedding (dW scatter-add)
    terms += [layernorm, _matmul(T, V, h), _memory_bound(4.0 * T * V)]
    return terms


def _params(w: Workload) -> tuple[int, int]:
    """(dense parameters, expert parameters on one rank)."""
    m = w.model
    h, H, V = m.hidden, m.num_heads, m.vocab_size
    dense = V * h + m.learned_positions * h + (0 if m.tie_embeddings else V * h) + 2 * h
    if m.encoder_decoder:
        dense += 2 * h
    expert = 0
    for layer in range(m.total_layers):
        dense += 2 * 2 * h
        if m.mla is None:
            d, kv = m.head_dim or h // H, m.num_kv_heads or H
            dense += h * (H + 2 * kv) * d + H * d * h
        else:
            a = m.mla
            dqk = a.qk_nope_head_dim + a.qk_rope_head_dim
            q = h * H * dqk if a.q_lora_rank is None else h * a.q_lora_rank + a.q_lora_rank * H * dqk
            dense += q + h * (a.kv_lora_rank + a.qk_rope_head_dim)
            dense += a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim) + H * a.v_head_dim * h
        if m.encoder_decoder and layer >= m.num_layers:
            d, kv = m.head_dim or h // H, m.num_kv_heads or H
            dense += 2 * h + h * H * d + h * 2 * kv * d + H * d * h
        if m.is_moe_block(layer):
            f = m.expert_ffn_hidden
            gate = 2 if m.expert_activation.value == "swiglu" else 1
            dense += h * w.num_experts + m.num_shared_experts * (gate * h * f + f * h)
            expert += w.experts_per_rank * (gate * h * f + f * h)
        else:
            f = m.ffn_hidden
            assert f is not None
            gate = 2 if m.activation.value == "swiglu" else 1
            dense += gate * h * f + f * h
    return dense, expert


@pytest.fixture(scope="module", params=CASES, ids=[f"{name}-{n}gpu" for name, n in CASES])
def built(request: pytest.FixtureRequest):
    name, gpus = request.param
    workload = load_workload(name, num_gpus=gpus, gpu=GPU)
    return workload, build_graph(workload)


def test_forward_flops_match_closed_form(built) -> None:
    workload, graph = built
    expected = sum(forward for forward, _ in _terms(workload))
    actual = sum(op.flops for op in graph.ops if op.phase is Phase.FORWARD)
    assert actual == pytest.approx(expected, rel=1e-12)


def test_total_flops_match_closed_form(built) -> None:
    workload, graph = built
    dense, expert = _params(workload)
    per_param = 4 if workload.training.optimizer.value == "sgd_momentum" else 12
    m = workload.model
    table_uses = 1 + int(m.tie_embeddings) + int(m.encoder_decoder)
    synced = dense * (len(workload.dense_dp_group) > 1) + expert * (workload.expert_dp_size > 1)
    framework = (table_uses - 1) * m.vocab_size * m.hidden + synced
    expected = sum(f + b for f, b in _terms(workload)) + per_param * (dense + expert) + framework
    assert sum(op.flops for op in graph.ops) == pytest.approx(expected, rel=1e-12)


def test_parameter_bytes_match_closed_form(built) -> None:
    workload, graph = built
    dense, expert = _params(workload)
    grad_bytes = 4 if workload.training.dtype.value == "fp32" else 2
    assert graph.facts.params == ParamCounts(dense, expert)
    dw_bytes = sum(op.param_bytes for op in graph.ops if op.phase is Phase.BACKWARD_WEIGHT)
    assert dw_bytes == (dense + expert) * grad_bytes


def test_all_to_all_bytes_sent_off_rank(built) -> None:
    workload, graph = built
    ep = workload.ep_size
    rows = _expert_rows(workload)
    row_bytes = workload.model.hidden * workload.training.dtype.bytes
    moe_layers = sum(workload.model.is_moe_block(i) for i in range(workload.model.total_layers))
    expected = 4 * moe_layers * rows * row_bytes * (ep - 1) / ep
    a2a = [op for op in graph.ops if op.kind is OpKind.ALL_TO_ALL]
    assert len(a2a) == 4 * moe_layers
    for rank in (0, workload.num_gpus - 1):
        group, member = divmod(rank, ep)
        rows = [op.comm.traffic[group, member] for op in a2a]
        sent = sum(row.sum() - row[member] for row in rows)
        assert sent == pytest.approx(expected, rel=1e-12)


def test_capacity_is_ceiling_of_factor_times_share() -> None:
    workload = load_workload("switch-base-128", num_gpus=8, gpu=GPU)
    tokens = 8 * 512
    assert workload.capacity == math.ceil(1.25 * tokens * 1 / 128) == 40
