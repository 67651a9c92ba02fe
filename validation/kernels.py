"""Real kernels for plan tasks: each task becomes a zero-argument callable running torch ops of its shapes.

Tensors are allocated once, when the kernel is built (``TensorPool`` shares them by shape); calling
the kernel runs the op (synchronously on CPU; on a GPU it enqueues on the current stream). Compute
sizes are the op's ``dims`` scaled by the task's share on the rank, ``task.fraction_on(rank)`` times
``op.rank_scale[rank]``, along the dimension that holds the tokens (rounded half up; a size that
rounds to 0 runs an empty kernel).

The table ``KERNELS`` maps (kind, phase) to a builder. It follows the FLOP / byte conventions of
``moesim.workload.blocks`` and ``builder``:

- MATMUL: ``[batch,] m x k @ k x n``. dX and dW ops carry transposed dims already; the token
  dimension is ``m`` (forward, dX) or ``k`` (dW).
- ATTENTION: scaled_dot_product_attention on ``[b', heads, s, head_dim]`` (grouped kv heads when
  ``kv_heads < heads``; ``is_causal`` where ``dims["causal"]``, a decoder's self-attention); dX: its real
  backward (dQ, dK, dV by autograd; costed at 2.5x the forward FLOPs). A part cut along the sequence
  (``task.axis``) runs its share of the query rows against all ``s`` keys instead, unmasked: on a CPU
  host, whose causal kernel skips nothing (``cost.causal_attention_work`` 1), the same work.
- LAYERNORM: layer_norm; dW: the two column sums ``sum(g * x)``, ``sum(g)`` (it reads one more
  tensor than the convention's bytes). ELEMENTWISE: an add for residual roles, else the activation
  whose FLOPs per element match (GELU 8, SwiGLU 5, ReLU 1; the nearest otherwise). SOFTMAX: softmax.
- ROUTER: gate logits matmul + softmax + top-k; dX and dW: the gate matmul transposed.
- PERMUTE: ``permute`` gathers token rows into capacity slots (index_select); ``unpermute`` scales
  expert rows by their gate and scatters them back (index_add_). Token rows are at least 1, so a
  part with slots but no tokens still has rows to gather.
- EMBEDDING: embedding lookup (+ position add when the op has FLOPs); dW: the table's gradient zeroed,
  then index_add_ into it, then (``dims["accumulate"]``, tied embeddings) one add of the other uses' sum;
  the fill's rows and the sum's elements scale with the share, as the cost model charges them.
- LOSS: cross_entropy; dX: its real backward (the logits' gradient, by autograd). OPTIMIZER: SGD with
  momentum over a flat buffer of ``params`` elements (an Adam-style update when the op's FLOPs per
  parameter exceed SGD's).
- COPY (DDP's bucket copies): ``copy_in`` a ``mul`` into the flat buffer, ``copy_out`` a copy back.
- Every other dX of a memory-bound op is costed at 2x its forward: it runs the forward twice.

The collectives' kernels are in ``collective_kernels``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F

from moesim.dtypes import DType
from moesim.plan import Task
from moesim.workload.blocks import activation_flops
from moesim.workload.builder import SGD_FLOPS_PER_PARAM
from moesim.workload.config import Activation
from moesim.workload.ops import Axis, Op, OpKind, Phase, Role

Kernel = Callable[[], object]

_COMPUTE_DTYPE = {DType.FP32: torch.float32, DType.TF32: torch.float32, DType.FP16: torch.float16,
                  DType.BF16: torch.bfloat16, DType.FP8: torch.bfloat16}  # no portable FP8 math: BF16
_WIRE_DTYPE = {1: torch.uint8, 2: torch.float16, 4: torch.float32}       # by storage bytes per element
_ACTIVATION_BY_FLOPS = {activation_flops(a): a for a in Activation}
_LR, _MOMENTUM, _BETA2, _EPS = 1e-3, 0.9, 0.999, 1e-8


@dataclass(slots=True)
class TensorPool:
    """Where kernels get their tensors: random data on ``device``, shared by (slot, shape, dtype).

    ``dtype`` is the compute dtype; ``wire_dtype`` the all-to-all payload (the training format's
    storage size). Owned by one execution; the seeded generator makes the data reproducible. On the
    ``meta`` device tensors have shapes but no storage: kernels check shapes without running.
    """

    device: torch.device
    dtype: torch.dtype
    wire_dtype: torch.dtype
    seed: int = 0
    _tensors: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def for_training(cls, dtype: DType, device: torch.device, seed: int = 0) -> TensorPool:
        return cls(device, _COMPUTE_DTYPE[dtype], _WIRE_DTYPE[dtype.bytes], seed)

    def get(self, slot: str, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A tensor of ``shape`` (standard-normal floats, zeros otherwise), shared by (slot, shape, dtype)."""
        chosen = dtype or self.dtype

        def fill(generator: torch.Generator) -> torch.Tensor:
            return torch.randn(shape, generator=generator) if chosen.is_floating_point else torch.zeros(shape)

        return self._cached((slot, shape, chosen), fill)

    def indices(self, slot: str, length: int, high: int) -> torch.Tensor:
        """``length`` int64 indices in ``[0, high)``, shared by (slot, length, high)."""
        return self._cached((f"{slot}/{high}", (length,), torch.int64),
                            lambda generator: torch.randint(0, max(high, 1), (length,), generator=generator))

    def _cached(self, key: tuple[str, tuple[int, ...], torch.dtype],
                fill: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
        if key not in self._tensors:
            _, shape, dtype = key
            if self.device.type == "meta":
                self._tensors[key] = torch.empty(shape, dtype=dtype, device=self.device)
            else:
                generator = torch.Generator().manual_seed(self.seed + len(self._tensors))
                self._tensors[key] = fill(generator).to(self.device, dtype)
        return self._tensors[key]


def share_of(op: Op, task: Task, rank: int) -> float:
    """The part of the op's work ``task`` does on ``rank``: what the engine's accounting charges."""
    scale = op.rank_scale[rank] if op.rank_scale is not None else 1.0
    return task.fraction_on(rank) * scale


def scaled(size: int, share: float) -> int:
    """``size * share`` rounded half up (never negative)."""
    return max(0, int(size * share + 0.5))


# --- compute kernels -------------------------------------------------------------------------------

Builder = Callable[[Op, float, TensorPool], Kernel]


def compute_kernel(op: Op, task: Task, rank: int, pool: TensorPool) -> Kernel:
    """The kernel of compute ``task`` (a part of ``op``) on ``rank``; unknown (kind, phase) raise KeyError."""
    if op.kind is OpKind.ATTENTION and task.axis is Axis.SEQUENCE:
        assert op.phase is Phase.FORWARD, "only forward attention is cut along the sequence"
        return _attention_rows(op, share_of(op, task, rank), pool)
    return KERNELS[op.kind, op.phase](op, share_of(op, task, rank), pool)


def _matmul(op: Op, share: float, pool: TensorPool) -> Kernel:
    dims = op.dims
    token_dim = "k" if op.phase is Phase.BACKWARD_WEIGHT else "m"
    sizes = {name: dims[name] for name in ("m", "n", "k")}
    sizes[token_dim] = scaled(sizes[token_dim], share)
    return _gemm(pool, dims.get("batch", 1), sizes["m"], sizes["k"], sizes["n"])


def _gemm(pool: TensorPool, batch: int, m: int, k: int, n: int) -> Kernel:
    lead = (batch,) if batch > 1 else ()
    a, b = pool.get("gemm.a", *lead, m, k), pool.get("gemm.b", *lead, k, n)
    out = pool.get("gemm.out", *lead, m, n)
    return lambda: torch.matmul(a, b, out=out)


def _attention(op: Op, share: float, pool: TensorPool) -> Kernel:
    d = op.dims
    batch, heads, kv_heads = scaled(d["b"], share), d["heads"], d.get("kv_heads", d["heads"])
    q = pool.get("attn.q", batch, heads, d["s"], d["head_dim"])
    k = pool.get("attn.k", batch, kv_heads, d["s"], d["head_dim"])
    v = pool.get("attn.v", batch, kv_heads, d["s"], d.get("v_head_dim", d["head_dim"]))
    grouped, causal = kv_heads != heads, bool(d.get("causal"))
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=grouped)


def _attention_rows(op: Op, share: float, pool: TensorPool) -> Kernel:
    """A part of a causal attention cut along the sequence: its share of the query rows against every key
    (the same FLOPs as the causal span it stands for, whose keys are those of its span and the earlier ones)."""
    d = op.dims
    heads, kv_heads, seq = d["heads"], d.get("kv_heads", d["heads"]), d["s"]
    q = pool.get("attn.q", d["b"], heads, scaled(seq, share), d["head_dim"])
    k = pool.get("attn.k", d["b"], kv_heads, seq, d["head_dim"])
    v = pool.get("attn.v", d["b"], kv_heads, seq, d.get("v_head_dim", d["head_dim"]))
    grouped = kv_heads != heads
    return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=grouped)


def _layernorm(op: Op, share: float, pool: TensorPool) -> Kernel:
    tokens, hidden = scaled(op.dims["tokens"], share), op.dims["hidden"]
    x, gamma, beta = pool.get("ln.x", tokens, hidden), pool.get("ln.w", hidden), pool.get("ln.b", hidden)
    return lambda: F.layer_norm(x, (hidden,), gamma, beta)


def _layernorm_dw(op: Op, share: float, pool: TensorPool) -> Kernel:
    tokens, hidden = scaled(op.dims["tokens"], share), op.dims["hidden"]
    grad, normed = pool.get("ln.g", tokens, hidden), pool.get("ln.x", tokens, hidden)
    return lambda: (torch.sum(grad * normed, dim=0), torch.sum(grad, dim=0))


def _elementwise(op: Op, share: float, pool: TensorPool) -> Kernel:
    numel = scaled(op.dims["numel"], share)
    if op.role is not None and op.role.is_residual:
        a, b, out = pool.get("ew.a", numel), pool.get("ew.b", numel), pool.get("ew.out", numel)
        return lambda: torch.add(a, b, out=out)
    per_element = op.flops / max(op.dims["numel"], 1) / (2 if op.phase is Phase.BACKWARD_INPUT else 1)
    nearest = min(_ACTIVATION_BY_FLOPS, key=lambda flops: abs(flops - per_element))
    activation = _ACTIVATION_BY_FLOPS[nearest]
    if activation.gated:
        gate, up = pool.get("ew.a", numel), pool.get("ew.b", numel)
        return lambda: F.silu(gate) * up
    x = pool.get("ew.a", numel)
    if activation is Activation.RELU:
        return lambda: F.relu(x)
    return lambda: F.gelu(x, approximate="tanh")


def _softmax(op: Op, share: float, pool: TensorPool) -> Kernel:
    x = pool.get("softmax.x", scaled(op.dims["rows"], share), op.dims["cols"])
    return lambda: torch.softmax(x, dim=-1)


def _router(op: Op, share: float, pool: TensorPool) -> Kernel:
    tokens, experts, hidden = scaled(op.dims["tokens"], share), op.dims["experts"], op.dims["hidden"]
    top_k = min(op.dims["top_k"], experts)
    x, gate = pool.get("gemm.a", tokens, hidden), pool.get("gemm.b", hidden, experts)
    logits = pool.get("gemm.out", tokens, experts)

    def run() -> object:
        torch.matmul(x, gate, out=logits)
        return torch.topk(torch.softmax(logits, dim=-1), top_k, dim=-1)

    return run


def _router_backward(op: Op, share: float, pool: TensorPool) -> Kernel:
    tokens, experts, hidden = scaled(op.dims["tokens"], share), op.dims["experts"], op.dims["hidden"]
    if op.phase is Phase.BACKWARD_WEIGHT:
        return _gemm(pool, 1, hidden, tokens, experts)
    return _gemm(pool, 1, tokens, experts, hidden)


def _permute(op: Op, share: float, pool: TensorPool) -> Kernel:
    tokens, rows, hidden = scaled(op.dims["tokens"], share), scaled(op.dims["rows"], share), op.dims["hidden"]
    tokens = max(tokens, 1)
    index = pool.indices("permute.index", rows, tokens)
    if op.role is Role.UNPERMUTE:
        expert_rows, gate = pool.get("permute.rows", rows, hidden), pool.get("permute.gate", rows, 1)
        out = pool.get("permute.tokens", tokens, hidden)
        return lambda: out.index_add_(0, index, expert_rows * gate)
    source, slots = pool.get("permute.tokens", tokens, hidden), pool.get("permute.rows", rows, hidden)
    return lambda: torch.index_select(source, 0, index, out=slots)


def _embedding(op: Op, share: float, pool: TensorPool) -> Kernel:
    tokens, hidden, vocab = scaled(op.dims["tokens"], share), op.dims["hidden"], op.dims["vocab"]
    ids, table = pool.indices("embed.ids", tokens, vocab), pool.get("embed.table", vocab, hidden)
    if op.flops <= 0:
        return lambda: F.embedding(ids, table)
    positions = pool.get("embed.positions", tokens, hidden)
    return lambda: F.embedding(ids, table) + positions


def _embedding_dw(op: Op, share: float, pool: TensorPool) -> Kernel:
    tokens, hidden, vocab = scaled(op.dims["tokens"], share), op.dims["hidden"], op.dims["vocab"]
    ids, grad = pool.indices("embed.ids", tokens, vocab), pool.get("embed.grad", tokens, hidden)
    table_grad = pool.get("embed.table_grad", vocab, hidden)
    filled = table_grad[:scaled(vocab, share)]  # the fill, charged (like every size here) by the share

    def run() -> torch.Tensor:
        filled.zero_()
        return table_grad.index_add_(0, ids, grad)

    return run


def _accumulating(builder: Builder) -> Builder:
    """A dW op that also sums ``dims["accumulate"]`` elements of other uses' gradients into its own: the
    op's kernel, then one add of that many elements."""

    def build(op: Op, share: float, pool: TensorPool) -> Kernel:
        once = builder(op, share, pool)
        count = scaled(op.dims.get("accumulate", 0), share)
        if not op.dims.get("accumulate"):
            return once
        total, other = pool.get("accumulate.total", count), pool.get("accumulate.other", count)
        return lambda: (once(), total.add_(other))

    return build


def _copy(op: Op, share: float, pool: TensorPool) -> Kernel:
    """A bucket's gradients into its flat buffer, scaled (``copy_in``: DDP's ``mul`` into the bucket), or the
    buffer back into the gradients (``copy_out``)."""
    numel = scaled(op.dims["numel"], share)
    grads, bucket = pool.get("copy.grads", numel), pool.get("copy.bucket", numel)
    if op.flops > 0:
        return lambda: torch.mul(grads, 0.5, out=bucket)
    return lambda: grads.copy_(bucket)


def _loss(op: Op, share: float, pool: TensorPool) -> Kernel:
    tokens, vocab = scaled(op.dims["tokens"], share), op.dims["vocab"]
    logits, targets = pool.get("loss.logits", tokens, vocab), pool.indices("loss.targets", tokens, vocab)
    return lambda: F.cross_entropy(logits, targets)


def _optimizer(op: Op, share: float, pool: TensorPool) -> Kernel:
    params = scaled(op.dims["params"], share)
    weight, grad = pool.get("opt.weight", params), pool.get("opt.grad", params)
    momentum = pool.get("opt.m", params)
    if op.flops <= (SGD_FLOPS_PER_PARAM + 0.5) * op.dims["params"]:
        def sgd() -> object:
            momentum.mul_(_MOMENTUM).add_(grad)
            return weight.add_(momentum, alpha=-_LR)

        return sgd
    variance = pool.get("opt.v", params).abs_()

    def adam() -> object:
        momentum.mul_(_MOMENTUM).add_(grad, alpha=1 - _MOMENTUM)
        variance.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        return weight.addcdiv_(momentum, variance.sqrt().add_(_EPS), value=-_LR)

    return adam


def _attention_backward(op: Op, share: float, pool: TensorPool) -> Kernel:
    """dX of attention: the real backward of ``scaled_dot_product_attention`` (dQ, dK, dV by autograd), as a
    training framework runs it; its forward runs once, when the kernel is built."""
    d = op.dims
    batch, heads, kv_heads = scaled(d["b"], share), d["heads"], d.get("kv_heads", d["heads"])
    q = pool.get("attn.q", batch, heads, d["s"], d["head_dim"]).detach().requires_grad_()
    k = pool.get("attn.k", batch, kv_heads, d["s"], d["head_dim"]).detach().requires_grad_()
    v = pool.get("attn.v", batch, kv_heads, d["s"], d.get("v_head_dim", d["head_dim"])).detach().requires_grad_()
    with torch.enable_grad():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=bool(d.get("causal")), enable_gqa=kv_heads != heads)
    grad = pool.get("attn.grad", *out.shape)
    return lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)


def _loss_backward(op: Op, share: float, pool: TensorPool) -> Kernel:
    """dX of the loss: the real backward of ``cross_entropy`` (the logits' gradient, by autograd)."""
    tokens, vocab = scaled(op.dims["tokens"], share), op.dims["vocab"]
    logits = pool.get("loss.logits", tokens, vocab).detach().requires_grad_()
    targets = pool.indices("loss.targets", tokens, vocab)
    with torch.enable_grad():
        loss = F.cross_entropy(logits, targets)
    return lambda: torch.autograd.grad(loss, (logits,), retain_graph=True)


def _twice(builder: Builder) -> Builder:
    """dX costed at 2x the forward FLOPs and bytes: the forward kernel, run twice."""

    def build(op: Op, share: float, pool: TensorPool) -> Kernel:
        once = builder(op, share, pool)
        return lambda: (once(), once())

    return build


_F, _DX, _DW = Phase.FORWARD, Phase.BACKWARD_INPUT, Phase.BACKWARD_WEIGHT

KERNELS: Mapping[tuple[OpKind, Phase], Builder] = MappingProxyType({
    (OpKind.MATMUL, _F): _matmul, (OpKind.MATMUL, _DX): _matmul, (OpKind.MATMUL, _DW): _matmul,
    (OpKind.ATTENTION, _F): _attention, (OpKind.ATTENTION, _DX): _attention_backward,
    (OpKind.LAYERNORM, _F): _layernorm, (OpKind.LAYERNORM, _DX): _twice(_layernorm),
    (OpKind.LAYERNORM, _DW): _layernorm_dw,
    (OpKind.ELEMENTWISE, _F): _elementwise, (OpKind.ELEMENTWISE, _DX): _twice(_elementwise),
    (OpKind.SOFTMAX, _F): _softmax, (OpKind.SOFTMAX, _DX): _twice(_softmax),
    (OpKind.ROUTER, _F): _router, (OpKind.ROUTER, _DX): _router_backward, (OpKind.ROUTER, _DW): _router_backward,
    (OpKind.PERMUTE, _F): _permute, (OpKind.PERMUTE, _DX): _twice(_permute),
    (OpKind.EMBEDDING, _F): _embedding, (OpKind.EMBEDDING, _DW): _accumulating(_embedding_dw),
    (OpKind.LOSS, _F): _loss, (OpKind.LOSS, _DX): _loss_backward,
    (OpKind.OPTIMIZER, Phase.OPTIMIZER): _optimizer,
    (OpKind.COPY, Phase.GRAD_SYNC): _copy,
})
