"""A plain PyTorch MoE transformer built from a ``Workload``: the real model moesim's op graph describes.

GPT-style and decoder-only: token embedding (plus learned positions), pre-LN blocks (fused qkv with
grouped-query attention, causal ``scaled_dot_product_attention``, output projection), a dense MLP or an
MoE layer per block as ``ModelConfig.is_moe_block`` says, final LayerNorm, lm_head (tied to the
embedding when configured) and cross-entropy. No biases, as the graph has none. Weights are stored
``[in, out]`` and applied as ``x @ w``, so a projection's backward is one matmul node (a tied lm_head
reads the ``[vocab, hidden]`` table through ``F.linear``).

MoE layers (DeepSpeed-MoE / Tutel style): a top-k softmax router; with a capacity, each rank keeps at
most ``Workload.capacity`` assignments per expert (in token order, or by gate score for the
batch-prioritised gate) in fixed buffers of that many rows per expert; dropless, it sends exactly its
assignments after exchanging the counts. Tokens move by differentiable ``all_to_all_single`` over the
rank's EP group; dropless, regrouping the received rows by expert (and back) is part of the dispatch
(and combine) label. The gate weights are the chosen experts' softmax probabilities (not renormalised).

Every forward op runs under ``record_function(<op name of moesim's graph>)`` (``L0.qkv``, ``lm_head``):
the labels are how a profile maps onto the graph (``attribution``). ``ReferenceModel.ops`` says, per
label, which parameters it uses and whether its backward is matmuls to split into dX and dW.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from moesim.dtypes import DType
from moesim.errors import MoesimError
from moesim.workload.config import Activation, AttentionKind, GateKind, Workload

from .opinfo import OpInfo

INIT_STD = 0.02
_DTYPES = {DType.FP32: torch.float32, DType.BF16: torch.bfloat16, DType.FP16: torch.float16}


@dataclass(frozen=True)
class RankGroups:
    """This rank's process groups; None where the group is this rank alone."""

    ep: dist.ProcessGroup | None
    ep_size: int
    ep_position: int            # this rank's member index inside its EP group
    expert_dp: dist.ProcessGroup | None


def rank_groups(workload: Workload, rank: int) -> RankGroups:
    """Create every EP and expert-data-parallel group (every rank must call this, in the same order)."""
    ep, position, expert_dp = None, 0, None
    for members in workload.ep_groups:
        group = dist.new_group(list(members))
        if rank in members:
            ep, position = group, members.index(rank)
    for members in workload.expert_dp_groups:
        group = dist.new_group(list(members))
        if rank in members:
            expert_dp = group
    return RankGroups(ep if workload.ep_size > 1 else None, workload.ep_size, position,
                      expert_dp if workload.expert_dp_size > 1 else None)


def check_supported(workload: Workload, device: torch.device) -> torch.dtype:
    """The parameter dtype for ``workload`` on ``device``; MoesimError for what the model does not build."""
    model = workload.model
    if model.encoder_decoder or model.attention is not AttentionKind.STANDARD:
        got = (f"an encoder-decoder (num_decoder_layers={model.num_decoder_layers})" if model.encoder_decoder
               else f"attention {model.attention.value}")
        raise MoesimError(f"the reference model builds decoder-only models with standard attention; got {got}")
    if model.learned_positions and workload.training.seq_len > model.learned_positions:
        raise MoesimError(f"training.seq_len={workload.training.seq_len} exceeds model.learned_positions="
                          f"{model.learned_positions}")
    dtype = workload.training.dtype
    allowed = (DType.FP32,) if device.type == "cpu" else tuple(_DTYPES)
    if dtype not in allowed:
        raise MoesimError(f"training.dtype={dtype.value}: the reference model runs "
                          f"{', '.join(d.value for d in allowed)} on {device.type}")
    return _DTYPES[dtype]


def _normal(generator: torch.Generator, *shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=generator) * INIT_STD)


def _activate(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    match activation:
        case Activation.GELU:
            return F.gelu(x, approximate="tanh")
        case Activation.RELU:
            return F.relu(x)
        case Activation.SWIGLU:
            gate, up = x.chunk(2, dim=-1)
            return F.silu(gate) * up


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` whose backward is the transposed exchange (the split sizes swapped)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int] | None, in_splits: list[int] | None,
                group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return _exchange(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        out_splits, in_splits = ctx.splits
        return _exchange(grad, in_splits, out_splits, ctx.group), None, None, None


def _exchange(x: torch.Tensor, out_splits: list[int] | None, in_splits: list[int] | None,
              group: dist.ProcessGroup | None) -> torch.Tensor:
    """Rows of ``x`` sent in ``in_splits`` chunks, received in ``out_splits`` (None: equal chunks)."""
    if group is None:
        return x.clone()
    rows = x.shape[0] if out_splits is None else sum(out_splits)
    out = x.new_empty((rows, *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    return out


def all_to_all(x: torch.Tensor, out_splits: list[int] | None, in_splits: list[int] | None,
               group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable ``all_to_all_single`` over ``group`` (None: this rank alone, a copy)."""
    result: torch.Tensor = _AllToAll.apply(x, out_splits, in_splits, group)
    return result


class FeedForward(nn.Module):
    """``act(x @ w1) @ w2`` under the labels ``names`` (up-projection, activation, down-projection)."""

    def __init__(self, names: tuple[str, str, str], hidden: int, width: int, activation: Activation,
                 generator: torch.Generator, ops: dict[str, OpInfo]) -> None:
        super().__init__()
        self.names, self.activation = names, activation
        self.w1 = _normal(generator, hidden, width * (2 if activation.gated else 1))
        self.w2 = _normal(generator, width, hidden)
        ops.update({names[0]: OpInfo((tuple(self.w1.shape),), matmul=True), names[1]: OpInfo(),
                    names[2]: OpInfo((tuple(self.w2.shape),), matmul=True)})

    def forward(self, x_TH: torch.Tensor) -> torch.Tensor:
        with record_function(self.names[0]):
            up = x_TH @ self.w1
        with record_function(self.names[1]):
            act = _activate(up, self.activation)
        with record_function(self.names[2]):
            return act @ self.w2


class GroupedExperts(nn.Module):
    """This rank's experts as batched weights ``[experts, in, out]``; expert ``first + j`` is seeded from
    (``seed``, its global index), so its replicas on other EP groups start equal."""

    def __init__(self, prefix: str, first: int, count: int, hidden: int, width: int, activation: Activation,
                 seed: int, ops: dict[str, OpInfo]) -> None:
        super().__init__()
        self.names = (f"{prefix}.expert_fc1", f"{prefix}.expert_act", f"{prefix}.expert_fc2")
        self.activation = activation
        up, down = [], []
        for expert in range(first, first + count):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (expert + 1))
            up.append(torch.randn(hidden, width * (2 if activation.gated else 1), generator=generator) * INIT_STD)
            down.append(torch.randn(width, hidden, generator=generator) * INIT_STD)
        self.w1, self.w2 = nn.Parameter(torch.stack(up)), nn.Parameter(torch.stack(down))
        ops.update({self.names[0]: OpInfo((tuple(self.w1.shape),), matmul=True), self.names[1]: OpInfo(),
                    self.names[2]: OpInfo((tuple(self.w2.shape),), matmul=True)})

    def forward(self, rows: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """``[experts, rows, hidden]`` through batched matmuls, or one tensor of rows per expert (dropless)."""
        fc1, act, fc2 = self.names
        if isinstance(rows, torch.Tensor):
            with record_function(fc1):
                up = torch.bmm(rows, self.w1)
            with record_function(act):
                hidden = _activate(up, self.activation)
            with record_function(fc2):
                return torch.bmm(hidden, self.w2)
        with record_function(fc1):
            ups = [x @ w for x, w in zip(rows, self.w1.unbind(0), strict=True)]
        with record_function(act):
            hiddens = [_activate(x, self.activation) for x in ups]
        with record_function(fc2):
            return [x @ w for x, w in zip(hiddens, self.w2.unbind(0), strict=True)]


class MoELayer(nn.Module):
    """Router, permute, dispatch, (shared experts), local experts, combine, unpermute.

    After each forward, ``last_routing`` holds this rank's assignments per global expert before capacity
    and those kept after it (int64 tensors of ``num_experts``).
    """

    def __init__(self, layer: int, workload: Workload, groups: RankGroups, generator: torch.Generator,
                 seed: int, ops: dict[str, OpInfo]) -> None:
        super().__init__()
        model, hidden = workload.model, workload.model.hidden
        self.prefix, self.groups = f"L{layer}", groups
        self.num_experts, self.top_k, self.capacity = workload.num_experts, model.top_k, workload.capacity
        self.local = workload.experts_per_rank
        self.batch_prioritized = workload.training.gate is GateKind.BATCH_PRIORITIZED
        self.router = _normal(generator, hidden, self.num_experts)
        ops.update({f"{self.prefix}.{op}": OpInfo() for op in ("permute", "dispatch", "combine", "unpermute")})
        ops[f"{self.prefix}.router"] = OpInfo((tuple(self.router.shape),), matmul=True)
        self.shared = None
        if model.num_shared_experts:
            names = (f"{self.prefix}.shared_fc1", f"{self.prefix}.shared_act", f"{self.prefix}.shared_fc2")
            self.shared = FeedForward(names, hidden, model.num_shared_experts * model.expert_ffn_hidden,
                                      model.expert_activation, generator, ops)
        self.experts = GroupedExperts(self.prefix, groups.ep_position * self.local, self.local, hidden,
                                      model.expert_ffn_hidden, model.expert_activation, seed, ops)
        self.last_routing: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x_TH: torch.Tensor) -> torch.Tensor:
        with record_function(f"{self.prefix}.router"):
            probs_TE = torch.softmax((x_TH @ self.router).float(), dim=-1)
            weight_TK, expert_TK = probs_TE.topk(self.top_k, dim=-1)
        route = self._dropless if self.capacity is None else self._padded
        returned, rows, token_A, weight_A, shared = route(x_TH, expert_TK, weight_TK.to(x_TH.dtype))
        with record_function(f"{self.prefix}.unpermute"):
            picked = returned if rows is None else returned.index_select(0, rows)
            y_TH = torch.zeros_like(x_TH).index_add(0, token_A, picked * weight_A.unsqueeze(1))
            return y_TH if shared is None else y_TH + shared

    def _padded(self, x_TH: torch.Tensor, expert_TK: torch.Tensor, weight_TK: torch.Tensor) -> _Routed:
        """Buffers of ``capacity`` rows per expert; assignments beyond it are dropped."""
        p, experts, ep, hidden = self.prefix, self.num_experts, self.groups.ep_size, x_TH.shape[1]
        capacity = self.capacity
        assert capacity is not None
        with record_function(f"{p}.permute"):
            expert_A, token_A, weight_A = _flatten(expert_TK, weight_TK)
            order = (torch.argsort(weight_A, descending=True, stable=True) if self.batch_prioritized
                     else torch.arange(expert_A.numel(), device=expert_A.device))
            ranked = F.one_hot(expert_A[order], experts)
            position_A = torch.empty_like(expert_A)
            position_A[order] = (ranked.cumsum(0) * ranked).sum(1) - 1
            keep = position_A < capacity
            slot_K = expert_A[keep] * capacity + position_A[keep]
            self.last_routing = (torch.bincount(expert_A, minlength=experts),
                                 torch.bincount(expert_A[keep], minlength=experts))
            token_K, weight_K = token_A[keep], weight_A[keep]
            send = x_TH.new_zeros(experts * capacity, hidden).index_copy(0, slot_K, x_TH.index_select(0, token_K))
        with record_function(f"{p}.dispatch"):
            received = all_to_all(send, None, None, self.groups.ep)
            rows_XCH = received.view(ep, self.local, capacity, hidden).transpose(0, 1).reshape(self.local, -1, hidden)
        shared = None if self.shared is None else self.shared(x_TH)
        out = self.experts(rows_XCH)
        assert isinstance(out, torch.Tensor)
        with record_function(f"{p}.combine"):
            back = out.view(self.local, ep, capacity, hidden).transpose(0, 1).reshape(-1, hidden)
            returned = all_to_all(back, None, None, self.groups.ep)
        return returned, slot_K, token_K, weight_K, shared

    def _dropless(self, x_TH: torch.Tensor, expert_TK: torch.Tensor, weight_TK: torch.Tensor) -> _Routed:
        """Exactly the assignments, grouped by expert; the counts go first so each rank sizes its buffers."""
        p, ep, local = self.prefix, self.groups.ep_size, self.local
        with record_function(f"{p}.permute"):
            expert_A, token_A, weight_A = _flatten(expert_TK, weight_TK)
            order = torch.argsort(expert_A, stable=True)
            counts = torch.bincount(expert_A, minlength=self.num_experts)
            self.last_routing = (counts, counts)
            token_A, weight_A = token_A[order], weight_A[order]
            send = x_TH.index_select(0, token_A)
        with record_function(f"{p}.dispatch"):
            received_counts = _exchange(counts, None, None, self.groups.ep).view(ep, local)
            send_splits = counts.view(ep, local).sum(1).tolist()
            receive_splits = received_counts.sum(1).tolist()
            received = all_to_all(send, receive_splits, send_splits, self.groups.ep)
            # rows arrive by (source, expert); the experts take them by (expert, source)
            block = torch.arange(ep * local, device=counts.device).repeat_interleave(received_counts.reshape(-1))
            by_expert = torch.argsort((block % local) * ep + block // local, stable=True)
            rows = received.index_select(0, by_expert).split(received_counts.sum(0).tolist())
        shared = None if self.shared is None else self.shared(x_TH)
        out = self.experts(rows)
        with record_function(f"{p}.combine"):
            back = torch.empty_like(received).index_copy(0, by_expert, torch.cat(list(out)))
            returned = all_to_all(back, send_splits, receive_splits, self.groups.ep)
        return returned, None, token_A, weight_A, shared


# (rows back from the experts, which of them to keep (None: all, in order), their tokens, gate weights,
# the shared experts' output)
_Routed = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]


def _flatten(expert_TK: torch.Tensor, weight_TK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assignments in token order: expert, token and gate weight of each."""
    tokens, top_k = expert_TK.shape
    token_A = torch.arange(tokens, device=expert_TK.device).repeat_interleave(top_k)
    return expert_TK.reshape(-1), token_A, weight_TK.reshape(-1)


class Block(nn.Module):
    """Pre-LN transformer block ``layer``: attention, then a dense MLP or an MoE layer."""

    def __init__(self, layer: int, workload: Workload, groups: RankGroups, generator: torch.Generator,
                 seed: int, ops: dict[str, OpInfo]) -> None:
        super().__init__()
        model, hidden = workload.model, workload.model.hidden
        self.prefix, self.seq_len = f"L{layer}", workload.training.seq_len
        self.heads, self.kv_heads, self.head_dim = model.num_heads, model.kv_heads, model.qk_head_dim
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = _normal(generator, hidden, (self.heads + 2 * self.kv_heads) * self.head_dim)
        self.attn_out = _normal(generator, self.heads * self.head_dim, hidden)
        self.ffn: nn.Module
        if model.is_moe_block(layer):
            self.ffn = MoELayer(layer, workload, groups, generator, seed, ops)
        else:
            assert model.ffn_hidden is not None
            p = self.prefix
            self.ffn = FeedForward((f"{p}.fc1", f"{p}.act", f"{p}.fc2"), hidden, model.ffn_hidden, model.activation,
                                   generator, ops)
        p, norm = self.prefix, OpInfo(((hidden,), (hidden,)), fused_backward=True)
        ops.update({f"{p}.ln1": norm, f"{p}.ln2": norm, f"{p}.attention": OpInfo(),
                    f"{p}.qkv": OpInfo((tuple(self.qkv.shape),), matmul=True),
                    f"{p}.attn_out": OpInfo((tuple(self.attn_out.shape),), matmul=True),
                    f"{p}.attn_residual": OpInfo(), f"{p}.residual": OpInfo()})

    def forward(self, x_TH: torch.Tensor) -> torch.Tensor:
        p = self.prefix
        with record_function(f"{p}.ln1"):
            normed = self.ln1(x_TH)
        with record_function(f"{p}.qkv"):
            qkv = normed @ self.qkv
        with record_function(f"{p}.attention"):
            heads_BNSD = qkv.view(-1, self.seq_len, self.heads + 2 * self.kv_heads, self.head_dim).transpose(1, 2)
            q, k, v = heads_BNSD.split([self.heads, self.kv_heads, self.kv_heads], dim=1)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                      enable_gqa=self.kv_heads < self.heads)
            attended = attended.transpose(1, 2).reshape(x_TH.shape[0], -1)
        with record_function(f"{p}.attn_out"):
            out = attended @ self.attn_out
        with record_function(f"{p}.attn_residual"):
            x_TH = x_TH + out
        with record_function(f"{p}.ln2"):
            normed = self.ln2(x_TH)
        y = self.ffn(normed)
        with record_function(f"{p}.residual"):
            return x_TH + y


class ReferenceModel(nn.Module):
    """The whole network; ``forward(tokens_BS, targets_BS)`` returns the mean cross-entropy loss.

    Dense parameters come from one generator seeded with ``seed`` (equal on every rank); expert
    parameters (``expert_parameter_names``) from their global expert index.
    """

    def __init__(self, workload: Workload, groups: RankGroups, seed: int) -> None:
        super().__init__()
        model, hidden = workload.model, workload.model.hidden
        generator = torch.Generator().manual_seed(seed)
        self.ops: dict[str, OpInfo] = {}
        self.vocab = _normal(generator, model.vocab_size, hidden)
        self.positions = _normal(generator, model.learned_positions, hidden) if model.learned_positions else None
        self.blocks = nn.ModuleList(Block(i, workload, groups, generator, seed, self.ops)
                                    for i in range(model.num_layers))
        self.ln_f = nn.LayerNorm(hidden)
        self.lm_head = None if model.tie_embeddings else _normal(generator, hidden, model.vocab_size)
        embed = [tuple(self.vocab.shape)] + ([] if self.positions is None else [tuple(self.positions.shape)])
        head = tuple(self.vocab.shape) if self.lm_head is None else tuple(self.lm_head.shape)
        self.ops.update({"embed": OpInfo(tuple(embed)), "ln_f": OpInfo(((hidden,), (hidden,)), fused_backward=True),
                         "lm_head": OpInfo((head,), matmul=True), "loss": OpInfo()})

    def forward(self, tokens_BS: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
        with record_function("embed"):
            x_BSH = F.embedding(tokens_BS, self.vocab)
            if self.positions is not None:
                x_BSH = x_BSH + self.positions[: tokens_BS.shape[1]]
            x_TH = x_BSH.reshape(-1, x_BSH.shape[-1])
        for block in self.blocks:
            x_TH = block(x_TH)
        with record_function("ln_f"):
            x_TH = self.ln_f(x_TH)
        with record_function("lm_head"):
            logits = F.linear(x_TH, self.vocab) if self.lm_head is None else x_TH @ self.lm_head
        with record_function("loss"):
            return F.cross_entropy(logits.float(), targets_BS.reshape(-1))

    def moe_layers(self) -> list[tuple[int, MoELayer]]:
        return [(i, block.ffn) for i, block in enumerate(self.blocks) if isinstance(block.ffn, MoELayer)]

    def expert_parameter_names(self) -> list[str]:
        """Fully qualified names of the expert weights (excluded from DDP)."""
        return [name for name, _ in self.named_parameters() if ".experts." in name]
