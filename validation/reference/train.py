"""Worker entry: every rank trains the reference model on synthetic tokens; rank 0 writes the step times.

    torchrun --nproc-per-node 2 -m moesim.validation.reference.train --model tiny-moe-a --steps 5 --out r.json

The workload is ``--model`` (a preset or a YAML path) with ``--set model.*`` / ``training.*`` overrides, for
as many GPUs as the job has ranks. Dense parameters train under DistributedDataParallel (bucket cap
``training.grad_bucket_mb``, ``gradient_as_bucket_view`` = ``training.ddp_bucket_view``) with the experts
left out of it; expert gradients are averaged over their expert-data-parallel group when it has more
than one rank (DeepSpeed-MoE's rule). A step is zero_grad, forward, backward, expert gradient sync,
optimizer step. Each step starts at a barrier; its time is the
slowest rank's, from the barrier's exit to the end of the optimizer step. Every step trains on the same
batch, so the loss falls. ``--trace`` profiles ``--trace-steps`` more steps (default 1) and attributes them
(each op's median over them) to the op names of moesim's graph (``attribution``), with the routing every
rank made in the last.

The JSON: ``format`` (FORMAT), ``model``, ``overrides``, ``world_size``, ``warmup``, ``steps``,
``seed``, ``step_times_s`` and ``losses`` (the timed steps', the loss averaged over ranks),
``median_step_s`` (the lower median), ``parameter_digests`` (per rank, SHA-256 of its dense and of its
expert parameters after the steps), ``environment``, and with ``--trace``: ``trace`` = {``ranks``:
[{rank, step_s, op_seconds, unattributed}], ``routing``: [{layer, counts, kept, capacity}]}. With
``--kineto-dir DIR`` (and ``--trace``) every rank also writes its profiled step as ``DIR/rank{r}.json``, a
Chrome trace that ``from_kineto.recorded_from_kineto`` reads without torch. This module imports torch
only inside ``main``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moesim.errors import MoesimError
from moesim.overrides import parse_assignments
from moesim.workload.builder import build_graph
from moesim.workload.config import OptimizerKind, Workload
from moesim.workload.presets import load_workload

from .attribution import StepAttribution
from .trace import CPU_DEVICE, gpu_preset

if TYPE_CHECKING:
    import torch

    from ..dist import RankContext

FORMAT = "moesim-reference/1"
LEARNING_RATE = {OptimizerKind.SGD_MOMENTUM: 0.1, OptimizerKind.ADAM: 1e-3}
MOMENTUM = 0.9


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="moesim.validation.reference.train",
                                     description="Train the reference MoE model on every rank of this job.")
    parser.add_argument("--model", required=True, help="preset name or YAML path")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", action="store_true", help="profile more steps and attribute them to the graph")
    parser.add_argument("--trace-steps", type=int, default=1,
                        help="with --trace, profiled steps: each op's median over them (default 1)")
    parser.add_argument("--kineto-dir", type=Path, default=None, metavar="DIR",
                        help="with --trace, every rank also writes its profiled step as DIR/rank{r}.json")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train on this rank; rank 0 writes ``--out``. Bad input: one line, exit 2."""
    args = parse_args(argv)
    from .. import dist as rank_dist

    ctx = rank_dist.init()
    try:
        if args.steps < 1 or args.warmup < 0:
            raise MoesimError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
        if args.kineto_dir is not None and not args.trace:
            raise MoesimError("--kineto-dir needs --trace (it writes the profiled step)")
        overrides = parse_assignments(args.overrides)
        workload = load_workload(args.model, num_gpus=ctx.world_size, gpu=device_name(ctx), overrides=overrides)
        trainer = Trainer(workload, ctx, args.seed)
        times, losses = trainer.timed(args.warmup, args.steps)
        trace = trainer.traced(args.kineto_dir, args.trace_steps) if args.trace else None
        digests = trainer.digests()
    except MoesimError as err:  # every rank meets the same error: the inputs are the same
        print(f"error: {err}", file=sys.stderr)
        return 2
    if ctx.rank == 0:
        document = {"format": FORMAT, "model": str(args.model), "overrides": overrides, "world_size": ctx.world_size,
                    "warmup": args.warmup, "steps": args.steps, "seed": args.seed, "step_times_s": times,
                    "median_step_s": sorted(times)[(len(times) - 1) // 2], "losses": losses,
                    "parameter_digests": digests, "environment": rank_dist.environment(ctx)}
        if trace is not None:
            document["trace"] = trace
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1))
    rank_dist.finish()
    return 0


def device_name(ctx: RankContext) -> str:
    """The moesim GPU name this rank runs as: ``cpu-rank`` on CPU, else the GPU preset its CUDA device names
    (``trace.device_of`` maps the run the same way)."""
    import torch

    return CPU_DEVICE if ctx.device.type == "cpu" else gpu_preset(torch.cuda.get_device_name(ctx.device))


class Trainer:
    """One rank's reference model, its DDP wrapper, optimizer and synthetic batch."""

    def __init__(self, workload: Workload, ctx: RankContext, seed: int) -> None:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from .model import ReferenceModel, check_supported, rank_groups

        dtype = check_supported(workload, ctx.device)
        self.workload, self.ctx = workload, ctx
        self.groups = rank_groups(workload, ctx.rank)
        self.model = ReferenceModel(workload, self.groups, seed).to(ctx.device, dtype)
        expert_names = set(self.model.expert_parameter_names())
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, sorted(expert_names))
        self.ddp = DistributedDataParallel(self.model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
                                           bucket_cap_mb=workload.training.grad_bucket_mb,
                                           gradient_as_bucket_view=workload.training.ddp_bucket_view)
        self.expert_params = [p for name, p in self.model.named_parameters() if name in expert_names]
        params, rate = self.model.parameters(), LEARNING_RATE[workload.training.optimizer]
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.SGD(params, lr=rate, momentum=MOMENTUM)
            if workload.training.optimizer is OptimizerKind.SGD_MOMENTUM else torch.optim.Adam(params, lr=rate))
        training = workload.training
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (ctx.rank + 1))
        tokens = torch.randint(workload.model.vocab_size, (training.batch_per_gpu, training.seq_len + 1),
                               generator=generator).to(ctx.device)
        self.inputs, self.targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step(self) -> torch.Tensor:
        """One training step; the loss, detached."""
        from torch.profiler import record_function

        from .attribution import BACKWARD, GRAD_SYNC, OPTIMIZER, ZERO_GRAD

        with record_function(ZERO_GRAD):
            self.optimizer.zero_grad(set_to_none=True)
        loss: torch.Tensor = self.ddp(self.inputs, self.targets)
        with record_function(BACKWARD):
            loss.backward()
        if self.groups.expert_dp is not None:
            with record_function(GRAD_SYNC):
                self._sync_expert_grads()
        with record_function(OPTIMIZER):
            self.optimizer.step()
        return loss.detach()

    def _sync_expert_grads(self) -> None:
        """Average the expert gradients over the expert-data-parallel group, in one flat buffer."""
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in self.expert_params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.groups.expert_dp)
        flat.div_(self.workload.expert_dp_size)
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))

    def _timed_step(self) -> tuple[float, torch.Tensor]:
        import torch
        import torch.distributed as dist

        dist.barrier()
        start = time.perf_counter()
        loss = self.step()
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize(self.ctx.device)
        return time.perf_counter() - start, loss

    def timed(self, warmup: int, steps: int) -> tuple[list[float], list[float]]:
        """``warmup`` untimed steps, then ``steps`` timed ones: their times (the slowest rank's) and losses
        (averaged over ranks)."""
        import torch
        import torch.distributed as dist

        for _ in range(warmup):
            self._timed_step()
        runs = [self._timed_step() for _ in range(steps)]
        times = torch.tensor([t for t, _ in runs], dtype=torch.float64)
        losses = torch.stack([loss.double().cpu() for _, loss in runs])
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
        dist.all_reduce(losses)
        return times.tolist(), (losses / self.ctx.world_size).tolist()

    def digests(self) -> list[dict[str, Any]]:
        """Every rank's SHA-256 of its dense and of its expert parameters (DDP keeps the dense ones equal)."""
        import hashlib

        import torch.distributed as dist

        experts = {id(p) for p in self.expert_params}
        dense, expert = hashlib.sha256(), hashlib.sha256()
        for param in self.model.parameters():
            (expert if id(param) in experts else dense).update(param.detach().float().cpu().numpy().tobytes())
        every: list[Any] = [None] * self.ctx.world_size
        mine = {"rank": self.ctx.rank, "dense": dense.hexdigest(), "experts": expert.hexdigest()}
        dist.all_gather_object(every, mine)
        return every

    def traced(self, kineto_dir: Path | None = None, steps: int = 1) -> dict[str, Any]:
        """Profile ``steps`` more steps; every rank's attribution (each name's median over the steps, the
        median step) and the last step's routing, gathered on every rank. With ``kineto_dir``, this rank
        also writes its last profiled step there as ``rank{r}.json`` (a Chrome trace)."""
        import torch.distributed as dist

        from .opinfo import dense_buckets

        graph = build_graph(self.workload, measured=False)
        names, buckets = {op.name for op in graph.ops}, dense_buckets(graph)
        attributions = [self._traced_step(names, buckets, kineto_dir if index == steps - 1 else None)
                        for index in range(steps)]
        mine = _median_attribution(attributions)
        ranks: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(ranks, {"rank": self.ctx.rank, "step_s": mine.step_s, "op_seconds": mine.op_seconds,
                                       "unattributed": mine.unattributed})
        return {"ranks": ranks, "routing": self._routing()}

    def _traced_step(self, names: set[str], buckets: tuple[tuple[str, int], ...],
                     kineto_dir: Path | None) -> StepAttribution:
        """One profiled step, attributed to the graph's op names."""
        import torch
        import torch.distributed as dist
        from torch.profiler import ProfilerActivity, profile, record_function

        from .attribution import STEP, attribute, torch_events

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.ctx.device.type == "cuda" else [])
        dist.barrier()
        with profile(activities=activities, record_shapes=True) as prof, record_function(STEP):
            self.step()
            if self.ctx.device.type == "cuda":
                torch.cuda.synchronize(self.ctx.device)
        if kineto_dir is not None:
            kineto_dir.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(kineto_dir / f"rank{self.ctx.rank}.json"))
        return attribute(torch_events(prof.events()), self.model.ops, names, buckets=buckets)

    def _routing(self) -> list[dict[str, Any]]:
        """Per MoE layer, every rank's assignments per global expert in the last step, before and after
        capacity."""
        import torch.distributed as dist

        mine = []
        for layer, moe in self.model.moe_layers():
            assert moe.last_routing is not None
            counts, kept = moe.last_routing
            mine.append((layer, counts.tolist(), kept.tolist()))
        every: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(every, mine)
        return [{"layer": layer, "counts": [rank[i][1] for rank in every], "kept": [rank[i][2] for rank in every],
                 "capacity": self.workload.capacity} for i, (layer, _, _) in enumerate(mine)]


def _median_attribution(steps: Sequence[StepAttribution]) -> StepAttribution:
    """Each name's median over the profiled steps (0 where a step lacks it); one step is returned as is."""
    if len(steps) == 1:
        return steps[0]

    def medians(tables: list[dict[str, float]]) -> dict[str, float]:
        return {name: statistics.median(table.get(name, 0.0) for table in tables)
                for name in dict.fromkeys(name for table in tables for name in table)}

    return StepAttribution(statistics.median(s.step_s for s in steps), medians([s.op_seconds for s in steps]),
                           medians([s.unattributed for s in steps]))


if __name__ == "__main__":
    sys.exit(main())
