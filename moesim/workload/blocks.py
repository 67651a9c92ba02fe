"""Forward recipes: every op of one iteration's forward pass, with real shapes and data edges.

The builder turns these ``ForwardNode``s into ``Op``s and derives the backward pass from their
edges: ``inputs`` are the forward data dependencies, ``grad_inputs`` the subset that gradients flow
back to (a permute needs the router's indices but passes no gradient to them).

Cost conventions (per rank, T tokens, h hidden, b bytes per element):
- matmul of ``rows`` x k by k x n: 2 * rows * n * k FLOP; bytes = inputs + weights + output.
- attention: 2 * B * S^2 * H * (d_qk + d_v) FLOP (scores plus weighted sum, full square: the causal
  half is not skipped); bytes = q, k, v read and output written (flash-style, no S^2 tensor).
- memory-bound ops: bytes read + written, FLOP per element below (small by design).
- router: its 2 * T * h * E gate matmul; softmax and top-k are neglected.
- unpermute: 2 * T * top_k * h (scale each expert output by its gate, add into its token).

Axes (where a schedule may cut an op into parts): token-wise ops along the batch and the sequence, the
MoE ops also along the capacity, self-attention of a decoder causally along the sequence, an encoder's
self-attention and cross-attention (and the projection of the encoder output it reads) only along
the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moesim.workload.config import Activation, AttentionKind, GateKind, Workload
from moesim.workload.moe import MoEPlan
from moesim.workload.ops import Axis, CommSpec, OpKind, Role

LAYERNORM_FLOPS_PER_ELEMENT = 5  # mean, variance, normalise, scale, shift
ADD_FLOPS_PER_ELEMENT = 1
LOSS_FLOPS_PER_LOGIT = 4         # max, exp, sum, log-softmax pick
UNPERMUTE_FLOPS_PER_ELEMENT = 2  # gate scale + accumulate

TOKENWISE = frozenset({Axis.BATCH, Axis.SEQUENCE})
CAPACITY_WISE = frozenset({Axis.BATCH, Axis.SEQUENCE, Axis.CAPACITY})
WHOLE_SEQUENCES = frozenset({Axis.BATCH})  # attention over all of each sequence (bidirectional, cross)


def activation_flops(activation: Activation) -> int:
    """FLOP per output element: GELU (tanh form) ~8, ReLU 1, SwiGLU silu + multiply ~5."""
    match activation:
        case Activation.GELU:
            return 8
        case Activation.RELU:
            return 1
        case Activation.SWIGLU:
            return 5


@dataclass(slots=True)
class ForwardNode:
    name: str
    role: Role
    kind: OpKind
    layer: int | None
    flops: float
    mem_bytes: float
    dims: dict[str, int]
    inputs: tuple[int, ...]
    grad_inputs: tuple[int, ...]
    axes: frozenset[Axis] = frozenset()
    expert: bool = False
    rank_scale: tuple[float, ...] | None = None
    comm: CommSpec | None = None
    comm_backward: CommSpec | None = None  # an all-to-all's backward moves the transposed traffic
    params: tuple[tuple[str, int], ...] = field(default=())  # (parameter key, elements); shared keys = tied


class ForwardRecipe:
    """Emits the forward nodes of ``workload`` in program order (``build``)."""

    def __init__(self, workload: Workload, plans: dict[int, MoEPlan]) -> None:
        self.workload = workload
        self.model = workload.model
        self.plans = plans
        self.tokens = workload.tokens_per_gpu
        self.hidden = workload.model.hidden
        self.bytes = workload.training.dtype.bytes
        self.nodes: list[ForwardNode] = []

    def build(self) -> list[ForwardNode]:
        model = self.model
        x = self.embed("embed")
        for layer in range(model.num_layers):
            x = self.block(layer, x, None)
        if model.encoder_decoder:
            memory = self.layernorm(None, Role.LN_F, x, name="encoder.ln_f")
            x = self.embed("decoder_embed")
            for layer in range(model.num_layers, model.total_layers):
                x = self.block(layer, x, memory)
        x = self.layernorm(None, Role.LN_F, x)
        vocab_key = "embed.vocab" if model.tie_embeddings else "lm_head"
        logits = self.matmul(None, Role.LM_HEAD, (x,), self.tokens, model.vocab_size, self.hidden, vocab_key)
        self.loss(logits)
        return self.nodes

    def block(self, layer: int, x: int, memory: int | None) -> int:
        """One transformer block; ``memory`` is the encoder output for decoder blocks (cross-attention)."""
        model = self.model
        normed = self.layernorm(layer, Role.LN1, x)
        attended = self.self_attention(layer, normed)
        out = self.matmul(layer, Role.ATTN_OUT, (attended,), self.tokens, self.hidden,
                          model.num_heads * model.v_head_dim)
        residual = self.add(layer, Role.ATTN_RESIDUAL, x, out)
        if memory is not None:
            residual = self.cross_attention(layer, residual, memory)
        normed = self.layernorm(layer, Role.LN2, residual)
        y = self.moe(layer, normed) if model.is_moe_block(layer) else self.mlp(layer, normed)
        return self.add(layer, Role.RESIDUAL, residual, y)

    def self_attention(self, layer: int, x: int) -> int:
        model, tokens, hidden = self.model, self.tokens, self.hidden
        heads, dqk = model.num_heads, model.qk_head_dim
        if model.attention is AttentionKind.STANDARD:
            qkv = self.matmul(layer, Role.QKV, (x,), tokens, (heads + 2 * model.kv_heads) * dqk, hidden)
            axes = self._self_attention_axes(layer)
            return self.attention(layer, Role.ATTENTION, (qkv,), model.kv_heads, axes, causal=axes is TOKENWISE)
        mla = model.mla
        assert mla is not None
        if mla.q_lora_rank is not None:
            q_latent = self.matmul(layer, Role.Q_DOWN, (x,), tokens, mla.q_lora_rank, hidden)
            q = self.matmul(layer, Role.Q_UP, (q_latent,), tokens, heads * dqk, mla.q_lora_rank)
        else:
            q = self.matmul(layer, Role.Q_PROJ, (x,), tokens, heads * dqk, hidden)
        latent_width = mla.kv_lora_rank + mla.qk_rope_head_dim
        kv_latent = self.matmul(layer, Role.KV_DOWN, (x,), tokens, latent_width, hidden)
        kv = self.matmul(layer, Role.KV_UP, (kv_latent,), tokens,
                         heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank)
        axes = self._self_attention_axes(layer)
        return self.attention(layer, Role.ATTENTION, (q, kv_latent, kv), heads, axes, causal=axes is TOKENWISE)

    def _self_attention_axes(self, layer: int) -> frozenset[Axis]:
        """Decoder self-attention is causal (it splits along the sequence, causally); an encoder's is not."""
        encoder = self.model.encoder_decoder and not self.model.is_decoder_block(layer)
        return WHOLE_SEQUENCES if encoder else TOKENWISE

    def cross_attention(self, layer: int, residual: int, memory: int) -> int:
        model, tokens, hidden = self.model, self.tokens, self.hidden
        dqk = model.qk_head_dim
        normed = self.layernorm(layer, Role.XATTN_LN, residual)
        q = self.matmul(layer, Role.XATTN_Q, (normed,), tokens, model.num_heads * dqk, hidden)
        kv = self.matmul(layer, Role.XATTN_KV, (memory,), tokens, 2 * model.kv_heads * dqk, hidden,
                         axes=WHOLE_SEQUENCES)  # every decoder token reads all of the encoder's
        attended = self.attention(layer, Role.XATTN, (q, kv), model.kv_heads, WHOLE_SEQUENCES)
        out = self.matmul(layer, Role.XATTN_OUT, (attended,), tokens, hidden, model.num_heads * model.v_head_dim)
        return self.add(layer, Role.XATTN_RESIDUAL, residual, out)

    def mlp(self, layer: int, x: int) -> int:
        width = self.model.ffn_hidden
        assert width is not None
        return self.feed_forward(layer, (Role.FC1, Role.ACT, Role.FC2), x, width, self.model.activation)

    def feed_forward(self, layer: int, roles: tuple[Role, Role, Role], x: int, width: int,
                     activation: Activation) -> int:
        """An MLP whose three ops take ``roles`` (up-projection, activation, down-projection)."""
        tokens, hidden = self.tokens, self.hidden
        fc1, act_role, fc2 = roles
        up = self.matmul(layer, fc1, (x,), tokens, width * (2 if activation.gated else 1), hidden)
        act = self.activation(layer, act_role, up, tokens * width, activation, TOKENWISE, False, None)
        return self.matmul(layer, fc2, (act,), tokens, hidden, width)

    def moe(self, layer: int, x: int) -> int:
        model, plan, tokens, hidden = self.model, self.plans[layer], self.tokens, self.hidden
        experts, nbytes = self.workload.num_experts, self.bytes
        gate_axes = TOKENWISE if self.workload.training.gate is GateKind.SWITCH else frozenset()
        router = self.emit(layer, Role.ROUTER, OpKind.ROUTER, 2 * tokens * hidden * experts,
                           (tokens * hidden + hidden * experts + tokens * experts) * nbytes,
                           {"tokens": tokens, "experts": experts, "top_k": model.top_k, "hidden": hidden},
                           (x,), (x,), gate_axes, params=((f"L{layer}.router", hidden * experts),))
        slots = math.ceil(plan.sent_rows)
        shuffle_bytes = (tokens + plan.sent_rows) * hidden * nbytes
        shape = {"tokens": tokens, "hidden": hidden, "rows": slots}
        permuted = self.emit(layer, Role.PERMUTE, OpKind.PERMUTE, 0.0, shuffle_bytes, dict(shape), (x, router),
                             (x,), CAPACITY_WISE)
        buffer = {"rows": slots, "hidden": hidden}
        dispatched = self.emit(layer, Role.DISPATCH, OpKind.ALL_TO_ALL, 0.0, 0.0, dict(buffer), (permuted,),
                               (permuted,), CAPACITY_WISE, comm=plan.dispatch, comm_backward=plan.combine)
        shared = None
        if model.num_shared_experts:
            width = model.num_shared_experts * model.expert_ffn_hidden
            shared = self.feed_forward(layer, (Role.SHARED_FC1, Role.SHARED_ACT, Role.SHARED_FC2), x, width,
                                       model.expert_activation)
        expert_out = self.experts(layer, dispatched, plan)
        combined = self.emit(layer, Role.COMBINE, OpKind.ALL_TO_ALL, 0.0, 0.0, dict(buffer), (expert_out,),
                             (expert_out,), CAPACITY_WISE, comm=plan.combine, comm_backward=plan.dispatch)
        joined = (combined, router) if shared is None else (combined, router, shared)
        gather_flops = UNPERMUTE_FLOPS_PER_ELEMENT * tokens * model.top_k * hidden
        return self.emit(layer, Role.UNPERMUTE, OpKind.PERMUTE, gather_flops, shuffle_bytes, dict(shape), joined,
                         joined, TOKENWISE)

    def experts(self, layer: int, x: int, plan: MoEPlan) -> int:
        """The rank's local experts as batched matmuls over ``plan.received_rows`` token rows (mean rank)."""
        model, hidden, rows = self.model, self.hidden, plan.received_rows
        width, activation = model.expert_ffn_hidden, model.expert_activation
        local, scale = self.workload.experts_per_rank, plan.rank_scale
        up = self.matmul(layer, Role.EXPERT_FC1, (x,), rows, width * (2 if activation.gated else 1), hidden,
                         batch=local, expert=True, rank_scale=scale, axes=CAPACITY_WISE)
        act = self.activation(layer, Role.EXPERT_ACT, up, rows * width, activation, CAPACITY_WISE, True, scale)
        return self.matmul(layer, Role.EXPERT_FC2, (act,), rows, hidden, width,
                           batch=local, expert=True, rank_scale=scale, axes=CAPACITY_WISE)

    # --- primitive ops -------------------------------------------------------------------------

    def emit(self, layer: int | None, role: Role, kind: OpKind, flops: float, mem_bytes: float,
             dims: dict[str, int], inputs: tuple[int, ...], grad_inputs: tuple[int, ...],
             axes: frozenset[Axis], *, name: str | None = None, expert: bool = False,
             rank_scale: tuple[float, ...] | None = None, comm: CommSpec | None = None,
             comm_backward: CommSpec | None = None,
             params: tuple[tuple[str, int], ...] = ()) -> int:
        if name is None:
            name = role.value if layer is None else f"L{layer}.{role.value}"
        self.nodes.append(ForwardNode(name, role, kind, layer, float(flops), float(mem_bytes), dims, inputs,
                                      grad_inputs, axes, expert, rank_scale, comm, comm_backward, params))
        return len(self.nodes) - 1

    def matmul(self, layer: int | None, role: Role, inputs: tuple[int, ...], rows: float, n: int, k: int,
               key: str | None = None, *, batch: int = 1, expert: bool = False,
               rank_scale: tuple[float, ...] | None = None, axes: frozenset[Axis] = TOKENWISE) -> int:
        """``rows`` x k times k x n per weight; ``batch`` weights (local experts) share the rows evenly."""
        name = role.value if layer is None else f"L{layer}.{role.value}"
        dims = {"m": math.ceil(rows / batch), "n": n, "k": k}
        if batch > 1:
            dims["batch"] = batch
        mem = (rows * k + batch * k * n + rows * n) * self.bytes
        return self.emit(layer, role, OpKind.MATMUL, 2 * rows * n * k, mem, dims, inputs, inputs, axes,
                         expert=expert, rank_scale=rank_scale, params=((key or name, batch * k * n),))

    def attention(self, layer: int, role: Role, inputs: tuple[int, ...], kv_heads: int,
                  axes: frozenset[Axis], *, causal: bool = False) -> int:
        """``causal`` (a decoder's self-attention) sets ``dims["causal"]``: its FLOPs stay the full square,
        the cost model decides how much of it a causal kernel does (``cost.causal_attention_work``)."""
        model, batch, seq = self.model, self.workload.training.batch_per_gpu, self.workload.training.seq_len
        heads, dqk, dv = model.num_heads, model.qk_head_dim, model.v_head_dim
        flops = 2 * batch * seq * seq * heads * (dqk + dv)
        mem = self.tokens * (heads * dqk + kv_heads * dqk + kv_heads * dv + heads * dv) * self.bytes
        dims = {"b": batch, "heads": heads, "s": seq, "head_dim": dqk, "v_head_dim": dv, "kv_heads": kv_heads}
        if causal:
            dims["causal"] = 1
        return self.emit(layer, role, OpKind.ATTENTION, flops, mem, dims, inputs, inputs, axes)

    def layernorm(self, layer: int | None, role: Role, x: int, *, name: str | None = None) -> int:
        numel, hidden = self.tokens * self.hidden, self.hidden
        key = name or (role.value if layer is None else f"L{layer}.{role.value}")
        flops = LAYERNORM_FLOPS_PER_ELEMENT * numel
        return self.emit(layer, role, OpKind.LAYERNORM, flops, 2 * numel * self.bytes,
                         {"tokens": self.tokens, "hidden": hidden}, (x,), (x,), TOKENWISE, name=name,
                         params=((key, 2 * hidden),))

    def add(self, layer: int, role: Role, a: int, b: int) -> int:
        numel = self.tokens * self.hidden
        flops = ADD_FLOPS_PER_ELEMENT * numel
        return self.emit(layer, role, OpKind.ELEMENTWISE, flops, 3 * numel * self.bytes, {"numel": numel},
                         (a, b), (a, b), TOKENWISE)

    def activation(self, layer: int, role: Role, x: int, numel: float, activation: Activation,
                   axes: frozenset[Axis], expert: bool, rank_scale: tuple[float, ...] | None) -> int:
        read = numel * (2 if activation.gated else 1)
        return self.emit(layer, role, OpKind.ELEMENTWISE, activation_flops(activation) * numel,
                         (read + numel) * self.bytes, {"numel": math.ceil(numel)}, (x,), (x,), axes,
                         expert=expert, rank_scale=rank_scale)

    def embed(self, name: str) -> int:
        """Token (and learned position) lookup; the decoder of an encoder-decoder shares the vocab table."""
        model, numel = self.model, self.tokens * self.hidden
        params = [("embed.vocab", model.vocab_size * self.hidden)]
        position_add = 0
        if model.learned_positions and name == "embed":
            params.append(("embed.positions", model.learned_positions * self.hidden))
            position_add = numel
        mem = (2 * numel + position_add) * self.bytes
        return self.emit(None, Role.EMBED, OpKind.EMBEDDING, position_add, mem,
                         {"tokens": self.tokens, "hidden": self.hidden, "vocab": model.vocab_size}, (), (),
                         TOKENWISE, name=name, params=tuple(params))

    def loss(self, logits: int) -> int:
        vocab = self.model.vocab_size
        numel = self.tokens * vocab
        return self.emit(None, Role.LOSS, OpKind.LOSS, LOSS_FLOPS_PER_LOGIT * numel, numel * self.bytes,
                         {"tokens": self.tokens, "vocab": vocab}, (logits,), (logits,), TOKENWISE)
