"""Model, training and workload configuration, validated once, at the boundary.

A ``Workload`` is a ``ModelConfig`` (the network), a ``TrainingConfig`` (how one iteration runs) and a
GPU count, checked together (with what a real run recorded, for a traced workload). Every impossible
combination fails at construction with a pydantic ``ValidationError`` whose first error is located at the
offending field (``training.ep_size``, ...) and says what is allowed; ``moesim.workload.presets`` turns it
into a one-line ``MoesimError``.

Parallelism is expert parallelism (EP) inside data parallelism, as in DeepSpeed-MoE and Tutel: no
tensor or pipeline parallelism. Dense parameters are data-parallel over all GPUs; each expert is
replicated over ``num_gpus / ep_size`` GPUs (its expert-data-parallel group).
"""

from __future__ import annotations

import math
from enum import StrEnum
from functools import cached_property

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from moesim.dtypes import DType
from moesim.workload.recorded import RecordedRun

_SPEC = ConfigDict(frozen=True, extra="forbid")


class Activation(StrEnum):
    GELU = "gelu"
    RELU = "relu"
    SWIGLU = "swiglu"  # silu(x W_gate) * (x W_up): the first projection is twice as wide

    @property
    def gated(self) -> bool:
        return self is Activation.SWIGLU


class AttentionKind(StrEnum):
    STANDARD = "standard"  # MHA, or GQA/MQA when num_kv_heads < num_heads
    MLA = "mla"            # DeepSeek multi-head latent attention (low-rank q and kv projections)


class GateKind(StrEnum):
    SWITCH = "switch"                        # each token picks its top-k on its own (Switch, GShard, Mixtral)
    BATCH_PRIORITIZED = "batch_prioritized"  # BPR: the whole batch is sorted by gate score before capacity


class RoutingKind(StrEnum):
    UNIFORM = "uniform"
    ZIPF = "zipf"


class OptimizerKind(StrEnum):
    SGD_MOMENTUM = "sgd_momentum"
    ADAM = "adam"


class BatchVariant(StrEnum):
    """Which per-GPU batch table a preset uses (Lancet's repo configs and paper text disagree)."""

    REPO = "repo"
    PAPER = "paper"


def invalid(title: str, loc: tuple[str, ...], message: str, value: object) -> ValidationError:
    """A ValidationError located at ``loc`` with exactly ``message`` (no pydantic prefix)."""
    detail = InitErrorDetails(type=PydanticCustomError("moesim", message), loc=loc, input=value)
    return ValidationError.from_exception_data(title, [detail])


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("moesim", message)


def _listing(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


class MLAConfig(BaseModel):
    """DeepSeek MLA projection sizes (HF config names). ``q_lora_rank`` None: q is one h -> H*dqk matmul."""

    model_config = _SPEC

    q_lora_rank: PositiveInt | None = None
    kv_lora_rank: PositiveInt
    qk_nope_head_dim: PositiveInt
    qk_rope_head_dim: PositiveInt
    v_head_dim: PositiveInt


class ModelConfig(BaseModel):
    """The network. Decoder-only unless ``num_decoder_layers`` > 0 (then ``num_layers`` is the encoder).

    Block ``i`` of a stack (index within its encoder or decoder stack) is an MoE block iff
    ``i >= first_k_dense_layers and i % moe_layer_period == moe_layer_offset``; other blocks use a
    dense MLP of width ``ffn_hidden``. Exactly one of ``num_experts`` and ``experts_per_gpu`` is set
    (the Lancet models place 2 experts per GPU, so their expert count follows the GPU count).
    Biases are not modelled.
    """

    model_config = _SPEC

    name: str
    num_layers: PositiveInt
    num_decoder_layers: NonNegativeInt = 0
    hidden: PositiveInt
    num_heads: PositiveInt
    head_dim: PositiveInt | None = Field(default=None, validate_default=True)
    num_kv_heads: PositiveInt | None = Field(default=None, validate_default=True)
    attention: AttentionKind = AttentionKind.STANDARD
    mla: MLAConfig | None = Field(default=None, validate_default=True)
    ffn_hidden: PositiveInt | None = None
    expert_ffn_hidden: PositiveInt
    num_experts: PositiveInt | None = None
    experts_per_gpu: PositiveInt | None = Field(default=None, validate_default=True)
    num_shared_experts: NonNegativeInt = 0
    top_k: PositiveInt
    moe_layer_period: PositiveInt = 1
    moe_layer_offset: NonNegativeInt = 0
    first_k_dense_layers: NonNegativeInt = 0
    activation: Activation = Activation.GELU
    expert_activation: Activation = Activation.GELU
    vocab_size: PositiveInt
    tie_embeddings: bool = False
    learned_positions: NonNegativeInt = 0  # rows of a learned position table (0: rotary / relative)

    @field_validator("head_dim")
    @classmethod
    def _head_dim(cls, value: int | None, info: ValidationInfo) -> int | None:
        hidden, heads = info.data.get("hidden"), info.data.get("num_heads")
        if value is None and hidden is not None and heads is not None and hidden % heads:
            raise _fail(f"num_heads={heads} does not divide hidden={hidden}; set head_dim explicitly")
        return value

    @field_validator("num_kv_heads")
    @classmethod
    def _kv_heads(cls, value: int | None, info: ValidationInfo) -> int | None:
        heads = info.data.get("num_heads")
        if value is not None and heads is not None and heads % value:
            allowed = [d for d in range(1, heads + 1) if heads % d == 0]
            raise _fail(f"{value} does not divide num_heads={heads}; allowed: {_listing(allowed)}")
        return value

    @field_validator("mla")
    @classmethod
    def _mla(cls, value: MLAConfig | None, info: ValidationInfo) -> MLAConfig | None:
        kind = info.data.get("attention")
        if kind is AttentionKind.MLA and value is None:
            raise _fail("required when attention is mla (kv_lora_rank, qk_*_head_dim, v_head_dim, ...)")
        if kind is AttentionKind.STANDARD and value is not None:
            raise _fail("only allowed when attention is mla")
        return value

    @field_validator("experts_per_gpu")
    @classmethod
    def _one_expert_count(cls, value: int | None, info: ValidationInfo) -> int | None:
        if "num_experts" in info.data and (value is None) == (info.data["num_experts"] is None):
            raise _fail("set exactly one of num_experts and experts_per_gpu (set the other to null)")
        return value

    @field_validator("moe_layer_offset")
    @classmethod
    def _offset(cls, value: int, info: ValidationInfo) -> int:
        period = info.data.get("moe_layer_period")
        if period is not None and value >= period:
            raise _fail(f"must be below moe_layer_period={period}; allowed: 0..{period - 1}")
        return value

    @model_validator(mode="after")
    def _dense_width(self) -> ModelConfig:
        if self.ffn_hidden is None and any(not self.is_moe_block(i) for i in range(self.total_layers)):
            raise invalid("ModelConfig", ("ffn_hidden",), "required: some blocks are dense", None)
        if self.num_experts is not None and self.top_k > self.num_experts:
            experts = self.num_experts
            raise invalid("ModelConfig", ("top_k",),
                          f"{self.top_k} exceeds num_experts={experts}; allowed: 1..{experts}", self.top_k)
        return self

    @property
    def total_layers(self) -> int:
        return self.num_layers + self.num_decoder_layers

    @property
    def encoder_decoder(self) -> bool:
        return self.num_decoder_layers > 0

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width (MLA: nope + rope parts)."""
        if self.mla is not None:
            return self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim
        return self.head_dim if self.head_dim is not None else self.hidden // self.num_heads

    @property
    def v_head_dim(self) -> int:
        if self.mla is not None:
            return self.mla.v_head_dim
        return self.qk_head_dim

    def is_decoder_block(self, layer: int) -> bool:
        """Whether global block ``layer`` belongs to the decoder of an encoder-decoder model."""
        return self.encoder_decoder and layer >= self.num_layers

    def is_moe_block(self, layer: int) -> bool:
        """Whether global block ``layer`` (0-based over encoder then decoder) is an MoE block."""
        index = layer - self.num_layers if self.is_decoder_block(layer) else layer
        return index >= self.first_k_dense_layers and index % self.moe_layer_period == self.moe_layer_offset

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.total_layers) if self.is_moe_block(i))


class RoutingConfig(BaseModel):
    """How tokens pick experts: ``uniform``, or Zipf skew (popularity ~ 1/rank**alpha) drawn from ``seed``."""

    model_config = _SPEC

    kind: RoutingKind = RoutingKind.UNIFORM
    alpha: NonNegativeFloat = 1.0
    seed: int = 0


class TrainingConfig(BaseModel):
    """One training iteration: per-GPU batch (sequences), sequence length, number format, parallelism, gate.

    ``batch_per_gpu_by_gpu[variant][gpu]`` holds per-GPU-preset batch sizes; ``batch_for`` resolves
    one (the preset loader does, unless the batch is set explicitly). ``capacity_factor`` None means
    dropless. ``ddp_bucket_view`` is DDP's ``gradient_as_bucket_view``: with it, no copy of the reduced
    gradients out of the buckets (``moesim.workload.buckets``). ``ep_size`` None picks the largest size
    dividing both the expert and the GPU count; ``dp_size``, when given, must equal the GPU count (no
    tensor or pipeline parallelism).
    """

    model_config = _SPEC

    batch_per_gpu: PositiveInt = 1
    batch_variant: BatchVariant = BatchVariant.REPO
    batch_per_gpu_by_gpu: dict[BatchVariant, dict[str, PositiveInt]] = Field(default_factory=dict)
    seq_len: PositiveInt
    dtype: DType = DType.BF16
    ep_size: PositiveInt | None = None
    dp_size: PositiveInt | None = None
    gate: GateKind = GateKind.SWITCH
    capacity_factor: PositiveFloat | None = None
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    grad_bucket_mb: PositiveFloat = 25.0  # torch DDP's bucket_cap_mb default
    ddp_bucket_view: bool = False         # DDP's gradient_as_bucket_view (its default: gradients copied)
    optimizer: OptimizerKind = OptimizerKind.ADAM

    def batch_for(self, gpu: str) -> int:
        """Batch for GPU preset ``gpu``: this variant's table, else the repo table, else ``batch_per_gpu``."""
        for variant in (self.batch_variant, BatchVariant.REPO):
            table = self.batch_per_gpu_by_gpu.get(variant, {})
            if gpu in table:
                return table[gpu]
        return self.batch_per_gpu


class Workload(BaseModel):
    """Model + training + GPU count, validated together; derived sizes and process groups.

    Ranks form ``num_gpus / ep_size`` contiguous EP groups (rank r is in group r // ep_size); expert e
    lives at position e // experts_per_rank of every group. Expert-data-parallel groups gather one
    position of every EP group: {p, p + ep, p + 2 ep, ...}.
    """

    model_config = _SPEC

    model: ModelConfig
    training: TrainingConfig
    num_gpus: PositiveInt
    preset: str | None = None
    recorded: RecordedRun | None = None  # a traced workload's run (moesim.workload.traced)

    @model_validator(mode="after")
    def _together(self) -> Workload:
        experts, gpus = self.num_experts, self.num_gpus
        top_k = self.model.top_k
        if top_k > experts:
            raise invalid("Workload", ("model", "top_k"),
                          f"{top_k} exceeds num_experts={experts}; allowed: 1..{experts}", top_k)
        allowed = [d for d in range(1, min(experts, gpus) + 1) if experts % d == 0 and gpus % d == 0]
        ep = self.training.ep_size
        if ep is not None and experts % ep:
            raise invalid("Workload", ("training", "ep_size"), f"{ep} does not divide num_experts={experts}; "
                          f"allowed with {gpus} GPUs: {_listing(allowed)}", ep)
        if ep is not None and gpus % ep:
            raise invalid("Workload", ("training", "ep_size"),
                          f"{ep} does not divide num_gpus={gpus}; allowed: {_listing(allowed)}", ep)
        dp = self.training.dp_size
        if dp is not None and dp != gpus:
            raise invalid("Workload", ("training", "dp_size"),
                          f"{dp} must equal num_gpus={gpus} (no tensor or pipeline parallelism)", dp)
        if self.recorded is not None:
            wrong = self.recorded.mismatch(num_gpus=gpus, num_experts=experts, moe_layers=self.model.moe_layers,
                                           assignments=self.tokens_per_gpu * top_k, capacity=self.capacity)
            if wrong is not None:
                raise invalid("Workload", ("recorded", *(str(part) for part in wrong[0])), wrong[1], None)
        return self

    @property
    def num_experts(self) -> int:
        if self.model.num_experts is not None:
            return self.model.num_experts
        assert self.model.experts_per_gpu is not None
        return self.model.experts_per_gpu * self.num_gpus

    @property
    def ep_size(self) -> int:
        if self.training.ep_size is not None:
            return self.training.ep_size
        return math.gcd(self.num_experts, self.num_gpus)

    @property
    def dp_size(self) -> int:
        """Data-parallel size of the dense parameters: every GPU."""
        return self.num_gpus

    @property
    def expert_dp_size(self) -> int:
        return self.num_gpus // self.ep_size

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.ep_size

    @property
    def tokens_per_gpu(self) -> int:
        return self.training.batch_per_gpu * self.training.seq_len

    @property
    def capacity(self) -> int | None:
        """Token slots per expert per source rank, ceil(cf * T * top_k / E); None when dropless."""
        factor = self.training.capacity_factor
        if factor is None:
            return None
        return math.ceil(factor * self.tokens_per_gpu * self.model.top_k / self.num_experts)

    @cached_property
    def ep_groups(self) -> tuple[tuple[int, ...], ...]:
        ep = self.ep_size
        return tuple(tuple(range(g * ep, (g + 1) * ep)) for g in range(self.num_gpus // ep))

    @cached_property
    def expert_dp_groups(self) -> tuple[tuple[int, ...], ...]:
        ep = self.ep_size
        return tuple(tuple(range(p, self.num_gpus, ep)) for p in range(ep))

    @cached_property
    def dense_dp_group(self) -> tuple[int, ...]:
        return tuple(range(self.num_gpus))

    def expert_position(self, expert: int) -> int:
        """Member index, inside every EP group, of the rank that hosts ``expert``."""
        return expert // self.experts_per_rank
