"""`moesim collective` and `moesim kernel`: nccl-tests' size and bandwidth conventions, GEMM and attention
rates, and bad input as one line with exit code 2."""

import json

import pytest

from moesim.analysis.primitives import attention_row, bus_factor, collective_rows, gemm_row, parse_sizes
from moesim.api import cluster_of
from moesim.cli import main
from moesim.dtypes import DType
from moesim.errors import MoesimError
from moesim.workload.ops import OpKind

GIB = 1 << 30


def test_sizes_are_a_doubling_range_or_a_list_in_powers_of_1024():
    assert parse_sizes("8:1G") == [8 << i for i in range(28)]  # nccl-tests -b 8 -e 1G -f 2
    assert parse_sizes("1M,64M, 1G") == [1 << 20, 64 << 20, GIB]
    assert parse_sizes("64KiB:256K") == [64 << 10, 128 << 10, 256 << 10]
    assert parse_sizes("1000") == [1000]


@pytest.mark.parametrize("text", ["0", "2X", "1G:8", "-4", "", "2T", ",".join(["8"] * 65)])
def test_bad_sizes_name_the_option(text):
    with pytest.raises(MoesimError, match="^--bytes"):
        parse_sizes(text)


def test_bus_factors_are_nccl_tests():
    assert bus_factor(OpKind.ALL_REDUCE, 16) == pytest.approx(2 * 15 / 16)
    for kind in (OpKind.ALL_GATHER, OpKind.REDUCE_SCATTER, OpKind.ALL_TO_ALL):
        assert bus_factor(kind, 8) == pytest.approx(7 / 8)


def test_bus_bandwidth_is_the_links_whatever_the_ring_collective():
    """busbw normalises away how many times a collective crosses each link: on one NVSwitch node all three
    ring collectives reach the same bus bandwidth at 1 GiB, and algbw = size / time (an A100 node: no NVLS)."""
    cluster = cluster_of("dgx-a100", 1)
    at_1g = {}
    for kind in (OpKind.ALL_REDUCE, OpKind.ALL_GATHER, OpKind.REDUCE_SCATTER):
        rows = collective_rows(cluster, kind, parse_sizes("1M:1G"))
        assert [r.busbw_gb_s for r in rows] == sorted(r.busbw_gb_s for r in rows)  # latency fades with size
        for row in rows:
            assert row.algbw_gb_s == pytest.approx(row.bytes / (row.time_us * 1e-6) / 1e9)
            assert row.busbw_gb_s == pytest.approx(row.algbw_gb_s * bus_factor(kind, 8))
        at_1g[kind] = rows[-1].busbw_gb_s
    assert max(at_1g.values()) / min(at_1g.values()) == pytest.approx(1.0, abs=0.02)


def test_all_to_all_across_nodes_is_slower_and_2dh_is_an_option():
    one = collective_rows(cluster_of("p4de.24xlarge", 1), OpKind.ALL_TO_ALL, [GIB])[0]
    two = collective_rows(cluster_of("p4de.24xlarge", 2), OpKind.ALL_TO_ALL, [GIB])[0]
    assert two.busbw_gb_s < one.busbw_gb_s  # EFA is narrower than NVSwitch
    two_nodes = cluster_of("p4de.24xlarge", 2)
    (linear,) = collective_rows(two_nodes, OpKind.ALL_TO_ALL, [1 << 20])
    (hierarchical,) = collective_rows(two_nodes, OpKind.ALL_TO_ALL, [1 << 20], "2dh")
    assert hierarchical.time_us > 0 and hierarchical.time_us != linear.time_us
    assert (linear.algorithm, hierarchical.algorithm) == ("linear", "2dh")
    with pytest.raises(MoesimError, match="^--algorithm '2dh': all_reduce runs as auto, ring, tree"):
        collective_rows(two_nodes, OpKind.ALL_REDUCE, [GIB], "2dh")


def test_an_all_reduce_takes_a_tree_for_latency_and_a_ring_for_bandwidth():
    """NCCL's choice: a tree's 2 x (7 intra + log2(nodes) network) steps beat a ring's 2 x (n - 1) for small
    messages on many nodes; at 1 GiB over 4 nodes the ring's bandwidth wins, over 2 the tree's halved network
    bytes do (A100 nodes: no NVLS; no
    small-message term, so the alphas are exact)."""
    plain = {"cost.collective_half_rate_kib": 0, "cost.network_half_rate_kib": 0}
    cluster = cluster_of("dgx-a100", 16, plain)
    node, cost = cluster.node, cluster.cost
    (tree,) = collective_rows(cluster, OpKind.ALL_REDUCE, [8])
    (ring,) = collective_rows(cluster, OpKind.ALL_REDUCE, [8], "ring")
    assert tree.algorithm == "tree" and ring.algorithm == "ring" and tree.time_us < ring.time_us / 5
    steps_us = 2 * (7 * node.intra.latency_us + 4 * node.network.latency_us)  # log2(16) = 4 levels
    assert tree.time_us == pytest.approx(cost.collective_base_latency_us + steps_us, rel=1e-3)
    # a ring of 128 ranks over 16 nodes: 127 steps a traversal, 16 of them across a node boundary
    assert ring.time_us == pytest.approx(cost.collective_base_latency_us + 2 * (111 * node.intra.latency_us
                                                                              + 16 * node.network.latency_us),
                                         rel=1e-3)
    (two_nodes,) = collective_rows(cluster_of("dgx-a100", 2), OpKind.ALL_REDUCE, [GIB])
    assert two_nodes.algorithm == "tree"  # each tree one edge: half a ring's bytes through the NICs
    (large,) = collective_rows(cluster_of("dgx-a100", 4), OpKind.ALL_REDUCE, [GIB])
    assert large.algorithm == "ring"
    forced = cluster_of("dgx-a100", 4, {"cost.all_reduce_algorithm": "tree"})
    (tree_large,) = collective_rows(forced, OpKind.ALL_REDUCE, [GIB])  # the cluster's setting holds
    assert tree_large.algorithm == "tree" and tree_large.time_us > large.time_us


def test_a_large_gemm_runs_near_the_efficiency_times_the_peak():
    cluster = cluster_of("dgx-h100", 1)
    row = gemm_row(cluster, DType.BF16, 16384, 16384, 16384)
    peak = cluster.node.gpu.peak_flops(DType.BF16) / 1e12
    assert row.tflops == pytest.approx(row.flops / (row.time_us * 1e-6) / 1e12)
    assert row.flops == 2 * 16384**3
    assert 0.9 * cluster.cost.matmul_efficiency * peak < row.tflops <= cluster.cost.matmul_efficiency * peak
    small = gemm_row(cluster, DType.BF16, 256, 256, 256)
    assert small.tflops < row.tflops / 4  # launch and the size term dominate a small GEMM


def test_attention_counts_the_full_square():
    row = attention_row(cluster_of("p4de.24xlarge", 1), DType.FP16, 4, 16, 2048, 128)
    assert row.flops == 4 * 4 * 16 * 2048**2 * 128
    assert 0 < row.tflops < 312  # A100's dense FP16 peak
    causal = attention_row(cluster_of("p4de.24xlarge", 1), DType.FP16, 4, 16, 2048, 128, causal=True)
    assert causal.flops == row.flops and causal.time_us < 0.6 * row.time_us  # FlashAttention skips the masked half


def test_collective_command_prints_a_table_and_json(capsys):
    assert main(["collective", "--hardware", "dgx-h100", "--nodes", "2", "--bytes", "1M,1G"]) == 0
    out, _ = capsys.readouterr()
    assert "all_reduce over 16 GPUs" in out and "busbw GB/s" in out and "1073741824" in out
    assert main(["collective", "--hardware", "dgx-h100", "--kind", "all_to_all", "--bytes", "8:64", "--json"]) == 0
    document = json.loads(capsys.readouterr()[0])
    assert document["ranks"] == 8 and document["kind"] == "all_to_all"
    assert [row["bytes"] for row in document["rows"]] == [8, 16, 32, 64]
    assert set(document["rows"][0]) == {"bytes", "time_us", "algbw_gb_s", "busbw_gb_s", "algorithm"}


def test_kernel_command_prints_a_table_and_json(capsys):
    assert main(["kernel", "--hardware", "dgx-h100", "--gemm", "4096,4096,4096"]) == 0
    assert "TFLOP/s" in capsys.readouterr()[0]
    assert main(["kernel", "--attention", "2,8,1024,64", "--dtype", "fp16", "--json"]) == 0
    document = json.loads(capsys.readouterr()[0])
    assert document["kind"] == "attention" and document["dtype"] == "fp16" and document["tflops"] > 0


@pytest.mark.parametrize("argv, message", [
    (["collective", "--kind", "broadcast"], "--kind 'broadcast': allowed: all_reduce"),
    (["collective", "--bytes", "lots"], "--bytes: 'lots' is not a size"),
    (["collective", "--kind", "all_to_all", "--algorithm", "tree"], "--algorithm 'tree': all_to_all runs as"),
    (["collective", "--set", "model.hidden=8"], "model.hidden: only hardware.* and cost.*"),
    (["collective", "--hardware", "nowhere"], "nowhere"),
    (["kernel", "--gemm", "1,2"], "--gemm '1,2': expected M,N,K"),
    (["kernel", "--gemm", "0,2,2"], "m: 0 is out of range"),
    (["kernel", "--gemm", "8,8,8", "--dtype", "fp64"], "--dtype 'fp64': allowed:"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_2dh_gains_where_per_peer_messages_are_small():
    """Tutel's case for 2DH: across 8 nodes a flat all-to-all of 4 MiB per rank sends 64 KiB to each of 63
    peers, far below the network's half-rate message; 2DH's stage between nodes sends 8x larger messages and
    wins. Without the small-message term its extra intra-node pass only costs."""
    for term, faster in ((None, "2dh"), ({"cost.collective_half_rate_kib": 0, "cost.network_half_rate_kib": 0},
                                         "linear")):
        cluster = cluster_of("p4de.24xlarge", 8, term)
        (linear,) = collective_rows(cluster, OpKind.ALL_TO_ALL, [4 << 20])
        (staged,) = collective_rows(cluster, OpKind.ALL_TO_ALL, [4 << 20], "2dh")
        assert min((linear, staged), key=lambda row: row.time_us).algorithm == faster
