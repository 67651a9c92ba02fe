"""What the microbenchmark measured: the JSON schema shared by ``validation/microbench.py`` (writes it)
and the fit (reads it). No torch here.

Every sample knows its FLOP and HBM bytes by the conventions of ``moesim.workload.blocks``, so a
sample and an op of the same shape cost the same in the model:

- matmul ``m x k @ k x n``: ``2 m n k`` FLOP; bytes = both inputs + the output.
- elementwise: an out-of-place add ``c = a + b``: 1 FLOP per element; bytes = two reads + one write.
- attention (``scaled_dot_product_attention``, no mask): ``2 B S^2 H (2 d)`` FLOP; bytes = q, k, v read
  and the output written.
- layernorm over ``hidden``: 5 FLOP per element; bytes = one read + one write.
- collectives: ``bytes_per_rank`` is the op's payload (``CommSpec.bytes``): for all-to-all what a rank
  sends, its own chunk included, split evenly over the group; for all-reduce the buffer size.

Times are seconds. Compute samples: each rank's median over the repeats, then the median over ranks.
Collective samples: each rank's median, then the slowest rank (the collective ends when it does).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moesim.dtypes import DType
from moesim.errors import MoesimError
from moesim.overrides import one_line
from moesim.workload.blocks import ADD_FLOPS_PER_ELEMENT, LAYERNORM_FLOPS_PER_ELEMENT
from moesim.workload.ops import OpKind

SCHEMA_VERSION: Final = 1
_COLLECTIVE_KINDS = frozenset({OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE})


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Sweep(StrEnum):
    """The microbenchmark's sweeps; each fit step reads one or two of them."""

    MATMUL = "matmul"
    ELEMENTWISE = "elementwise"
    ATTENTION = "attention"
    LAYERNORM = "layernorm"
    ALL_TO_ALL = "all_to_all"
    ALL_REDUCE = "all_reduce"
    INTERFERENCE = "interference"


class Environment(_Record):
    """What a measurement depends on. ``ranks_per_host`` < ``world_size`` means the job spanned hosts."""

    torch: str
    backend: str
    device: Literal["gpu", "cpu"]
    world_size: int = Field(ge=1)
    ranks_per_host: int = Field(ge=1)
    devices: tuple[str, ...] = ()
    threads_per_rank: int = Field(default=1, ge=1)
    details: dict[str, str | int | float | None] = Field(default_factory=dict)  # python, platform, ...


class _Timed(_Record):
    seconds: float = Field(gt=0)
    rank_seconds: tuple[float, ...] = ()  # each rank's median, for inspection


class MatmulSample(_Timed):
    m: int = Field(ge=1)
    n: int = Field(ge=1)
    k: int = Field(ge=1)
    dtype: DType

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    @property
    def mem_bytes(self) -> float:
        return float(self.m * self.k + self.k * self.n + self.m * self.n) * self.dtype.bytes


class ElementwiseSample(_Timed):
    numel: int = Field(ge=1)
    dtype: DType

    @property
    def flops(self) -> float:
        return float(ADD_FLOPS_PER_ELEMENT * self.numel)

    @property
    def mem_bytes(self) -> float:
        return 3.0 * self.numel * self.dtype.bytes


class AttentionSample(_Timed):
    batch: int = Field(ge=1)
    heads: int = Field(ge=1)
    seq: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    dtype: DType

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.seq**2 * self.heads * (2 * self.head_dim)

    @property
    def mem_bytes(self) -> float:
        return float(self.batch * self.seq * 4 * self.heads * self.head_dim) * self.dtype.bytes


class LayernormSample(_Timed):
    tokens: int = Field(ge=1)
    hidden: int = Field(ge=1)
    dtype: DType

    @property
    def flops(self) -> float:
        return float(LAYERNORM_FLOPS_PER_ELEMENT * self.tokens * self.hidden)

    @property
    def mem_bytes(self) -> float:
        return 2.0 * self.tokens * self.hidden * self.dtype.bytes


class CollectiveSample(_Timed):
    """``world_size // group_size`` groups of consecutive ranks ran the collective at the same time."""

    kind: OpKind
    group_size: int = Field(ge=2)
    bytes_per_rank: float = Field(gt=0)

    @field_validator("kind")
    @classmethod
    def _measured_kind(cls, kind: OpKind) -> OpKind:
        if kind not in _COLLECTIVE_KINDS:
            raise ValueError(f"must be all_to_all or all_reduce, got {kind.value}")
        return kind


class InterferenceSample(_Record):
    """One matmul timed alone and while a collective loop of ``bytes_per_rank`` ran on every rank."""

    m: int = Field(ge=1)
    n: int = Field(ge=1)
    k: int = Field(ge=1)
    dtype: DType
    kind: OpKind
    bytes_per_rank: float = Field(gt=0)
    seconds_alone: float = Field(gt=0)
    seconds_with_comm: float = Field(gt=0)

    @property
    def ratio(self) -> float:
        return self.seconds_with_comm / self.seconds_alone


class Measurements(_Record):
    """Everything one microbenchmark run measured, with the environment it ran in."""

    schema_version: Literal[1] = SCHEMA_VERSION
    measured_at: datetime
    environment: Environment
    warmup: int = Field(ge=0)
    repeats: int = Field(ge=1)
    matmul: tuple[MatmulSample, ...] = ()
    elementwise: tuple[ElementwiseSample, ...] = ()
    attention: tuple[AttentionSample, ...] = ()
    layernorm: tuple[LayernormSample, ...] = ()
    collectives: tuple[CollectiveSample, ...] = ()
    interference: tuple[InterferenceSample, ...] = ()

    def collectives_of(self, kind: OpKind) -> tuple[CollectiveSample, ...]:
        return tuple(s for s in self.collectives if s.kind is kind)


def load_measurements(path: Path) -> Measurements:
    """Read and validate a microbenchmark JSON file; a bad file raises MoesimError naming the field."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise MoesimError(f"measurements: cannot read {str(path)!r} ({err.strerror})") from None
    try:
        return Measurements.model_validate_json(text)
    except ValidationError as err:
        raise MoesimError(one_line(err, prefix=f"{path}: ")) from None
