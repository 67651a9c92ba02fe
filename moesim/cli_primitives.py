"""`moesim collective` and `moesim kernel`: one collective or one kernel, as the cost model predicts it.

Registered on the main parser by ``add_commands``; bad input raises MoesimError (the CLI prints one line
and exits 2).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

from moesim.errors import MoesimError

if TYPE_CHECKING:
    from moesim.hardware import ClusterSpec

E = TypeVar("E", bound=Enum)

_COLLECTIVE_COLUMNS = [("size", "size B"), ("time_us", "time us"), ("algbw", "algbw GB/s"),
                       ("busbw", "busbw GB/s"), ("algorithm", "algorithm")]
_KERNEL_COLUMNS = [("kind", "kernel"), ("shape", "shape"), ("dtype", "dtype"), ("time_us", "time us"),
                   ("tflops", "TFLOP/s")]


def add_commands(commands: argparse._SubParsersAction, default_hardware: str) -> None:
    collective = commands.add_parser(
        "collective", help="one collective's predicted time and nccl-tests' algbw / busbw, by message size")
    collective.add_argument("--hardware", default=default_hardware, help="node preset name or YAML path")
    collective.add_argument("--nodes", type=int, default=1, help="nodes; every GPU takes part (default 1)")
    collective.add_argument("--kind", default="all_reduce",
                            help="all_reduce (default), all_to_all, all_gather or reduce_scatter")
    collective.add_argument("--bytes", dest="sizes", default="8:1G",
                            help="per-rank buffer sizes: a range A:B doubling (default 8:1G) or a list, "
                                 "units K M G T (powers of 1024)")
    collective.add_argument("--algorithm", default=None,
                            help="all-reduce: auto (the fastest of ring, tree and, on NVSwitch nodes with NVLS, nvls "
                                 "per size; the presets' cost.all_reduce_algorithm), ring, tree or nvls; "
                                 "all-to-all: linear (default) or 2dh")
    collective.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                            help="hardware.* / cost.* override (repeatable)")
    collective.add_argument("--json", action="store_true")
    collective.set_defaults(handler=cmd_collective)

    kernel = commands.add_parser("kernel", help="one GEMM's or attention call's predicted time and TFLOP/s")
    kernel.add_argument("--hardware", default=default_hardware, help="node preset name or YAML path")
    shapes = kernel.add_mutually_exclusive_group(required=True)
    shapes.add_argument("--gemm", metavar="M,N,K", help="an M x K @ K x N matmul")
    shapes.add_argument("--attention", metavar="B,H,S,D", help="forward attention: batch, heads, sequence, head dim")
    kernel.add_argument("--causal", action="store_true", help="with --attention: a causal (decoder) call")
    kernel.add_argument("--dtype", default="bf16", help="fp32, tf32, fp16, bf16 or fp8 (default bf16)")
    kernel.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="hardware.* / cost.* override (repeatable)")
    kernel.add_argument("--json", action="store_true")
    kernel.set_defaults(handler=cmd_kernel)


def cmd_collective(args: argparse.Namespace) -> int:
    from moesim.analysis.primitives import COLLECTIVES, collective_rows, parse_sizes, resolve_algorithm
    from moesim.analysis.tables import metrics_table
    from moesim.workload.ops import OpKind

    kind = _choice(OpKind, args.kind, "--kind", COLLECTIVES)
    sizes = parse_sizes(args.sizes)
    cluster = _cluster(args.hardware, args.nodes, args.settings)
    algorithm = resolve_algorithm(cluster, kind, args.algorithm.strip().lower() if args.algorithm else None)
    rows = collective_rows(cluster, kind, sizes, algorithm)
    if args.json:
        print(json.dumps({"hardware": cluster.node.name, "nodes": cluster.num_nodes, "ranks": cluster.num_gpus,
                          "kind": kind.value, "algorithm": algorithm, "rows": [r.to_json() for r in rows]},
                         indent=2))
        return 0
    print(f"{kind.value} over {cluster.num_gpus} GPUs ({cluster.num_nodes} x {cluster.node.name}), "
          f"{algorithm}; predicted, nccl-tests' conventions")
    table = [{"size": str(r.bytes), "time_us": f"{r.time_us:.1f}", "algbw": f"{r.algbw_gb_s:.2f}",
              "busbw": f"{r.busbw_gb_s:.2f}", "algorithm": r.algorithm} for r in rows]
    print(metrics_table(table, _COLLECTIVE_COLUMNS))
    return 0


def cmd_kernel(args: argparse.Namespace) -> int:
    from moesim.analysis.primitives import attention_row, gemm_row
    from moesim.analysis.tables import metrics_table
    from moesim.dtypes import DType

    dtype = _choice(DType, args.dtype, "--dtype", tuple(DType))
    cluster = _cluster(args.hardware, 1, args.settings)
    if args.gemm is not None and args.causal:
        raise MoesimError("--causal: applies to --attention only")
    if args.gemm is not None:
        m, n, k = _ints(args.gemm, "--gemm", ("M", "N", "K"))
        row = gemm_row(cluster, dtype, m, n, k)
    else:
        batch, heads, seq, head_dim = _ints(args.attention, "--attention", ("B", "H", "S", "D"))
        row = attention_row(cluster, dtype, batch, heads, seq, head_dim, causal=args.causal)
    if args.json:
        print(json.dumps({"hardware": cluster.node.name, "gpu": cluster.node.gpu.name, **row.to_json()}, indent=2))
        return 0
    print(f"on one {cluster.node.gpu.name} ({cluster.node.name}); predicted")
    shape = " x ".join(f"{name} {value}" for name, value in row.shape.items())
    print(metrics_table([{"kind": row.kind, "shape": shape, "dtype": row.dtype, "time_us": f"{row.time_us:.1f}",
                          "tflops": f"{row.tflops:.1f}"}], _KERNEL_COLUMNS))
    return 0


def _cluster(hardware: str, nodes: int, settings: list[str]) -> ClusterSpec:
    from moesim.api import cluster_of
    from moesim.overrides import parse_assignments

    return cluster_of(hardware, nodes, parse_assignments(settings))


def _choice(enum: type[E], text: str, option: str, allowed: Collection[E]) -> E:
    try:
        value = enum(text.strip().lower())
    except ValueError:
        value = None
    if value is None or value not in allowed:
        raise MoesimError(f"{option} {text!r}: allowed: {', '.join(v.value for v in allowed)}")
    return value


def _ints(text: str, option: str, names: tuple[str, ...]) -> tuple[int, ...]:
    parts = text.split(",")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != len(names):
        raise MoesimError(f"{option} {text!r}: expected {','.join(names)} as {len(names)} integers, e.g. "
                          f"{','.join(['4096'] * len(names))}")
    return values
