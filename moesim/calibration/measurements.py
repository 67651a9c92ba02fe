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
- collectives under compute: the collective sweep's bandwidth-bound cases, timed alone and while a
  matmul loop ran in a second thread of every rank, in alternating blocks (a pair of the same case, so
  their ratio cancels what the cost model gets wrong about the collective alone).

- kernels (the per-kind sweep): an op of a calibration model's graph carries the op's own ``flops`` and
  ``mem_bytes`` (``moesim.workload.builder``'s conventions), run by the harness's own kernel.

Times are seconds. Compute samples: each rank's median over the repeats, then the median over ranks;
every call finds its operands cold (``operand_sets`` independent sets, cycled). Collective samples:
each rank's median, then the slowest rank (the collective ends when it does).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moesim.dtypes import DType
from moesim.errors import MoesimError
from moesim.overrides import one_line
from moesim.workload.blocks import ADD_FLOPS_PER_ELEMENT, LAYERNORM_FLOPS_PER_ELEMENT
from moesim.workload.ops import OpKind, Phase

# A file of an older schema lacks the records added since (docs/calibration-notes.md, "Measurement file
# schema") and stays valid: those records default to empty or None
SCHEMA_VERSION: Final = 4
_COLLECTIVE_KINDS = frozenset({OpKind.ALL_TO_ALL, OpKind.ALL_REDUCE})


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Sweep(StrEnum):
    """The microbenchmark's sweeps; each fit step reads one or two of them."""

    MATMUL = "matmul"
    ELEMENTWISE = "elementwise"
    ATTENTION = "attention"
    LAYERNORM = "layernorm"
    KERNEL_COPY = "kernel.copy"
    KERNEL_ELEMENTWISE = "kernel.elementwise"
    KERNEL_EMBEDDING = "kernel.embedding"
    KERNEL_LAYERNORM = "kernel.layernorm"
    KERNEL_LOSS = "kernel.loss"
    KERNEL_OPTIMIZER = "kernel.optimizer"
    KERNEL_PERMUTE = "kernel.permute"
    KERNEL_ROUTER = "kernel.router"
    KERNEL_SOFTMAX = "kernel.softmax"
    TASK_OVERHEAD = "task_overhead"
    STREAM_HANDOFF = "stream_handoff"
    ALL_TO_ALL = "all_to_all"
    ALL_REDUCE = "all_reduce"
    INTERFERENCE = "interference"
    COMM_UNDER_COMPUTE = "comm_under_compute"


# The memory-bound kinds, each with its own efficiency (``CostParams.kind_efficiency``) fitted from its
# own part of the kernel sweep. Kernel samples of matmul and attention join those kinds' sweeps.
KIND_SWEEPS: Final[Mapping[OpKind, Sweep]] = MappingProxyType({
    OpKind.ELEMENTWISE: Sweep.KERNEL_ELEMENTWISE, OpKind.EMBEDDING: Sweep.KERNEL_EMBEDDING,
    OpKind.LAYERNORM: Sweep.KERNEL_LAYERNORM, OpKind.LOSS: Sweep.KERNEL_LOSS,
    OpKind.OPTIMIZER: Sweep.KERNEL_OPTIMIZER, OpKind.PERMUTE: Sweep.KERNEL_PERMUTE,
    OpKind.ROUTER: Sweep.KERNEL_ROUTER, OpKind.SOFTMAX: Sweep.KERNEL_SOFTMAX, OpKind.COPY: Sweep.KERNEL_COPY,
})


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

    @classmethod
    def from_info(cls, info: Mapping[str, Any], *, device: Literal["gpu", "cpu"], ranks_per_host: int) -> Environment:
        """From a rank's description (``validation.dist.environment``): its known keys become fields, its
        other scalar values ``details``."""
        known = {"torch", "backend", "world_size", "devices", "threads_per_rank"}
        details = {key: value for key, value in info.items()
                   if key not in known and (value is None or isinstance(value, str | int | float))}
        return cls(torch=str(info["torch"]), backend=str(info["backend"]), device=device,
                   world_size=int(info["world_size"]), ranks_per_host=ranks_per_host,
                   devices=tuple(str(d) for d in info.get("devices", ())),
                   threads_per_rank=int(info.get("threads_per_rank", 1)), details=details)


class _Timed(_Record):
    seconds: float = Field(gt=0)
    rank_seconds: tuple[float, ...] = ()  # each rank's median (a collective's: mean), for inspection


class _ComputeTimed(_Timed):
    operand_sets: int = Field(default=1, ge=1)  # independent operand sets the timed calls cycled through


class MatmulSample(_ComputeTimed):
    m: int = Field(ge=1)
    n: int = Field(ge=1)
    k: int = Field(ge=1)
    dtype: DType
    kind: ClassVar[OpKind] = OpKind.MATMUL

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k

    @property
    def mem_bytes(self) -> float:
        return float(self.m * self.k + self.k * self.n + self.m * self.n) * self.dtype.bytes


class ElementwiseSample(_ComputeTimed):
    numel: int = Field(ge=1)
    dtype: DType
    kind: ClassVar[OpKind] = OpKind.ELEMENTWISE

    @property
    def flops(self) -> float:
        return float(ADD_FLOPS_PER_ELEMENT * self.numel)

    @property
    def mem_bytes(self) -> float:
        return 3.0 * self.numel * self.dtype.bytes


class AttentionSample(_ComputeTimed):
    batch: int = Field(ge=1)
    heads: int = Field(ge=1)
    seq: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    dtype: DType
    kind: ClassVar[OpKind] = OpKind.ATTENTION

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.seq**2 * self.heads * (2 * self.head_dim)

    @property
    def mem_bytes(self) -> float:
        return float(self.batch * self.seq * 4 * self.heads * self.head_dim) * self.dtype.bytes


class LayernormSample(_ComputeTimed):
    tokens: int = Field(ge=1)
    hidden: int = Field(ge=1)
    dtype: DType
    kind: ClassVar[OpKind] = OpKind.LAYERNORM

    @property
    def flops(self) -> float:
        return float(LAYERNORM_FLOPS_PER_ELEMENT * self.tokens * self.hidden)

    @property
    def mem_bytes(self) -> float:
        return 2.0 * self.tokens * self.hidden * self.dtype.bytes


class KernelSample(_ComputeTimed):
    """One compute op of a calibration model's graph (``moesim.calibration.sweeps``), timed as the harness
    runs it (``validation/kernels.py``). ``flops`` and ``mem_bytes`` are the op's own, as the builder
    counts them, so the cost model sees exactly what it would see for that op in a plan."""

    model: str
    name: str                     # the op's name in that model's graph, e.g. "L0.expert_act.dx"
    kind: OpKind
    phase: Phase
    dims: dict[str, int] = Field(default_factory=dict)
    flops: float = Field(ge=0)
    mem_bytes: float = Field(ge=0)
    dtype: DType

    @field_validator("kind")
    @classmethod
    def _compute_kind(cls, kind: OpKind) -> OpKind:
        if kind.is_collective:
            raise ValueError(f"must be a compute kind, got {kind.value}")
        return kind


class TaskOverheadSample(_Record):
    """What the harness's executor adds per task: ``tasks`` one-element adds chained on the compute stream
    of a synthetic plan, run by ``validation.executor.execute_plan`` (``seconds_per_task``: the median
    iteration over the tasks), and the same kernel timed alone as the sweeps time kernels
    (``kernel_seconds``). The difference is the executor's bookkeeping (dependency waits, clock reads,
    events), which every task of a measured plan pays and no sweep sample contains."""

    tasks: int = Field(ge=1)
    seconds_per_task: float = Field(gt=0)
    kernel_seconds: float = Field(gt=0)
    flops: float = Field(ge=0)
    mem_bytes: float = Field(ge=0)
    dtype: DType

    @property
    def bookkeeping_seconds(self) -> float:
        return max(0.0, self.seconds_per_task - self.kernel_seconds)


class StreamHandoffSample(_Record):
    """The executor's hand-over between streams: ``rounds`` of add -> all-to-all -> add on two streams
    (``sweeps.handoff_plan``), run like a measured plan. ``seconds``: the mean, over every task that was
    woken by the other stream and every rank, of its start minus its dependency's end, in the median
    iteration (a collective starts at its rendezvous, as measured plans place it)."""

    rounds: int = Field(ge=1)
    seconds: float = Field(ge=0)


class WokenUnderCommSample(_Record):
    """A compute task woken while a collective of its rank runs (``sweeps.woken_plan``: ``rounds`` of add ->
    small all-to-all -> an all-to-all of ``busy_bytes`` per rank right behind it, and an add woken by the
    small one), run like a measured plan, median iteration, every rank: ``seconds`` the mean of the woken
    add's start minus the small all-to-all's end, ``collective_seconds`` the mean of the busy all-to-all's
    end minus the same."""

    rounds: int = Field(ge=1)
    busy_bytes: float = Field(gt=0)
    seconds: float = Field(ge=0)
    collective_seconds: float = Field(ge=0)


class RendezvousSample(_Record):
    """``sweeps.skew_plan`` with ``segment`` matmuls between collectives, run like a measured plan, median
    iteration: ``segment_seconds`` the mean compute per segment, ``wait_seconds`` the mean from a segment's
    end to its collective's rendezvous plus the collective's mean time, over every round and rank."""

    segment: int = Field(ge=1)
    segment_seconds: float = Field(ge=0)
    wait_seconds: float = Field(ge=0)


def _measured_collective(kind: OpKind) -> OpKind:
    if kind not in _COLLECTIVE_KINDS:
        raise ValueError(f"must be all_to_all or all_reduce, got {kind.value}")
    return kind


class CollectiveSample(_Timed):
    """``world_size // group_size`` groups of consecutive ranks ran the collective at the same time, each
    call issued from a second thread as the executor issues it, the calling thread waiting. Seconds: each
    rank's mean (``rank_seconds``: those means), then the slowest rank."""

    kind: OpKind
    group_size: int = Field(ge=2)
    bytes_per_rank: float = Field(gt=0)

    _measured_kind = field_validator("kind")(_measured_collective)


class CommUnderComputeSample(_Record):
    """One case of the collective sweep (same groups: ``world_size // group_size`` groups of consecutive
    ranks at once), issued from a second thread as the executor's communication streams issue them, timed
    alone and while every rank's calling thread ran an ``m x k @ k x n`` matmul loop until it returned, in
    alternating blocks. Seconds: each rank's mean (a wait for a core is all or nothing, and an iteration
    sums many), then the slowest rank, for both."""

    kind: OpKind
    group_size: int = Field(ge=2)
    bytes_per_rank: float = Field(gt=0)
    m: int = Field(ge=1)
    n: int = Field(ge=1)
    k: int = Field(ge=1)
    dtype: DType
    seconds_alone: float = Field(gt=0)
    seconds_with_compute: float = Field(gt=0)
    rank_seconds_alone: tuple[float, ...] = ()         # each rank's mean
    rank_seconds_with_compute: tuple[float, ...] = ()
    # One matmul of the loop alone, the ranks' mean, timed in the same alternating blocks as the loop (in
    # files before schema 4: once, before the sweep, the slowest rank's median). None in older files.
    kernel_seconds: float | None = Field(default=None, gt=0)
    # The calling thread's compute under it, means over calls and ranks: how long its loop ran per call
    # (from the call's start to the loop's last kernel) and how many kernels that was: the compute
    # slowdown while a collective is in flight, as the executor runs them. None in files from before.
    compute_window_seconds: float | None = Field(default=None, gt=0)
    compute_kernels: float | None = Field(default=None, ge=0)

    _measured_kind = field_validator("kind")(_measured_collective)

    @property
    def ratio(self) -> float:
        return self.seconds_with_compute / self.seconds_alone

    @property
    def mean_seconds_alone(self) -> float:
        """The ranks' mean time alone; the slowest rank's where the per-rank times were not kept."""
        per_rank = self.rank_seconds_alone
        return sum(per_rank) / len(per_rank) if per_rank else self.seconds_alone

    @property
    def stolen_compute_seconds(self) -> float | None:
        """What the collective took from the calling thread's loop: its window less its kernels' time
        alone. None in files that did not keep the loop."""
        if self.compute_window_seconds is None or self.compute_kernels is None or self.kernel_seconds is None:
            return None
        return self.compute_window_seconds - self.compute_kernels * self.kernel_seconds


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

    schema_version: Literal[1, 2, 3, 4] = SCHEMA_VERSION
    measured_at: datetime
    environment: Environment
    warmup: int = Field(ge=0)
    repeats: int = Field(ge=1)
    matmul: tuple[MatmulSample, ...] = ()
    elementwise: tuple[ElementwiseSample, ...] = ()
    attention: tuple[AttentionSample, ...] = ()
    layernorm: tuple[LayernormSample, ...] = ()
    kernels: tuple[KernelSample, ...] = ()
    task_overhead: TaskOverheadSample | None = None
    stream_handoff: StreamHandoffSample | None = None
    woken_under_comm: WokenUnderCommSample | None = None
    rendezvous: tuple[RendezvousSample, ...] = ()
    collectives: tuple[CollectiveSample, ...] = ()
    interference: tuple[InterferenceSample, ...] = ()
    comm_under_compute: tuple[CommUnderComputeSample, ...] = ()

    def collectives_of(self, kind: OpKind) -> tuple[CollectiveSample, ...]:
        return tuple(s for s in self.collectives if s.kind is kind)

    def kernels_of(self, kind: OpKind) -> tuple[KernelSample, ...]:
        return tuple(s for s in self.kernels if s.kind is kind)

    @property
    def bookkeeping_seconds(self) -> float:
        """The executor's per-task bookkeeping, 0 when the run did not measure it."""
        return 0.0 if self.task_overhead is None else self.task_overhead.bookkeeping_seconds


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
