"""What the microbenchmark measures: the sizes of each sweep, and the kernel cases of the per-kind sweep.

Torch-free, so the plan of a run can be inspected and tested without running it. The per-kind kernel
sweep times the harness's own kernels on ops that ``moesim.workload.builder`` makes for the
CALIBRATION MODELS below: small MoE transformers defined here, in code, spanning hidden 96-1024,
256-4096 tokens, vocabularies of 1k-8k, top-1 and top-2, GELU / ReLU / SwiGLU, SGD and Adam. Each
sample thus carries the builder's own FLOP and byte conventions. They are deliberately not the
validation workloads (``workloads/tiny-moe-*.yaml``): a fit that saw those would be judged on its data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from moesim import units
from moesim.dtypes import DType
from moesim.plan import ExecutionPlan, StreamKind, Task
from moesim.workload.builder import build_graph
from moesim.workload.config import Activation, ModelConfig, OptimizerKind, TrainingConfig, Workload
from moesim.workload.ops import CommSpec, Op, OpGraph, OpKind, Phase, Role

CACHE_MULTIPLE = 2             # a case's operand sets together span this many last-level caches
MAX_OPERAND_SETS = 256         # tiny ops: enough to leave L1 / L2 behind; more would only cost set-up
MAX_CASE_BYTES = 1 * units.GIB  # operand memory per rank and case; a set above half of it is used alone
DEFAULT_CACHE_BYTES = 32 * units.MIB  # when the OS does not say: this machine's L3

# Ops above these FLOPs are left out of the kernel sweep: the matmul and attention sweeps already
# cover large sizes, and one such op would take longer than every memory-bound kernel together.
_CPU_FLOP_CAP_QUICK, _CPU_FLOP_CAP = 0.3e9, 1.2e9  # 3 and 12 ms at a core's ~100 GFLOP/s
_GPU_FLOP_CAP = 2e12


def operand_sets(set_bytes: float, cache_bytes: int) -> int:
    """How many independent operand sets of ``set_bytes`` a compute case cycles through so that no call
    finds its operands in a last-level cache of ``cache_bytes``: together at least ``CACHE_MULTIPLE``
    caches, at least 2, at most ``MAX_OPERAND_SETS``, and within ``MAX_CASE_BYTES`` (one set when two
    would not fit: a set that big outgrows the cache by itself)."""
    wanted = max(2, math.ceil(CACHE_MULTIPLE * cache_bytes / max(set_bytes, 1.0)))
    fitting = int(MAX_CASE_BYTES // max(set_bytes, 1.0))
    return max(1, min(wanted, MAX_OPERAND_SETS, fitting))


def host_cache_bytes() -> int:
    """The host's last-level cache (L3) as the OS reports it, else ``DEFAULT_CACHE_BYTES``: whole, not a
    share (the ranks on a host share it but do not run their cases in lockstep)."""
    try:
        reported = os.sysconf("SC_LEVEL3_CACHE_SIZE")
    except (ValueError, OSError):
        reported = 0
    return reported if reported > 0 else DEFAULT_CACHE_BYTES


@dataclass(frozen=True)
class Sizes:
    """What one run measures."""

    matmul: tuple[tuple[int, int, int], ...]
    elementwise: tuple[int, ...]
    attention: tuple[tuple[int, int, int, int], ...]   # batch, heads, seq, head_dim
    layernorm: tuple[tuple[int, int], ...]             # tokens, hidden
    collective_bytes: tuple[int, ...]
    interference: tuple[tuple[int, int, int], ...]     # matmul shapes, each under both collectives
    interference_bytes: int
    comm_under_compute_bytes: tuple[int, ...]          # of collective_bytes, also timed under a compute loop
    comm_under_compute_matmuls: tuple[tuple[int, int, int], ...]  # the loops' matmuls, m, n, k: kernel lengths
    warmup: int
    repeats: int
    paired_repeats: int                                # timed calls of each side of an interference pair
    kernel_models: tuple[str, ...]                     # names in CALIBRATION_MODELS
    kernel_flop_cap: float                             # kernel ops above this many FLOPs are skipped
    overhead_tasks: int                                # tasks of the synthetic plan timing the executor
    handoff_rounds: int                                # compute -> collective -> compute rounds of handoff_plan
    woken_bytes: int                                   # per rank, the collective running in woken_plan
    skew_segments: tuple[int, ...]                     # matmuls per compute segment of skew_plan, one run each
    skew_matmul: int                                   # their size (square)


def bandwidth_bound(sizes: tuple[int, ...], floor_bytes: int) -> tuple[int, ...]:
    """The sizes of a collective sweep from ``floor_bytes`` up: where a collective's transfer, the only
    part the reverse interference stretches, dominates its time, so a ratio of two times measures it."""
    return tuple(size for size in sizes if size >= floor_bytes)


def sizes_for(device: str, quick: bool) -> Sizes:
    """Sweeps from launch-bound to rate-bound sizes: a CPU rank's caches, a GPU's HBM and NVLink."""
    models = tuple(CALIBRATION_MODELS)
    if device == "cuda":
        collective_bytes = tuple(4 * 1024 * 4**i for i in range(9 if quick else 10))  # 4 KiB .. 1 GiB
        return Sizes(
            matmul=tuple((s, s, s) for s in (256, 512, 1024, 2048, 4096, 8192))
            + ((16384, 1024, 4096), (1, 8192, 8192)),
            elementwise=(10_000, 100_000, 1_000_000, 10_000_000, 64_000_000) + (() if quick else (256_000_000,)),
            attention=((8, 16, 1024, 64), (4, 16, 2048, 128), (2, 32, 4096, 128)),
            layernorm=((4096, 1024), (16384, 4096), (65536, 8192)),
            collective_bytes=collective_bytes,
            interference=((8192, 8192, 8192),),
            interference_bytes=64 * units.MIB,
            # 64 MiB at NVLink's 150-450 GB/s: 150-450 us, at least 5x NCCL's 10-30 us latency
            # a latency-bound size (the delay a collective waits for the device) and the bandwidth-bound
            # ones (the transfer's slowdown): 64 MiB at NVLink's 150-450 GB/s is at least 5x NCCL's latency
            comm_under_compute_bytes=(collective_bytes[0], *bandwidth_bound(collective_bytes, 64 * units.MIB)),
            comm_under_compute_matmuls=((8192, 8192, 8192),),
            warmup=3 if quick else 5,
            repeats=10 if quick else 30,
            paired_repeats=30 if quick else 60,
            kernel_models=models,
            kernel_flop_cap=_GPU_FLOP_CAP,
            overhead_tasks=512,
            handoff_rounds=64,
            woken_bytes=64 * units.MIB,
            skew_segments=(1, 8, 24),
            skew_matmul=4096,
        )
    collective_bytes = tuple(1024 * 8**i for i in range(6))  # 1 KiB .. 32 MiB, quick too: two sizes >= 4 MiB
    return Sizes(
        matmul=tuple((s, s, s) for s in (32, 64, 128, 256, 384, 512) + (() if quick else (768, 1024)))
        + ((1024, 128, 256),),
        elementwise=(256, 4096, 65_536, 1_048_576, 4_194_304) + (() if quick else (16_777_216,)),
        attention=((1, 4, 128, 64), (1, 8, 256, 64), (2, 8, 256, 64)) + (() if quick else ((1, 8, 512, 64),)),
        layernorm=((64, 256), (512, 1024), (2048, 1024)) + (() if quick else ((4096, 2048),)),
        collective_bytes=collective_bytes,
        interference=((256, 256, 256),) if quick else ((256, 256, 256), (512, 512, 512)),
        interference_bytes=units.MIB,
        # 4 MiB over gloo's ~2 GB/s loopback: 1 ms or more, at least 5x its ~0.2 ms latency. Latency-bound,
        # the middle (and, in a full run, 512 KiB: the validation workloads' all-to-alls carry 0.25-2 MiB)
        # and bandwidth-bound: the work a collective takes from the compute is a fixed part and a part per MiB
        comm_under_compute_bytes=(collective_bytes[0:5:2] if quick
                                  else (*collective_bytes[0:4:2], *collective_bytes[3:5])),
        # loop kernels of ~0.3, 1, 3 and 9 ms on one core of a 2-core host: what a collective takes from
        # them should not depend on their length (docs/calibration-notes.md, "CPU host")
        comm_under_compute_matmuls=((256, 256, 256), (512, 512, 512)) if quick
        else tuple((s, s, s) for s in (256, 384, 512, 768)),
        warmup=2 if quick else 3,
        repeats=5 if quick else 15,
        # gloo's calls have a heavy tail on a CPU host, so a mean needs many calls to settle
        # (docs/calibration-notes.md, "CPU host")
        paired_repeats=15 if quick else 90,
        kernel_models=models[:2] if quick else models,
        kernel_flop_cap=_CPU_FLOP_CAP_QUICK if quick else _CPU_FLOP_CAP,
        overhead_tasks=512,
        handoff_rounds=64,
        woken_bytes=4 * units.MIB,
        # 0.3 to 23 ms of 256^3 matmuls between collectives on one core: the gaps between the validation
        # workloads' collectives run from ~1 ms (chunked all-to-alls) to ~40 ms (dense blocks)
        skew_segments=(1, 8, 24, 64),
        skew_matmul=256,
    )


def group_sizes(world: int) -> list[int]:
    """The collective sweeps' group sizes: powers of two from 2 up to the world size, and the world size."""
    sizes = [g for g in (2**i for i in range(1, world.bit_length())) if world % g == 0 and g < world]
    return sizes + ([world] if world >= 2 else [])


def _model(name: str, *, hidden: int, heads: int, ffn: int, expert_ffn: int, experts_per_gpu: int, top_k: int,
           activation: Activation, expert_activation: Activation, vocab: int, positions: int) -> ModelConfig:
    """Two blocks, the first MoE and the second dense, so one graph holds every kind of block op."""
    return ModelConfig(name=name, num_layers=2, hidden=hidden, num_heads=heads, ffn_hidden=ffn,
                       expert_ffn_hidden=expert_ffn, experts_per_gpu=experts_per_gpu, top_k=top_k,
                       moe_layer_period=2, moe_layer_offset=0, activation=activation,
                       expert_activation=expert_activation, vocab_size=vocab, tie_embeddings=positions == 0,
                       learned_positions=positions)


@dataclass(frozen=True)
class CalibrationModel:
    """A model and the shape of its batch; the training format is the run's."""

    model: ModelConfig
    seq_len: int
    batch: int
    optimizer: OptimizerKind
    capacity_factor: float

    def workload(self, num_gpus: int, dtype: DType) -> Workload:
        training = TrainingConfig(batch_per_gpu=self.batch, seq_len=self.seq_len, dtype=dtype,
                                  capacity_factor=self.capacity_factor, optimizer=self.optimizer)
        return Workload(model=self.model, training=training, num_gpus=num_gpus)


_GELU, _RELU, _SWIGLU = Activation.GELU, Activation.RELU, Activation.SWIGLU
_SGD, _ADAM = OptimizerKind.SGD_MOMENTUM, OptimizerKind.ADAM

# The quick run measures the first two. Sizes are choices spread over the ranges in the module docstring.
CALIBRATION_MODELS: dict[str, CalibrationModel] = {
    # hidden 96, not 128: tiny-moe-b (a validation workload) is 128 wide, and the fit must not see its shapes
    "cal-h96": CalibrationModel(_model("cal-h96", hidden=96, heads=2, ffn=512, expert_ffn=512, experts_per_gpu=2,
                                       top_k=1, activation=_GELU, expert_activation=_RELU, vocab=1024,
                                       positions=512),
                                seq_len=512, batch=1, optimizer=_SGD, capacity_factor=1.0),
    "cal-h512": CalibrationModel(_model("cal-h512", hidden=512, heads=8, ffn=1024, expert_ffn=512, experts_per_gpu=2,
                                        top_k=2, activation=_GELU, expert_activation=_SWIGLU, vocab=8192,
                                        positions=0),
                                 seq_len=128, batch=4, optimizer=_ADAM, capacity_factor=1.25),
    "cal-h192": CalibrationModel(_model("cal-h192", hidden=192, heads=3, ffn=768, expert_ffn=384, experts_per_gpu=4,
                                        top_k=2, activation=_RELU, expert_activation=_GELU, vocab=1536,
                                        positions=1024),
                                 seq_len=1024, batch=4, optimizer=_SGD, capacity_factor=1.0),
    "cal-h1024": CalibrationModel(_model("cal-h1024", hidden=1024, heads=16, ffn=2048, expert_ffn=1024,
                                         experts_per_gpu=1, top_k=1, activation=_SWIGLU, expert_activation=_RELU,
                                         vocab=4096, positions=0),
                                  seq_len=256, batch=1, optimizer=_SGD, capacity_factor=1.0),
}


@dataclass(frozen=True)
class KernelCase:
    """One compute op of a calibration model's graph, as the harness would run it on any rank."""

    model: str
    op: Op


def kernel_cases(sizes: Sizes, num_gpus: int, dtype: DType) -> list[KernelCase]:
    """Every distinct compute op of the chosen calibration models' graphs (distinct: kind, phase, role,
    dims, FLOPs and bytes; repeated blocks give one case), in program order, without those above the
    FLOP cap. ``num_gpus`` is the run's world size, so expert rows per rank are what such a job has."""
    cases: list[KernelCase] = []
    seen: set[tuple[object, ...]] = set()
    for name in sizes.kernel_models:
        graph = build_graph(CALIBRATION_MODELS[name].workload(num_gpus, dtype))
        for op in graph.ops:
            key = _kernel_key(op)
            if op.kind.is_collective or key in seen or op.flops > sizes.kernel_flop_cap:
                continue
            assert op.rank_scale is None, "calibration models route uniformly: every rank runs the same op"
            seen.add(key)
            cases.append(KernelCase(model=name, op=op))
    return cases


def _kernel_key(op: Op) -> tuple[object, ...]:
    """What decides the harness's kernel and the op's cost: ln1, ln2 and ln_f of one shape are one case.
    The role matters only where ``validation/kernels.py`` picks a kernel by it (residual add vs
    activation, permute vs unpermute)."""
    variant = (op.role is not None and op.role.is_residual) if op.kind is OpKind.ELEMENTWISE \
        else op.role is Role.UNPERMUTE
    return op.kind, op.phase, variant, tuple(sorted(op.dims.items())), op.flops, op.mem_bytes


def overhead_plan(tasks: int, world_size: int, dtype: DType) -> ExecutionPlan:
    """``tasks`` one-element residual adds, each depending on the one before, on the compute stream."""
    width = dtype.bytes
    ops = tuple(Op(id=i, name=f"overhead.{i}", role=Role.RESIDUAL, kind=OpKind.ELEMENTWISE, phase=Phase.FORWARD,
                   layer=None, flops=1.0, mem_bytes=3.0 * width, deps=(i - 1,) if i else (), dims={"numel": 1})
                for i in range(tasks))
    graph = OpGraph(ops=ops, num_ranks=world_size, num_layers=0, moe_layers=(), dtype=dtype)
    chain = tuple(Task(id=i, op=i, stream=StreamKind.COMPUTE, deps=(i - 1,) if i else ()) for i in range(tasks))
    return ExecutionPlan(graph=graph, schedule="task-overhead", tasks=chain,
                         streams={StreamKind.COMPUTE: tuple(range(tasks))})


def handoff_plan(rounds: int, world_size: int, dtype: DType) -> ExecutionPlan:
    """``rounds`` of a one-element add on the compute stream, then a one-word-per-peer all-to-all of every
    rank on the comm stream that waits for it, which the next add waits for: every task but the first is
    woken by the other stream, so the gaps between them are the executor's hand-overs."""
    return _two_stream_plan("stream-handoff", rounds, 1, partial(_one_add, dtype), world_size, dtype)


def woken_plan(rounds: int, busy_bytes: int, world_size: int, dtype: DType) -> ExecutionPlan:
    """``rounds`` of: a one-element add; a one-word-per-peer all-to-all that waits for it; right behind that
    on the comm stream an all-to-all of ``busy_bytes`` per rank; and an add woken by the first all-to-all,
    so it starts while the second one runs: its wait beyond the plain hand-over is the compute thread's
    wait for the core the collective holds."""
    tiny = _word_per_peer(world_size, dtype)
    busy = CommSpec(groups=(tuple(range(world_size)),), bytes=float(busy_bytes))
    ops, streams = list[Op](), {StreamKind.COMPUTE: list[int](), StreamKind.COMM: list[int]()}

    def append(kind: StreamKind, op: Op) -> None:
        ops.append(op)
        streams[kind].append(op.id)

    for r in range(rounds):
        first = len(ops)
        append(StreamKind.COMPUTE, _one_add(dtype, first, f"woken.{r}.add", (first - 1,) if r else ()))
        append(StreamKind.COMM, Op(id=first + 1, name=f"woken.{r}.a2a", role=Role.DISPATCH, kind=OpKind.ALL_TO_ALL,
                                   phase=Phase.FORWARD, layer=None, deps=(first,), comm=tiny))
        append(StreamKind.COMM, Op(id=first + 2, name=f"woken.{r}.busy", role=Role.COMBINE, kind=OpKind.ALL_TO_ALL,
                                   phase=Phase.FORWARD, layer=None, deps=(first + 1,), comm=busy))
        append(StreamKind.COMPUTE, _one_add(dtype, first + 3, f"woken.{r}.woken", (first + 1,)))
    return _plan_of("woken-under-comm", ops, streams, world_size, dtype)


def skew_plan(rounds: int, segment: int, size: int, world_size: int, dtype: DType) -> ExecutionPlan:
    """``rounds`` of ``segment`` chained ``size``-cubed matmuls on the compute stream, then a one-word-per-peer
    all-to-all of every rank that waits for them, which the next segment waits for: how long a collective
    waits for its last member, and runs, after a segment of compute."""
    def matmul(op_id: int, name: str, deps: tuple[int, ...]) -> Op:
        return Op(id=op_id, name=name, role=Role.FC1, kind=OpKind.MATMUL, phase=Phase.FORWARD, layer=None,
                  flops=2.0 * size**3, mem_bytes=3.0 * size * size * dtype.bytes, deps=deps,
                  dims={"m": size, "n": size, "k": size})

    return _two_stream_plan("rendezvous-skew", rounds, segment, matmul, world_size, dtype)


def _two_stream_plan(schedule: str, rounds: int, segment: int, compute: Callable[[int, str, tuple[int, ...]], Op],
                     world_size: int, dtype: DType) -> ExecutionPlan:
    """``rounds`` of ``segment`` chained ``compute`` ops on the compute stream, then a one-word-per-peer
    all-to-all of every rank on the comm stream that waits for the segment and that the next segment waits
    for (``compute(id, name, deps)`` makes each compute op)."""
    comm = _word_per_peer(world_size, dtype)
    ops, streams = list[Op](), {StreamKind.COMPUTE: list[int](), StreamKind.COMM: list[int]()}
    for r in range(rounds):
        for j in range(segment):
            ops.append(compute(len(ops), f"{schedule}.{r}.{j}", (len(ops) - 1,) if ops else ()))
            streams[StreamKind.COMPUTE].append(ops[-1].id)
        ops.append(Op(id=len(ops), name=f"{schedule}.a2a.{r}", role=Role.DISPATCH, kind=OpKind.ALL_TO_ALL,
                      phase=Phase.FORWARD, layer=None, flops=0.0, mem_bytes=0.0, deps=(len(ops) - 1,), comm=comm))
        streams[StreamKind.COMM].append(ops[-1].id)
    return _plan_of(schedule, ops, streams, world_size, dtype)


def _one_add(dtype: DType, op_id: int, name: str, deps: tuple[int, ...]) -> Op:
    """A one-element add: the smallest compute task the executor runs."""
    return Op(id=op_id, name=name, role=Role.RESIDUAL, kind=OpKind.ELEMENTWISE, phase=Phase.FORWARD, layer=None,
              flops=1.0, mem_bytes=3.0 * dtype.bytes, deps=deps, dims={"numel": 1})


def _word_per_peer(world_size: int, dtype: DType) -> CommSpec:
    """An all-to-all of every rank moving one word to each peer: a collective that is all latency."""
    return CommSpec(groups=(tuple(range(world_size)),), bytes=float(world_size * dtype.bytes))


def _plan_of(schedule: str, ops: list[Op], streams: dict[StreamKind, list[int]], world_size: int,
             dtype: DType) -> ExecutionPlan:
    """A synthetic plan: one task per op on the stream that lists it, with the op's dependencies."""
    stream_of = {op_id: kind for kind, ids in streams.items() for op_id in ids}
    tasks = tuple(Task(id=op.id, op=op.id, stream=stream_of[op.id], deps=op.deps) for op in ops)
    graph = OpGraph(ops=tuple(ops), num_ranks=world_size, num_layers=0, moe_layers=(), dtype=dtype)
    return ExecutionPlan(graph=graph, schedule=schedule, tasks=tasks,
                         streams={kind: tuple(ids) for kind, ids in streams.items()})
