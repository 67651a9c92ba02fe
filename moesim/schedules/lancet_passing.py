"""Lancet's capacity passing: what each of k batch parts of one MoE layer keeps, sends and computes.

Tokens are i.i.d. across the batch, so each rank's assignments to each expert split evenly over the
k batch parts (whole numbers, the remainder to the first parts). With a Switch gate each part's
gate receives the capacity the earlier parts left (docs/sources.md §1), so token dropping matches the
unpartitioned run: part p keeps ``min(split_p, C - kept by parts < p)``. Parts move only what they
keep (an all-to-all-v of real sizes, not Lancet's own uniform C/k estimate), so with capacity slack
the parts of the dispatch, the experts and the combine add up to less than the padded op.

A batch-prioritized gate sorts the whole batch before applying the capacity: it is never
partitioned, and the tokens it keeps are spread evenly over the batch, so its parts split the
kept counts evenly instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.workload.config import GateKind
from moesim.workload.routing import LayerRouting


def split_evenly(counts: np.ndarray, parts: int) -> np.ndarray:
    """``(parts, *counts.shape)``: each entry cut into ``parts`` whole numbers summing to it, the
    remainder going one each to the first parts."""
    assert parts >= 1, "at least one part"
    base, remainder = np.divmod(np.asarray(counts, dtype=np.int64), parts)
    index = np.arange(parts).reshape((parts,) + (1,) * base.ndim)
    return base[None] + (index < remainder[None]).astype(np.int64)


def capacity_passing(routing: LayerRouting, parts: int) -> np.ndarray:
    """``kept[p, rank, expert]``: assignments part p keeps under capacity passing.

    Each part keeps ``min(split_p, C - kept by parts < p)``; dropless layers keep every split. The
    parts of each (rank, expert) add up to ``routing.kept`` and never exceed the capacity.
    """
    split = split_evenly(routing.counts, parts)
    if routing.capacity is None:
        return split
    earlier = np.cumsum(split, axis=0) - split
    left = routing.capacity - np.minimum(earlier, routing.capacity)
    return np.minimum(split, left)


def kept_by_part(routing: LayerRouting, parts: int, gate: GateKind) -> np.ndarray:
    """Capacity passing for a Switch gate; an even split of the kept counts for a batch-prioritized one."""
    if gate is GateKind.BATCH_PRIORITIZED:
        return split_evenly(routing.kept, parts)
    return capacity_passing(routing, parts)


def part_rows(kept: np.ndarray, groups: tuple[tuple[int, ...], ...], experts_per_rank: int) -> np.ndarray:
    """``rows[g, a, b]``: rows member a of EP group g sends member b, from one part's ``kept[rank, expert]``.

    Expert e lives at position ``e // experts_per_rank`` of every EP group.
    """
    members = np.asarray(groups, dtype=np.int64)
    size = members.shape[1]
    assert kept.shape[1] == size * experts_per_rank, "experts = EP size x experts per rank"
    return kept[members].reshape(len(groups), size, size, experts_per_rank).sum(axis=3)


def received_rows(rows: np.ndarray, groups: tuple[tuple[int, ...], ...], num_ranks: int) -> np.ndarray:
    """Rows each global rank's experts receive, from ``rows[g, a, b]``."""
    received = np.zeros(num_ranks, dtype=np.int64)
    received[np.asarray(groups, dtype=np.int64)] = rows.sum(axis=1)
    return received


@dataclass(frozen=True, slots=True, eq=False)
class MoEParts:
    """One MoE layer cut into k batch parts.

    ``dispatch[p]`` / ``combine[p]``: part p's all-to-all bytes ``[g, a, b]`` (combine is the
    per-group transpose). ``expert_share[p][rank]``: the share of the unpartitioned expert rows the
    rank's experts process in part p (padded: experts per rank x C x group size; dropless: the kept
    rows it receives; a rank that receives no rows at all gets 1/k).
    """

    kept: np.ndarray
    dispatch: tuple[np.ndarray, ...]
    combine: tuple[np.ndarray, ...]
    expert_share: tuple[tuple[float, ...], ...]


def moe_parts(
    routing: LayerRouting,
    parts: int,
    *,
    gate: GateKind,
    groups: tuple[tuple[int, ...], ...],
    experts_per_rank: int,
    bytes_per_row: int,
) -> MoEParts:
    """Traffic and expert shares of ``parts`` batch parts of the layer routed by ``routing``."""
    kept = kept_by_part(routing, parts, gate)
    num_ranks = kept.shape[1]
    if routing.capacity is None:
        whole = received_rows(part_rows(routing.kept, groups, experts_per_rank), groups, num_ranks)
    else:
        whole = np.full(num_ranks, experts_per_rank * routing.capacity * len(groups[0]), dtype=np.int64)
    dispatch, combine, shares = [], [], []
    for part in range(parts):
        rows = part_rows(kept[part], groups, experts_per_rank)
        traffic = rows.astype(np.float64) * bytes_per_row
        dispatch.append(traffic)
        combine.append(np.ascontiguousarray(traffic.transpose(0, 2, 1)))
        received = received_rows(rows, groups, num_ranks)
        shares.append(tuple(float(r) / float(w) if w > 0 else 1.0 / parts for r, w in zip(received, whole,
                                                                                           strict=True)))
    return MoEParts(kept, tuple(dispatch), tuple(combine), tuple(shares))
