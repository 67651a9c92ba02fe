"""Hardware specs: GPU, intra-node fabric, network, cost parameters, node and cluster.

Every spec is a frozen pydantic model with ``extra="forbid"``; numbers carry their unit in the
field name and are converted to seconds, bytes and FLOP/s only through ``moesim.units``, in the
properties below. A whole cluster is one model, so dotted overrides such as
``{"node.network.nic_gbps": 200}`` work through ``moesim.overrides.apply_overrides``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moesim import units
from moesim.dtypes import DType


class FabricTopology(StrEnum):
    """How the GPUs of one node are wired to each other."""

    NVSWITCH = "nvswitch"                          # every pair at full per-GPU bandwidth
    HYBRID_CUBE_MESH = "hybrid_cube_mesh"          # DGX-1 / p3: two NVLink quads plus cross links, 8 GPUs
    INFINITY_FABRIC_MESH = "infinity_fabric_mesh"  # MI300X: fully connected, one link per peer
    PCIE = "pcie"
    LOOPBACK = "loopback"                          # ranks of one CPU host exchanging through memory


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GPUSpec(_Spec):
    """One accelerator (or, with ``device: cpu``, one host rank of the gloo harness)."""

    name: str
    device: Literal["gpu", "cpu"] = "gpu"
    peak_tflops: dict[DType, float] = Field(min_length=1)  # dense peaks, only the formats the part has
    hbm_gib: float = Field(gt=0)
    hbm_gb_per_s: float = Field(gt=0)
    sm_count: int | None = Field(default=None, ge=1)

    @field_validator("peak_tflops")
    @classmethod
    def _positive_peaks(cls, peaks: dict[DType, float]) -> dict[DType, float]:
        for dtype, value in peaks.items():
            if value <= 0:
                raise ValueError(f"peak for {dtype.value} must be > 0, got {value}")
        return peaks

    @model_validator(mode="after")
    def _gpu_has_sms(self) -> GPUSpec:
        if self.device == "gpu" and self.sm_count is None:
            raise ValueError("sm_count is required when device is gpu")
        return self

    def peak_flops(self, dtype: DType) -> float:
        """Dense peak in FLOP/s; KeyError when the part has no peak for ``dtype``."""
        return units.tflops(self.peak_tflops[dtype])

    @property
    def hbm_bytes(self) -> float:
        return units.gib(self.hbm_gib)

    @property
    def hbm_bytes_per_s(self) -> float:
        return units.gb_per_s(self.hbm_gb_per_s)


class IntraNodeFabric(_Spec):
    """GPU-to-GPU links inside a node: bandwidth per GPU per direction (half the bidirectional
    figure vendors quote) and the per-hop latency of one pipelined transfer step."""

    topology: FabricTopology
    bandwidth_gb_per_s: float = Field(gt=0)
    latency_us: float = Field(ge=0)
    # The switches reduce and multicast (NVLink SHARP, third-generation NVSwitch: Hopper and later), so NCCL
    # can run an all-reduce as NVLS inside the node (docs/sources.md §3).
    nvls: bool = False

    @model_validator(mode="after")
    def _nvls_on_a_switch(self) -> IntraNodeFabric:
        if self.nvls and self.topology is not FabricTopology.NVSWITCH:
            raise ValueError(f"nvls: needs topology nvswitch, this fabric is {self.topology.value}")
        return self

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return units.gb_per_s(self.bandwidth_gb_per_s)

    @property
    def latency_s(self) -> float:
        return units.us(self.latency_us)


class NetworkSpec(_Spec):
    """Inter-node network: NICs of one node, their line rate, hop latency and fabric oversubscription."""

    nics_per_node: int = Field(ge=1)
    nic_gbps: float = Field(gt=0)             # line rate of one NIC, Gbit/s
    latency_us: float = Field(ge=0)
    oversubscription: float = Field(default=1.0, ge=1.0)  # divides the usable NIC bandwidth

    @property
    def nic_bytes_per_s(self) -> float:
        """Line rate of one NIC in bytes/s, before efficiency and oversubscription."""
        return units.gbit_per_s(self.nic_gbps)

    @property
    def latency_s(self) -> float:
        return units.us(self.latency_us)


class CostParams(_Spec):
    """Every efficiency, latency and interference assumption of the cost model, in one place.

    Defaults are stated assumptions with their source; node files may override any of them, and a
    calibrated file (``hardware_specs/calibrated/``) replaces them with fitted values.
    """

    # Large cuBLAS/hipBLAS GEMMs reach ~70-80% of the dense peak; 0.75 with the size term below gives
    # ~470 TFLOP/s for a bf16 2048^3 GEMM and ~690 for 4096^3 on H100 [unverified: recalled
    # microbenchmarks; calibration replaces it].
    matmul_efficiency: float = Field(default=0.75, gt=0, le=1)
    # Size term: a matmul whose ideal (at-peak) time is t reaches matmul_efficiency * t / (t + t_half),
    # i.e. it takes (t + t_half) / matmul_efficiency: small kernels cannot fill every SM (wave
    # quantisation, prologue/epilogue). Expressed as time so one value fits GPUs of any speed [assumption].
    matmul_half_efficiency_us: float = Field(default=10.0, ge=0)
    # Shape term: a matmul whose dimensions' harmonic mean (3 / (1/m + 1/n + 1/k); the batch of a batched
    # one aside) is d runs 1 + d_half / d times longer again: each operand element costs a fixed time
    # beside the FLOPs (d is 1.5x the FLOP per operand element), so a skinny GEMM, or a part of one split
    # along its tokens that re-reads the whole weight, runs below the rate of a square one. 0 = off, the
    # default on GPU presets [assumption, to be calibrated]; on a CPU the calibration measures it.
    matmul_half_efficiency_dim: float = Field(default=0.0, ge=0)
    # And attention: over a sequence of s tokens it runs 1 + s_half / s times longer, the per-row work
    # (softmax, the score tile's set-up) weighing more against s x s products on short sequences. 0 = off,
    # the default on GPU presets [assumption, to be calibrated]; on a CPU the calibration measures it.
    attention_half_efficiency_seq: float = Field(default=0.0, ge=0)
    # Unfused attention (bmm, softmax, bmm) runs well below GEMM efficiency; fused kernels reach
    # ~50-70% on H100 [assumption]. The size term above applies to attention as well.
    attention_efficiency: float = Field(default=0.5, gt=0, le=1)
    # The share of the full square a causal attention kernel computes. None: 0.5 on a GPU (FlashAttention
    # skips the key tiles above the diagonal; its benchmarks count a causal call as half the FLOPs;
    # docs/sources.md §2), 1 on a CPU rank (PyTorch's CPU kernel skips next to nothing there;
    # docs/calibration-notes.md).
    causal_attention_work: float | None = Field(default=None, gt=0, le=1)
    # FLOP roof of the memory-bound kinds (layernorm, elementwise, softmax, router, permute, ...);
    # they are almost always limited by HBM, so this rarely matters [assumption].
    other_compute_efficiency: float = Field(default=0.5, gt=0, le=1)
    # STREAM-like kernels reach 80-90% of HBM peak; PyTorch eager elementwise kernels the lower end
    # [unverified].
    hbm_efficiency: float = Field(default=0.8, gt=0, le=1)
    # CUDA kernel launch latency is ~2-5 us; every task (every part of a partitioned op) pays it
    # [unverified].
    launch_overhead_us: float = Field(default=4.0, ge=0)
    # NCCL reaches ~370 of 450 GB/s NVLink per direction on H100 (0.82) and 208-232 GB/s all-reduce
    # bus bandwidth of 300 on A100 (0.69-0.77) (docs/sources.md §3; nccl-tests #175 #178 #212).
    intra_bandwidth_efficiency: float = Field(default=0.8, gt=0, le=1)
    # HDR reaches ~24 of 25 GB/s, NDR ~48-49 of 50 (docs/sources.md §3; nccl-tests #267 #130).
    inter_bandwidth_efficiency: float = Field(default=0.96, gt=0, le=1)
    # NCCL's own alpha for ring / Simple protocol (baseLat in src/graph/tuning.cc); the per-hop terms
    # live in the fabric specs (hwLat NVLink 3.4, PCI 5.7, NET 9.6 us in the same table).
    collective_base_latency_us: float = Field(default=8.4, ge=0)
    # DeepEP low-latency dispatch grows 77 -> 194 us from EP8 to EP256: ~0.47 us per extra peer
    # (docs/sources.md §3).
    all_to_all_peer_latency_us: float = Field(default=0.5, ge=0)
    # The all-to-all's own alpha and beta: NCCL runs it as grouped send/recv, not as a ring, so its base
    # latency and achieved bandwidth differ from the rings' (on gloo too: `moesim calibrate` fits both).
    # The base: None = collective_base_latency
    # [assumption: no GPU measurement yet]. The ratio: the all-to-all moves its bytes at this multiple of
    # the rings' effective bandwidth (the fabric's times its efficiency above), 1 = the same [assumption].
    all_to_all_base_latency_us: float | None = Field(default=None, ge=0)
    all_to_all_bandwidth_ratio: float = Field(default=1.0, gt=0)
    # How an all-reduce runs: NCCL's tuner picks ring or tree per call by its own time model; "auto" picks
    # the faster of the two here, "ring" or "tree" forces one. A tree pays 2 x (ranks per node - 1)
    # intra-node steps and 2 x floor(log2 nodes) network steps where a ring pays 2 x (n - 1) steps, and
    # moves 2 x its payload per rank at tree_bandwidth_factor of the ring's rate: both from NCCL's model
    # (src/graph/tuning.cc, docs/sources.md §3); no published tree measurement checked yet.
    # NVLS (a node whose fabric has ``nvls``): each rank sends its payload to the switch, which reduces it,
    # and gets the sum back by multicast: (1 + 1/n) x payload each way per rank where a ring moves
    # 2 (n - 1) / n, at nvls_bandwidth_factor of the ring's rate, after the base latency and one intra-node
    # hop each way. A group across nodes runs NCCL's NVLSTree: NVLS inside each node, the tree's network
    # part and latency between them. "nvls" forces the one that applies. The factor is fitted to published
    # NVLS runs (docs/sources.md §7).
    all_reduce_algorithm: Literal["auto", "ring", "tree", "nvls"] = "auto"
    tree_bandwidth_factor: float = Field(default=0.92, gt=0, le=1)
    nvls_bandwidth_factor: float = Field(default=1.0, gt=0, le=1)
    # Small messages move below the fabric's rate (NCCL pipelines each message in chunks over its channels;
    # a transfer too small to fill them leaves the links idle between steps). A collective whose message is
    # m bytes (per peer for an all-to-all, a rank's share of the buffer, buffer / ranks, for the others)
    # moves its bytes 1 + (m_half / m) ** exponent times slower: it reaches half the rate at m = m_half
    # (charged as that much more volume, so collectives sharing a link share the loss). m_half in KiB,
    # 0 = off (the CPU presets; gloo's alpha-beta fit covers it there). A collective across nodes has its
    # own m_half (network_half_rate_kib; None = the same): its chunks go through the NICs' proxies and
    # queues, not NVLink. Fitted to published nccl-tests runs on the GPU presets (docs/sources.md §7).
    collective_half_rate_kib: float = Field(default=0.0, ge=0)
    network_half_rate_kib: float | None = Field(default=None, ge=0)
    collective_rate_exponent: float = Field(default=1.0, gt=0, le=4)
    # Compute runs 1 + x times slower while a collective of the GPU runs (not while it waits). DeepEP
    # reserves 20 of 132 SMs (15%) and loses ~20% GEMM throughput (docs/sources.md §3); NCCL's default 8-16
    # channels hold 7-15% of an A100's 108 SMs, plus HBM traffic, so ~10% [assumption, to be calibrated].
    compute_slowdown_under_comm: float = Field(default=0.1, ge=0)
    # And the reverse: a collective's transfer runs 1 + y times slower while a member rank computes.
    # On a GPU, NCCL kernels hold their own SMs and keep most of their bandwidth next to a GEMM
    # (docs/sources.md §3 reports the GEMM side of the contention, not this one): 0 by default
    # [assumption, to be calibrated]. On a CPU host the same cores move the bytes and compute, so
    # calibration measures it.
    comm_slowdown_under_compute: float = Field(default=0.0, ge=0)
    # On a CPU host a collective's own threads run on the ranks' cores: one that starts while a member
    # computes takes this much of that member's compute (the kernel running then ends that much later),
    # a fixed part plus a part per MiB of the collective's per-rank payload. 0 on GPU presets, where NCCL
    # runs on SMs of its own and compute_slowdown_under_comm covers the contention [assumption];
    # `moesim calibrate` fits both on a CPU host (and compute_slowdown_under_comm is then 0).
    comm_cpu_us: float = Field(default=0.0, ge=0)
    comm_cpu_us_per_mib: float = Field(default=0.0, ge=0)
    # A collective that starts while a member rank computes also waits this long before moving bytes:
    # its communication thread waiting for a core. 0 on a GPU, where NCCL's kernels are queued ahead
    # [assumption, to be calibrated]; calibration measures ~0 on the 2-core development VM, a collective
    # issued on a process group of its own (as the harness issues them) starting at once.
    comm_latency_under_compute_us: float = Field(default=0.0, ge=0)
    # A task that waited for a task of another stream starts this long after that task ended: the
    # hand-over between streams. On a CPU host the harness runs each stream in its own thread, so the
    # waiting thread must be woken and get a core (measured by `moesim calibrate`). 0 on a GPU, where
    # the host queues work ahead and a CUDA event wait costs a few us at most [assumption].
    stream_handoff_us: float = Field(default=0.0, ge=0)
    # A compute task woken by another stream while a collective of its rank runs waits, on top of the
    # hand-over, until no collective of the rank runs, at most this long: on a CPU host the collective's
    # threads hold the rank's core. 0 on a GPU, where NCCL runs on SMs of its own [assumption]; measured
    # by `moesim calibrate` on a synthetic plan through the executor.
    compute_wait_under_comm_us: float = Field(default=0.0, ge=0)
    # Ranks drift apart between collectives (kernel-time jitter, late wake-ups) and a collective starts
    # when the last member arrives: a collective whose members computed T seconds since their previous
    # collective starts this fraction of T later than the played rank arrived, at most the cap below
    # (None: no cap). 0 on GPU presets [assumption, to be calibrated]; on a CPU host `moesim calibrate`
    # measures both.
    rendezvous_skew: float = Field(default=0.0, ge=0)
    rendezvous_skew_cap_us: float | None = Field(default=None, ge=0)
    # Per-kind FLOP efficiency of the memory-bound kinds, overriding other_compute_efficiency where a
    # kind's kernels are slower or faster per FLOP than the generic figure. Keys: an OpKind value
    # ("loss", "router") or a kind and phase ("router:forward", "layernorm:backward_weight"); the
    # phase's key wins over the kind's. Empty by default, filled by calibration.
    kind_efficiency: dict[str, float] = Field(default_factory=dict)
    # And the share of the memory roof (hbm * hbm_efficiency) they reach, same keys, 1 where absent: a
    # gather or scatter of token rows (permute, embedding) moves its bytes slower than a streaming add.
    kind_memory_efficiency: dict[str, float] = Field(default_factory=dict)

    @field_validator("kind_efficiency", "kind_memory_efficiency")
    @classmethod
    def _known_kinds(cls, value: dict[str, float]) -> dict[str, float]:
        from moesim.workload.ops import OpKind, Phase

        allowed = sorted(k.value for k in OpKind if not k.is_collective and k not in (OpKind.MATMUL,
                                                                                       OpKind.ATTENTION))
        phases = sorted(p.value for p in Phase)
        for kind, efficiency in value.items():
            name, _, phase = kind.partition(":")
            if name not in allowed or (phase and phase not in phases):
                raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(allowed)}, each optionally "
                                 f"followed by ':' and a phase ({', '.join(phases)})")
            if not 0 < efficiency <= 1:
                raise ValueError(f"{kind}: efficiency must be in (0, 1], got {efficiency}")
        return value

    def half_rate_kib(self, across_nodes: bool) -> float:
        """The small-message term's m_half for a collective within a node or across nodes."""
        own = self.network_half_rate_kib
        return own if across_nodes and own is not None else self.collective_half_rate_kib

    def message_stretch(self, message_bytes: float, across_nodes: bool) -> float:
        """How many times slower a collective whose message is ``message_bytes`` moves its bytes:
        ``1 + (m_half / m) ** exponent``; 1 with the term off or no message."""
        half = self.half_rate_kib(across_nodes) * units.KIB
        if half <= 0 or message_bytes <= 0:
            return 1.0
        return 1.0 + (half / message_bytes) ** self.collective_rate_exponent

    @property
    def launch_overhead_s(self) -> float:
        return units.us(self.launch_overhead_us)

    @property
    def matmul_half_efficiency_s(self) -> float:
        return units.us(self.matmul_half_efficiency_us)

    @property
    def rendezvous_skew_cap_s(self) -> float:
        return float("inf") if self.rendezvous_skew_cap_us is None else units.us(self.rendezvous_skew_cap_us)

    def comm_cpu_s(self, payload_bytes: float) -> float:
        """Seconds of a member's compute a collective with ``payload_bytes`` per rank takes (``comm_cpu_us``)."""
        return units.us(self.comm_cpu_us + self.comm_cpu_us_per_mib * payload_bytes / units.MIB)

    @property
    def stream_handoff_s(self) -> float:
        return units.us(self.stream_handoff_us)

    @property
    def compute_wait_under_comm_s(self) -> float:
        return units.us(self.compute_wait_under_comm_us)

    @property
    def comm_latency_under_compute_s(self) -> float:
        return units.us(self.comm_latency_under_compute_us)

    @property
    def collective_base_latency_s(self) -> float:
        return units.us(self.collective_base_latency_us)

    @property
    def all_to_all_peer_latency_s(self) -> float:
        return units.us(self.all_to_all_peer_latency_us)

    @property
    def all_to_all_base_latency_s(self) -> float:
        """The all-to-all's base alpha: its own where set, else the rings' ``collective_base_latency``."""
        own = self.all_to_all_base_latency_us
        return self.collective_base_latency_s if own is None else units.us(own)


class NodeSpec(_Spec):
    """One node: its GPUs, how they are wired, its NICs and the cost parameters measured on it.

    In a node file (and in ``--set hardware.node.gpu=...``) ``gpu`` may name a GPU preset: the loader
    (``presets.py``) puts the preset's spec in its place before validation.
    """

    name: str
    gpu: GPUSpec
    gpus_per_node: int = Field(ge=1)
    intra: IntraNodeFabric
    network: NetworkSpec
    cost: CostParams = CostParams()
    # What one node costs an hour, in US dollars (on-demand where a cloud sells it; docs/sources.md §3);
    # None = unknown, and results carry no cost.
    price_per_hour: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _topology_fits(self) -> NodeSpec:
        if self.intra.topology is FabricTopology.HYBRID_CUBE_MESH and self.gpus_per_node != 8:
            raise ValueError(f"hybrid_cube_mesh wires exactly 8 GPUs, gpus_per_node is {self.gpus_per_node}")
        if self.cost.all_reduce_algorithm == "nvls" and not self.intra.nvls:
            raise ValueError(f"cost.all_reduce_algorithm: nvls needs a fabric with intra.nvls: true; {self.name}'s "
                             "has none (allowed: auto, ring, tree)")
        return self


class ClusterSpec(_Spec):
    """``num_nodes`` identical nodes. Ranks are numbered node-major: rank r is GPU
    ``r % gpus_per_node`` of node ``r // gpus_per_node``."""

    node: NodeSpec
    num_nodes: int = Field(default=1, ge=1)

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.node.gpus_per_node

    @property
    def cost(self) -> CostParams:
        return self.node.cost

    def with_cost(self, cost: CostParams) -> ClusterSpec:
        """This cluster with ``cost`` as its node's cost parameters."""
        return self.model_copy(update={"node": self.node.model_copy(update={"cost": cost})})

    def node_of(self, rank: int) -> int:
        self._check_rank(rank)
        return rank // self.node.gpus_per_node

    def local_index(self, rank: int) -> int:
        """Index of ``rank``'s GPU inside its node."""
        self._check_rank(rank)
        return rank % self.node.gpus_per_node

    def nic_of(self, rank: int) -> int:
        """The first (with fewer NICs than GPUs: the only) NIC of its node that ``rank`` uses:
        GPU g uses NIC ``g * nics_per_node // gpus_per_node``."""
        return self.nics_of(rank)[0]

    def nics_of(self, rank: int) -> range:
        """Every NIC index (within the node) that ``rank`` sends through. With more NICs than GPUs
        (p5: 32 for 8) each GPU owns a contiguous share and spreads its traffic over it."""
        g, gpus, nics = self.local_index(rank), self.node.gpus_per_node, self.node.network.nics_per_node
        first = g * nics // gpus
        return range(first, max((g + 1) * nics // gpus, first + 1))

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.num_gpus:
            raise IndexError(f"rank {rank} is outside 0..{self.num_gpus - 1}")
