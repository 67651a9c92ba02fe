"""Hand-built timelines for the analysis tests: spans are given as plain numbers, nothing is simulated."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytest

from moesim.plan import StreamKind
from moesim.timeline import Span, Timeline
from moesim.workload.ops import OpKind, Phase

_DEFAULT_KIND = {StreamKind.COMPUTE: OpKind.MATMUL, StreamKind.COMM: OpKind.ALL_TO_ALL,
                 StreamKind.DP_COMM: OpKind.ALL_REDUCE}
_DEFAULT_PHASE = {StreamKind.COMPUTE: Phase.FORWARD, StreamKind.COMM: Phase.FORWARD,
                  StreamKind.DP_COMM: Phase.GRAD_SYNC}


def build_span(rank: int, stream: StreamKind, start: float, end: float, *, task: int = 0,
               kind: OpKind | None = None, phase: Phase | None = None, layer: int | None = None,
               flops: float = 0.0, nbytes: float = 0.0, name: str | None = None) -> Span:
    """A span; kind and phase default to what usually runs on ``stream``."""
    return Span(rank=rank, stream=stream, task=task, op=task, name=name or f"t{task}",
                kind=kind or _DEFAULT_KIND[stream], phase=phase or _DEFAULT_PHASE[stream], layer=layer,
                start=start, end=end, flops=flops, bytes=nbytes)


def build_timeline(spans: Sequence[Span], *, represents: Mapping[int, tuple[int, ...]] | None = None,
                   num_ranks: int | None = None, task_deps: Sequence[tuple[int, ...]] = (),
                   schedule: str = "test") -> Timeline:
    """Every rank of ``spans`` stands for itself unless ``represents`` says otherwise."""
    reps = dict(represents) if represents is not None else {s.rank: (s.rank,) for s in spans}
    total = num_ranks if num_ranks is not None else sum(len(r) for r in reps.values())
    return Timeline(spans=tuple(spans), num_ranks=total, represents=reps, task_deps=tuple(task_deps),
                    schedule=schedule)


@pytest.fixture
def make_span() -> Callable[..., Span]:
    return build_span


@pytest.fixture
def make_timeline() -> Callable[..., Timeline]:
    return build_timeline
