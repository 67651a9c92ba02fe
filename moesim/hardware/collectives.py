"""Collective algorithms as pure functions: what each puts on which resource, and its fixed latency.

Each function takes the member ranks of the groups running the collective together (one coflow),
their traffic or payload, and the cluster's ResourceMap, and returns a (num_resources,) vector of
bytes per resource id, or a latency in seconds. Intra-node bytes load the sender's intra egress and
the receiver's intra ingress; inter-node bytes load NIC egress on the sending node and NIC ingress on
the receiving node (GPUDirect RDMA: the GPU-NIC path is PCIe, not the intra-node fabric). A new
algorithm (e.g. Tutel's hierarchical 2DH all-to-all) is one more function here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moesim.errors import MoesimError
from moesim.hardware.resources import ResourceMap

Members = Sequence[Sequence[int]]


def linear_all_to_all(members: Members, traffic: Sequence[np.ndarray], res: ResourceMap) -> np.ndarray:
    """Flat all-to-all: member a of group i sends ``traffic[i][a, b]`` bytes straight to member b.

    The diagonal (a rank's own tokens) stays local. Each rank's inter-node bytes leave through its
    own NIC share and arrive through the receiver's: NCCL cannot aggregate NICs for all-to-all
    (docs/sources.md §3), so p3dn's 8 GPUs share its one NIC. On a hybrid cube mesh, pairs without a
    direct NVLink are relayed through an intermediate GPU (see ``resources.relay_table``).
    """
    r = res.num_ranks
    intra_out, intra_in, cross_out, cross_in = (np.zeros(r) for _ in range(4))
    for ranks, matrices in _stacks(members, traffic):
        offdiag = matrices * ~np.eye(ranks.shape[1], dtype=bool)
        nodes = res.node[ranks]
        local = np.where(nodes[:, :, None] == nodes[:, None, :], offdiag, 0.0)
        remote = offdiag - local
        flat = ranks.ravel()
        intra_out += np.bincount(flat, local.sum(axis=2).ravel(), minlength=r)
        intra_in += np.bincount(flat, local.sum(axis=1).ravel(), minlength=r)
        cross_out += np.bincount(flat, remote.sum(axis=2).ravel(), minlength=r)
        cross_in += np.bincount(flat, remote.sum(axis=1).ravel(), minlength=r)
        if res.relays is not None:
            _add_relayed(ranks, local, res, intra_out, intra_in)
    return res.assemble(intra_out, intra_in, res.nic_load(cross_out), res.nic_load(cross_in))


def hierarchical_stages(
    members: Members, traffic: Sequence[np.ndarray], res: ResourceMap
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tutel's 2DH all-to-all as two flat all-to-alls: (stage-1 matrices, stage-2 matrices) per group.

    Within a node the members are numbered by rank (their position p). Stage 1, inside each node:
    a member sends its bytes for a peer on the same node straight to it, and its bytes for a peer at
    position p on another node to the member at position p of its own node. Stage 2, between nodes:
    the member at position p forwards what it gathered to the members at position p of the other
    nodes, in one larger message per node instead of one small one per rank. Inter-node bytes are the
    same as the flat algorithm's; what changes is the number of peers each stage talks to (latency)
    and an extra intra-node pass. Every node of a group must hold the same number of its members.
    """
    first, second = [], []
    for group, matrix in zip(members, traffic, strict=True):
        ranks = np.asarray(group, dtype=np.int64)
        nodes = res.node[ranks]
        node_ids, node_of = np.unique(nodes, return_inverse=True)
        per_node = np.bincount(node_of)
        if np.any(per_node != per_node[0]):
            raise MoesimError(f"schedule.a2a=2dh: a group has {sorted(set(per_node.tolist()))} ranks on its "
                              "nodes; 2DH needs the same number on every node (choose training.ep_size so)")
        order = np.lexsort((ranks, node_of))
        position = np.empty(len(ranks), dtype=np.int64)
        position[order] = np.arange(len(ranks)) % per_node[0]
        member_at = np.empty((len(node_ids), per_node[0]), dtype=np.int64)
        member_at[node_of, position] = np.arange(len(ranks))
        src, dst = np.meshgrid(np.arange(len(ranks)), np.arange(len(ranks)), indexing="ij")
        remote = node_of[src] != node_of[dst]
        relay = np.where(remote, member_at[node_of[src], position[dst]], dst)
        stage1, stage2 = np.zeros_like(matrix, dtype=np.float64), np.zeros_like(matrix, dtype=np.float64)
        np.add.at(stage1, (src, relay), matrix)
        np.add.at(stage2, (relay[remote], dst[remote]), matrix[remote])
        first.append(stage1)
        second.append(stage2)
    return first, second


def hierarchical_latencies(
    members: Members, res: ResourceMap, base_s: float, per_peer_s: float
) -> tuple[float, float]:
    """Alphas of 2DH's two stages: intra-node with the node's members, inter-node with one peer per
    other node; each ``base + hop + per_peer * peers`` for the slowest group."""
    intra = inter = 0.0
    for group in members:
        nodes = res.node[np.asarray(group, dtype=np.int64)]
        spanned = len(np.unique(nodes))
        local = len(group) // spanned
        if local > 1:
            intra = max(intra, base_s + res.intra_latency_s + per_peer_s * (local - 1))
        if spanned > 1:
            inter = max(inter, base_s + res.inter_latency_s + per_peer_s * (spanned - 1))
    return intra, inter


def ring(members: Members, payload: float, traversals: int, res: ResourceMap) -> np.ndarray:
    """Ring collective in sorted rank order: each rank sends ``traversals * (n-1)/n * payload`` bytes
    to its successor (all-reduce: 2 traversals; all-gather / reduce-scatter: 1).

    Intra-node hops load the two GPUs' links (NCCL builds rings along direct links, so nothing is
    relayed). NCCL runs several rings (channels) that leave a node through different GPUs and NICs,
    so a cross-node hop's bytes are spread evenly over every NIC of the sending node (egress) and of
    the receiving node (ingress).
    """
    r = res.num_ranks
    intra_out, intra_in = np.zeros(r), np.zeros(r)
    node_out, node_in = np.zeros(res.num_nodes), np.zeros(res.num_nodes)
    for group in members:
        n = len(group)
        if n < 2 or payload <= 0:
            continue
        src = np.sort(np.asarray(group, dtype=np.int64))
        dst = np.roll(src, -1)
        volume = traversals * (n - 1) / n * payload
        same = res.node[src] == res.node[dst]
        np.add.at(intra_out, src[same], volume)
        np.add.at(intra_in, dst[same], volume)
        np.add.at(node_out, res.node[src[~same]], volume)
        np.add.at(node_in, res.node[dst[~same]], volume)
    return res.assemble(intra_out, intra_in, res.node_nic_load(node_out), res.node_nic_load(node_in))


def tree(members: Members, payload: float, res: ResourceMap) -> np.ndarray:
    """NCCL's double binary tree all-reduce, ``payload`` already divided by the tree's rate factor. Inside a
    node a chain moves 2 x payload per rank (charged as a ring of ``payload * n / (n - 1)``). Between nodes
    each of the two trees carries half the payload up and down each edge: a node interior in one tree and a
    leaf in the other sends and receives 2 x payload, as a ring's node does, except with two nodes, where
    each tree is one edge and a node sends and receives only its payload (nccl-tests #196: on two nodes the
    tree's bus bandwidth exceeds the network's; docs/sources.md §3). Groups spanning nodes only in part are
    charged as the ring."""
    volume = np.zeros(res.num_resources)
    for group in members:
        n = len(group)
        if n < 2 or payload <= 0:
            continue
        part = ring([group], payload * n / (n - 1), 2, res)
        if len(np.unique(res.node[np.asarray(group, dtype=np.int64)])) == 2:
            part[2 * res.num_ranks:] *= 0.5
        volume += part
    return volume


def nvls(members: Members, payload: float, res: ResourceMap) -> np.ndarray:
    """NVLS all-reduce inside a node (NVLink SHARP): each rank's share of every reduced chunk goes up to the
    switch and its own reduced chunk comes back (``payload`` out, ``payload / n`` in), then it multicasts that
    chunk (``payload / n`` out) and receives every other (``payload`` in): ``(1 + 1/n) * payload`` each way.
    Only the intra-node part is meaningful for a group across nodes (NCCL's NVLSTree adds a tree between
    the nodes: ``cost.py``); nothing is charged to the NICs here."""
    r = res.num_ranks
    out = np.zeros(r)
    for group in members:
        if len(group) >= 2 and payload > 0:
            out[np.asarray(group, dtype=np.int64)] += (1 + 1 / len(group)) * payload
    return res.assemble(out, out.copy(), np.zeros(res.num_nics), np.zeros(res.num_nics))


def all_to_all_latency(members: Members, res: ResourceMap, base_s: float, per_peer_s: float) -> float:
    """Alpha of a flat all-to-all: ``base + hop + per_peer * (n - 1)`` for the slowest group, where
    hop is the network latency if the group spans nodes, else the intra-node latency, and the
    per-peer term is the software cost of one more send/recv pair. Groups of one rank cost nothing."""
    worst = 0.0
    for group in members:
        if len(group) < 2:
            continue
        hop = res.inter_latency_s if _spans_nodes(group, res) else res.intra_latency_s
        worst = max(worst, base_s + hop + per_peer_s * (len(group) - 1))
    return worst


def ring_latency(members: Members, traversals: int, res: ResourceMap, base_s: float) -> float:
    """Alpha of a ring collective, NCCL's model (src/graph/tuning.cc): ``base`` plus, per traversal,
    n - 1 pipelined steps, of which those crossing a node boundary (at most n - 1) pay the network
    hop latency and the rest the intra-node one. For 2 nodes x 8 GPUs all-reduce that is 26 intra +
    4 inter steps, as in NCCL. Groups of one rank cost nothing; the slowest group sets the latency."""
    worst = 0.0
    for group in members:
        n = len(group)
        if n < 2:
            continue
        ring_nodes = res.node[np.sort(np.asarray(group, dtype=np.int64))]
        crossings = min(int(np.count_nonzero(ring_nodes != np.roll(ring_nodes, -1))), n - 1)
        steps = (n - 1 - crossings) * res.intra_latency_s + crossings * res.inter_latency_s
        worst = max(worst, base_s + traversals * steps)
    return worst


def tree_latency(members: Members, res: ResourceMap, base_s: float) -> float:
    """Alpha of a tree all-reduce, NCCL's model (src/graph/tuning.cc): ``base`` plus, up and down, a chain
    through the group's ranks on a node (``ranks per node - 1`` intra-node steps) and a binary tree over
    its nodes (``floor(log2 nodes)`` network steps, NCCL's ``log2i``). Groups of one rank cost nothing; the
    slowest group sets it."""
    worst = 0.0
    for group in members:
        if len(group) < 2:
            continue
        counts = np.unique(res.node[np.asarray(group, dtype=np.int64)], return_counts=True)[1]
        per_node, depth = int(counts.max()), len(counts).bit_length() - 1
        worst = max(worst, base_s + 2 * ((per_node - 1) * res.intra_latency_s + depth * res.inter_latency_s))
    return worst


def _stacks(members: Members, traffic: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Groups as (ranks (k, g), matrices (k, g, g)) stacks: one stack when all groups have one size."""
    assert len(members) == len(traffic), "one traffic matrix per group"
    if len({len(group) for group in members}) == 1:
        pairs = [(np.asarray(members, dtype=np.int64), np.asarray(traffic, dtype=np.float64))]
    else:
        pairs = [
            (np.asarray([group], dtype=np.int64), np.asarray([matrix], dtype=np.float64))
            for group, matrix in zip(members, traffic, strict=True)
        ]
    for ranks, matrices in pairs:
        g = ranks.shape[1]
        assert matrices.shape == (ranks.shape[0], g, g), f"traffic {matrices.shape} does not fit the groups"
    return pairs


def _add_relayed(
    ranks: np.ndarray, local: np.ndarray, res: ResourceMap, intra_out: np.ndarray, intra_in: np.ndarray
) -> None:
    """Charge each relayed intra-node pair's bytes, split evenly over its relay GPUs, to their links."""
    assert res.relays is not None
    index = res.local[ranks]
    relay = res.relays[index[:, :, None], index[:, None, :]]  # (k, g, g, paths)
    relayed = (relay[..., 0] >= 0) & (local > 0)
    node_base = np.broadcast_to((res.node[ranks] * res.gpus_per_node)[:, :, None], local.shape)[relayed]
    share = local[relayed] / relay.shape[-1]
    for path in range(relay.shape[-1]):
        via = node_base + relay[..., path][relayed]
        intra_in += np.bincount(via, share, minlength=res.num_ranks)
        intra_out += np.bincount(via, share, minlength=res.num_ranks)


def _spans_nodes(group: Sequence[int], res: ResourceMap) -> bool:
    nodes = res.node[np.asarray(group, dtype=np.int64)]
    return bool(np.any(nodes != nodes[0]))
