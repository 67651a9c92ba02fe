"""Routing models: how many tokens each rank sends to each expert, per MoE layer.

``counts[s, e]`` is the number of token-to-expert assignments rank ``s`` makes to expert ``e``
(each token makes ``top_k`` assignments to distinct experts, so a row sums to T * top_k and no
entry exceeds T). With a capacity factor, each rank keeps at most ``capacity`` assignments per
expert and drops the rest; all-to-all buffers and expert compute are padded to the capacity
(DeepSpeed-MoE / Tutel), so bytes and expert FLOPs follow the capacity, not the skew. Dropless
(capacity None) runs move and compute exactly the kept counts, so ranks become uneven.

Randomness comes only from ``np.random.default_rng(routing.seed)``, drawn layer by layer. A traced
workload brings the routing its run recorded instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.workload.config import RoutingKind, Workload
from moesim.workload.recorded import RecordedRouting


@dataclass(frozen=True, slots=True, eq=False)
class LayerRouting:
    """Routing of one MoE layer: assignments before (``counts``) and after (``kept``) capacity."""

    layer: int
    counts: np.ndarray  # (num_gpus, num_experts) int64
    kept: np.ndarray    # min(counts, capacity); the same array as counts when dropless
    capacity: int | None

    @property
    def dropped_fraction(self) -> float:
        total = int(self.counts.sum())
        return 0.0 if total == 0 else 1.0 - int(self.kept.sum()) / total

    def sent_rows(self) -> np.ndarray:
        """Rows each rank puts in its dispatch buffer per expert: the capacity (padded) or the kept count."""
        if self.capacity is None:
            return self.kept
        return np.full(self.counts.shape, self.capacity, dtype=np.int64)


def route(workload: Workload) -> tuple[LayerRouting, ...]:
    """One ``LayerRouting`` per MoE layer, in layer order: a traced workload's recorded routing, else the
    routing model's. Uniform layers share one counts array."""
    if workload.recorded is not None:
        return tuple(_recorded(layer, workload.capacity) for layer in workload.recorded.routing)
    ranks, experts = workload.num_gpus, workload.num_experts
    tokens, top_k = workload.tokens_per_gpu, workload.model.top_k
    capacity = workload.capacity
    config = workload.training.routing
    layers = workload.model.moe_layers
    if config.kind is RoutingKind.UNIFORM:
        counts = uniform_counts(ranks, experts, tokens * top_k)
        kept = counts if capacity is None else np.minimum(counts, capacity)
        return tuple(LayerRouting(layer, counts, kept, capacity) for layer in layers)
    rng = np.random.default_rng(config.seed)
    result = []
    for layer in layers:
        popularity = zipf_popularity(experts, config.alpha, rng)
        counts = sample_counts(popularity, ranks, tokens, top_k, rng)
        kept = counts if capacity is None else np.minimum(counts, capacity)
        result.append(LayerRouting(layer, counts, kept, capacity))
    return tuple(result)


def _recorded(layer: RecordedRouting, capacity: int | None) -> LayerRouting:
    counts = np.array(layer.counts, dtype=np.int64)
    kept = counts if capacity is None else np.array(layer.kept, dtype=np.int64)
    return LayerRouting(layer.layer, counts, kept, capacity)


def uniform_counts(ranks: int, experts: int, assignments: int) -> np.ndarray:
    """Every rank spreads ``assignments`` evenly; the remainder goes round-robin, rotated by rank.

    Rank s gives one extra assignment to experts (s * rem + j) mod E for j < rem, so the extras of
    all ranks tile the experts and each expert receives within one of every other.
    """
    base, rem = divmod(assignments, experts)
    counts = np.full((ranks, experts), base, dtype=np.int64)
    if rem:
        extra = (np.arange(ranks)[:, None] * rem + np.arange(rem)[None, :]) % experts
        np.add.at(counts, (np.repeat(np.arange(ranks), rem), extra.ravel()), 1)
    return counts


def zipf_popularity(experts: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ~ 1 / rank**alpha, ranks assigned to experts by a random permutation."""
    weights = 1.0 / np.arange(1, experts + 1, dtype=np.float64) ** alpha
    popularity = np.empty(experts)
    popularity[rng.permutation(experts)] = weights / weights.sum()
    return popularity


def sample_counts(popularity: np.ndarray, ranks: int, tokens: int, top_k: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Sample each rank's assignments: rows sum to tokens * top_k, entries at most ``tokens``.

    A token picks ``top_k`` distinct experts, so an expert's inclusion probability is capped at 1:
    water-filling turns popularity into inclusion probabilities with that cap. Experts at the cap
    take every token; a multinomial spreads the other assignments, and the rare excess over
    ``tokens`` is redrawn among the experts still below it.
    """
    inclusion = _inclusion(popularity, top_k)
    certain = inclusion >= 1.0
    counts = np.zeros((ranks, popularity.size), dtype=np.int64)
    counts[:, certain] = tokens
    rest = top_k - int(certain.sum())
    if rest == 0:
        return counts
    probs = np.where(certain, 0.0, inclusion)
    probs /= probs.sum()
    counts += rng.multinomial(tokens * rest, probs, size=ranks)
    while (rows := (counts > tokens).any(axis=1)).any():
        excess = (counts[rows] - tokens).clip(min=0).sum(axis=1)
        capped = np.minimum(counts[rows], tokens)
        room = probs * (capped < tokens)
        counts[rows] = capped + rng.multinomial(excess, room / room.sum(axis=1, keepdims=True))
    return counts


def _inclusion(popularity: np.ndarray, top_k: int) -> np.ndarray:
    """Per-expert probability that a token includes it: top_k * popularity, capped at 1, summing to top_k."""
    inclusion = np.zeros_like(popularity)
    free = np.ones(popularity.shape, dtype=bool)
    remaining = float(top_k)
    while True:
        scaled = popularity * remaining / popularity[free].sum()
        saturated = free & (scaled >= 1.0)
        if not saturated.any():
            inclusion[free] = scaled[free]
            return inclusion
        inclusion[saturated] = 1.0
        free &= ~saturated
        remaining -= int(saturated.sum())


def dispatch_rows(workload: Workload, routing: LayerRouting) -> np.ndarray:
    """``rows[g, a, b]``: token rows member ``a`` of EP group ``g`` sends to member ``b`` in dispatch."""
    groups, ep = len(workload.ep_groups), workload.ep_size
    sent = routing.sent_rows().reshape(groups, ep, ep, workload.experts_per_rank)
    return sent.sum(axis=3)


def received_rows(workload: Workload, routing: LayerRouting) -> np.ndarray:
    """Token rows each rank's experts process in this layer, by global rank."""
    return dispatch_rows(workload, routing).sum(axis=1).reshape(workload.num_gpus)
