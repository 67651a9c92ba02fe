"""The cluster's network as the flow model sees it: integer resources with capacities.

Resource ids, in this order:
``[0, R)``            rank r's intra-node egress   ("rank{r}.intra_out")
``[R, 2R)``           rank r's intra-node ingress  ("rank{r}.intra_in")
``[2R, 2R+M)``        NIC egress, id ``2R + node * nics_per_node + k``  ("node{n}.nic{k}.out")
``[2R+M, 2R+2M)``     NIC ingress                  ("node{n}.nic{k}.in")
with R ranks and M = num_nodes * nics_per_node NICs. Intra-node capacity is the per-GPU, per-direction
fabric bandwidth times ``intra_bandwidth_efficiency``; a NIC's is its line rate times
``inter_bandwidth_efficiency`` divided by the fabric's oversubscription. Links are aggregated per GPU:
a single peer-to-peer link of a mesh is not modelled on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.hardware.specs import ClusterSpec, FabricTopology

_CUBE_MESH_GPUS = 8


@dataclass(frozen=True, slots=True, eq=False)
class ResourceMap:
    """Rank -> node / GPU / NIC tables and resource capacities of one cluster (build with ``of``)."""

    num_ranks: int
    num_nodes: int
    gpus_per_node: int
    nics_per_node: int
    node: np.ndarray          # (R,) node of each rank
    local: np.ndarray         # (R,) GPU index of each rank inside its node
    spread_gpu: np.ndarray    # (E,) local GPU ...
    spread_nic: np.ndarray    # (E,) ... sends this share of its inter-node bytes through local NIC ...
    spread_share: np.ndarray  # (E,) ... (shares of one GPU sum to 1)
    relays: np.ndarray | None  # (G, G, 2) local relay GPUs of a pair without a direct link, -1 if direct
    capacities: np.ndarray    # bytes/s per resource id
    intra_latency_s: float
    inter_latency_s: float

    @classmethod
    def of(cls, cluster: ClusterSpec) -> ResourceMap:
        node, cost = cluster.node, cluster.cost
        gpus, nics = node.gpus_per_node, node.network.nics_per_node
        ranks = np.arange(cluster.num_gpus, dtype=np.int64)
        spread = [(g, k, 1.0 / len(cluster.nics_of(g))) for g in range(gpus) for k in cluster.nics_of(g)]
        intra = node.intra.bandwidth_bytes_per_s * cost.intra_bandwidth_efficiency
        nic = node.network.nic_bytes_per_s * cost.inter_bandwidth_efficiency / node.network.oversubscription
        num_nics = cluster.num_nodes * nics
        return cls(
            num_ranks=cluster.num_gpus,
            num_nodes=cluster.num_nodes,
            gpus_per_node=gpus,
            nics_per_node=nics,
            node=ranks // gpus,
            local=ranks % gpus,
            spread_gpu=np.array([g for g, _, _ in spread], dtype=np.int64),
            spread_nic=np.array([k for _, k, _ in spread], dtype=np.int64),
            spread_share=np.array([s for _, _, s in spread]),
            relays=relay_table(node.intra.topology, gpus),
            capacities=np.concatenate(
                [np.full(2 * cluster.num_gpus, intra), np.full(2 * num_nics, nic)]
            ),
            intra_latency_s=node.intra.latency_s,
            inter_latency_s=node.network.latency_s,
        )

    @property
    def num_nics(self) -> int:
        return self.num_nodes * self.nics_per_node

    @property
    def num_resources(self) -> int:
        return 2 * self.num_ranks + 2 * self.num_nics

    def name(self, resource: int) -> str:
        r, m = self.num_ranks, self.num_nics
        if not 0 <= resource < self.num_resources:
            raise IndexError(f"resource {resource} is outside 0..{self.num_resources - 1}")
        if resource < 2 * r:
            return f"rank{resource % r}.intra_{'out' if resource < r else 'in'}"
        nic = (resource - 2 * r) % m
        direction = "out" if resource < 2 * r + m else "in"
        return f"node{nic // self.nics_per_node}.nic{nic % self.nics_per_node}.{direction}"

    def nic_load(self, per_rank: np.ndarray) -> np.ndarray:
        """(M,) bytes per NIC when each rank moves ``per_rank`` bytes through its own NIC share."""
        by_gpu = per_rank.reshape(self.num_nodes, self.gpus_per_node)[:, self.spread_gpu] * self.spread_share
        ids = np.arange(self.num_nodes)[:, None] * self.nics_per_node + self.spread_nic[None, :]
        return np.bincount(ids.ravel(), by_gpu.ravel(), minlength=self.num_nics)

    def node_nic_load(self, per_node: np.ndarray) -> np.ndarray:
        """(M,) bytes per NIC when each node spreads ``per_node`` bytes evenly over all its NICs."""
        return np.repeat(per_node / self.nics_per_node, self.nics_per_node)

    def assemble(
        self, intra_out: np.ndarray, intra_in: np.ndarray, nic_out: np.ndarray, nic_in: np.ndarray
    ) -> np.ndarray:
        """The four per-kind arrays as one (num_resources,) volume vector indexed by resource id."""
        return np.concatenate([intra_out, intra_in, nic_out, nic_in])


def relay_table(topology: FabricTopology, gpus_per_node: int) -> np.ndarray | None:
    """Intermediate GPUs for pairs without a direct link, or None when every pair is direct.

    Hybrid cube mesh (DGX-1, p3/p3dn; ``nvidia-smi topo -m``): GPUs 0-3 and 4-7 form two fully
    connected quads and GPU g also links to g ^ 4. A pair a -> b in different quads with b != a ^ 4
    has no link; NCCL routes it over NVLink through an intermediate GPU (PATH_NVB, NCCL issue #819),
    either a ^ 4 or b ^ 4. We split such traffic evenly over both, loading each relay's ingress and
    egress with half of it. NVSwitch and the MI300X mesh connect every pair directly; PCIe and
    loopback have no per-GPU links to relay over.
    """
    if topology is not FabricTopology.HYBRID_CUBE_MESH:
        return None
    assert gpus_per_node == _CUBE_MESH_GPUS, "NodeSpec validation allows the cube mesh only for 8 GPUs"
    table = np.full((gpus_per_node, gpus_per_node, 2), -1, dtype=np.int64)
    for a in range(gpus_per_node):
        for b in range(gpus_per_node):
            if a // 4 != b // 4 and b != a ^ 4:
                table[a, b] = (a ^ 4, b ^ 4)
    return table
