"""`moesim ...`: parse, call the library, print or write. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn, TextIO

from moesim.errors import DeadlockError, MoesimError
from moesim.files import write_atomically

if TYPE_CHECKING:  # the commands import what they use when they run: `moesim --help` stays quick
    from moesim.workload.ops import OpGraph

EXIT_BAD_INPUT = 2

DEFAULT_MODEL = "gpt2-s-moe"
DEFAULT_HARDWARE = "p3dn.24xlarge"
DEFAULT_NODES = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise MoesimError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return int(args.handler(args))
    except (MoesimError, DeadlockError) as err:
        print(f"moesim: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moesim", description="Simulate MoE training schedules on GPU clusters.")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    listing = commands.add_parser("list", help="presets and schedules")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    run = commands.add_parser("run", help="simulate one schedule")
    _scenario_options(run)
    run.add_argument("--schedule", default="sequential")
    run.add_argument("--trace", type=Path, help="write a Chrome/Perfetto trace (JSON) here")
    _plot_options(run, "write a Gantt chart (PNG) here", "layer range A-B to show, e.g. 2-3")
    run.set_defaults(handler=cmd_run)

    compare = commands.add_parser("compare", help="simulate several schedules on the same inputs")
    _scenario_options(compare)
    compare.add_argument("--schedules", help="comma-separated names (default: every registered schedule)")
    _plot_options(compare, "write the schedules' Gantt charts (PNG) here",
                  "layer range A-B to show (default: the middle MoE block)")
    compare.set_defaults(handler=cmd_compare)

    calibrate = commands.add_parser("calibrate", help="microbenchmark this machine and fit the cost model")
    calibrate.add_argument("--name", default="cpu-local", help="name of the calibrated spec (default cpu-local)")
    calibrate.add_argument("--base", default="cpu-loopback", help="spec whose structure the fit fills in")
    calibrate.add_argument("--nproc", type=int, default=2, help="ranks on this machine (default 2)")
    calibrate.add_argument("--out-dir", type=Path, default=None,
                           help="where to write <name>.yaml (default ./hardware_specs/calibrated)")
    calibrate.add_argument("--quick", action="store_true", help="smaller sweeps (about 30 s)")
    calibrate.add_argument("--json", action="store_true")
    calibrate.set_defaults(handler=cmd_calibrate)

    trace = commands.add_parser("trace", help="train the reference PyTorch model here and write a traced workload")
    trace.add_argument("--model", default="tiny-moe-a", help="model preset name or YAML path (default tiny-moe-a)")
    trace.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                       help="model.* / training.* override (repeatable)")
    trace.add_argument("--nproc", type=int, default=2, help="ranks on this machine (default 2)")
    trace.add_argument("--steps", type=int, default=3, help="timed training steps before the traced one")
    trace.add_argument("--out", type=Path, required=True, help="the traced workload file to write (.json)")
    trace.add_argument("--kineto", nargs="+", type=Path, metavar="RANK.json",
                       help="import these torch.profiler traces of a run of --model (one per rank) instead of running")
    trace.set_defaults(handler=cmd_trace)

    validate = commands.add_parser("validate", help="predict and measure whole iterations on this machine")
    validate.add_argument("--hardware", default="cpu-local", help="calibrated spec (see moesim calibrate)")
    validate.add_argument("--calibrate", action="store_true", help="calibrate --hardware first")
    validate.add_argument("--reference", action="store_true",
                          help="the reference PyTorch model's real step, predicted from its config and its trace")
    validate.add_argument("--published", action="store_true",
                          help="predict every published measurement (validation/published/) and report the errors")
    validate.add_argument("--fit", action="store_true", help="with --published: fit the presets' efficiencies and "
                          "latencies to the points outside the held-out third first, and predict with the fit")
    validate.add_argument("--models", default="tiny-moe-a,tiny-moe-b", help="comma-separated workloads")
    validate.add_argument("--nproc", type=int, default=2)
    validate.add_argument("--warmup", type=int, default=2)
    validate.add_argument("--iterations", type=int, default=5)
    validate.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                          help="model./training. overrides for every workload")
    validate.add_argument("--traces", type=Path, help="write predicted and measured Chrome traces here")
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(handler=cmd_validate)

    from moesim.cli_primitives import add_commands

    add_commands(commands, DEFAULT_HARDWARE)

    parser.set_defaults(handler=lambda _args: cmd_compare(compare.parse_args([])))
    return parser


def _plot_options(sub: argparse.ArgumentParser, plot_help: str, layers_help: str) -> None:
    sub.add_argument("--plot", type=Path, help=plot_help)
    sub.add_argument("--layers", help=f"with --plot: {layers_help}")


def _scenario_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--model", default=DEFAULT_MODEL, help="model preset name or YAML path")
    sub.add_argument("--hardware", default=DEFAULT_HARDWARE, help="node preset name or YAML path")
    sub.add_argument("--nodes", type=int, default=DEFAULT_NODES)
    sub.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                     help="override, e.g. training.batch_per_gpu=8, cost.compute_slowdown_under_comm=0")
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.add_argument("--train-tokens", type=_token_count, metavar="N",
                     help="also say how long and, where the node has a price, how much training N tokens takes "
                          "(e.g. 1e12)")


def cmd_list(args: argparse.Namespace) -> int:
    from moesim.hardware.presets import list_gpu_presets, list_node_presets
    from moesim.schedules import registered
    from moesim.workload.presets import list_model_presets, list_traced_presets

    schedules = {name: s.description for name, s in registered().items()}
    listing: dict[str, object] = {
        "models": list(list_model_presets()),
        "traced": list(list_traced_presets()),
        "hardware": list(list_node_presets()),
        "gpus": list(list_gpu_presets()),
        "schedules": schedules,
    }
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    print("models:    " + ", ".join(list_model_presets()))
    print("traced:    " + (", ".join(list_traced_presets()) or "-") + "   (moesim trace writes more)")
    print("hardware:  " + ", ".join(list_node_presets()) + "   (--nodes N makes a cluster of N nodes)")
    print("gpus:      " + ", ".join(list_gpu_presets()))
    print("schedules:")
    for name, description in schedules.items():
        print(f"  {name:<12} {description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from moesim.api import run_schedule, scenario
    from moesim.cli_tables import print_run, result_json
    from moesim.overrides import parse_assignments

    layers = _layer_range(args.layers)
    _check_writable(args.trace, "--trace")
    _check_writable(args.plot, "--plot")
    result = run_schedule(scenario(args.model, args.hardware, args.nodes, parse_assignments(args.settings)),
                          args.schedule)
    if args.trace:
        write_atomically(args.trace, result.write_chrome_trace)
    if args.plot:
        write_atomically(args.plot, lambda path: result.plot_timeline(layers=layers, path=path))
    if args.json:
        print(json.dumps(result_json(result, args.train_tokens), indent=2))
    else:
        print_run(result, args.train_tokens)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from moesim.analysis.gantt import plot_timelines
    from moesim.api import compare
    from moesim.cli_tables import comparison, print_compare, result_json
    from moesim.overrides import parse_assignments

    layers = _layer_range(args.layers)
    _check_writable(args.plot, "--plot")
    names = [n.strip() for n in args.schedules.split(",") if n.strip()] if args.schedules else None
    results = compare(args.model, args.hardware, args.nodes, names, **parse_assignments(args.settings))
    if args.plot:
        timelines = {r.schedule: r.timeline for r in results}
        shown = layers if layers is not None else _one_moe_block(results[0].scenario.graph)
        write_atomically(args.plot, lambda path: plot_timelines(timelines, layers=shown, path=path))
    if args.json:
        print(json.dumps([result_json(r, args.train_tokens, row) for r, row in zip(results, comparison(results),
                                                                                   strict=True)], indent=2))
    else:
        print_compare(results, args.train_tokens)
    return 0


def cmd_calibrate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Calibrate; the report goes to ``out`` (stdout by default)."""
    from moesim.hardware.presets import user_calibrated_dir

    calibrate = _validation("calibrate").calibrate
    out_dir = args.out_dir or user_calibrated_dir()
    print(f"calibrating {args.nproc} ranks on this machine (microbenchmarks only) ...", file=sys.stderr)
    result = calibrate(args.name, base=args.base, nproc=args.nproc, out_dir=out_dir, quick=args.quick)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2), file=out or sys.stdout)
    else:
        print(result.summary(), file=out or sys.stdout)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from moesim.overrides import parse_assignments

    if args.out.suffix != ".json":
        raise MoesimError(f"--out {args.out}: a traced workload is a .json file")
    _check_writable(args.out, "--out")
    tracer = _validation("reference.trace")
    if args.kineto:
        traced = tracer.import_kineto(args.model, args.kineto, args.out, overrides=parse_assignments(args.settings),
                                      settings=args.settings)
    else:
        print(f"training {args.model} on {args.nproc} ranks and tracing one step ...", file=sys.stderr)
        traced = tracer.trace_model(args.model, args.out, overrides=parse_assignments(args.settings),
                                    settings=args.settings, nproc=args.nproc, steps=args.steps)
    ranks = traced.recorded.ranks
    covered = sum(1 for op in traced.ops if op.measured_s is not None)
    timed = sum(1 for op in traced.ops if not op.kind.is_collective)
    print(f"wrote {args.out}: {traced.description}; {covered} of {timed} compute ops measured; traced step "
          + ", ".join(f"rank {r.rank} {r.step_s * 1e3:.1f} ms ({r.unattributed_s / r.step_s:.0%} outside the ops)"
                      for r in ranks))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from moesim.overrides import parse_assignments

    _check_writable(args.traces, "--traces")
    if args.published:
        if args.reference or args.calibrate:
            raise MoesimError("--published predicts published points alone: not with --reference or --calibrate")
        from moesim.validation.published_fit import report

        print(report(refit=args.fit, as_json=args.json))
        return 0
    if args.fit:
        raise MoesimError("--fit fits the presets to the published points: use it with --published")
    if args.calibrate:  # its summary on stderr under --json, so stdout stays one JSON document
        cmd_calibrate(argparse.Namespace(name=args.hardware, base="cpu-loopback", nproc=args.nproc, out_dir=None,
                                         quick=False, json=False), out=sys.stderr if args.json else None)
    if args.reference:
        reference = _validation("reference.validate")
        print(f"tracing, timing and predicting the reference model on {args.nproc} ranks with {args.hardware} ...",
              file=sys.stderr)
        result = reference.validate_reference(args.hardware, nproc=args.nproc, warmup=args.warmup,
                                              steps=args.iterations)
        print(json.dumps(result.to_dict(), indent=2) if args.json else result.text())
        return 0
    report_module = _validation("report")
    workloads = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"validating {', '.join(workloads)} on {args.nproc} ranks with {args.hardware} ...", file=sys.stderr)
    report = report_module.validate(args.hardware, workloads=workloads, nproc=args.nproc, warmup=args.warmup,
                                    iterations=args.iterations, overrides=parse_assignments(args.settings),
                                    trace_dir=args.traces)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report_module.render_text(report))
    return 0


def _validation(module: str) -> ModuleType:
    """A harness module; it needs torch (the validation extra)."""
    import importlib

    try:
        return importlib.import_module(f"moesim.validation.{module}")
    except ModuleNotFoundError as err:
        if err.name == "torch":
            raise MoesimError("this command needs torch: pip install 'moesim[validation]'") from None
        raise


def _one_moe_block(graph: OpGraph) -> tuple[int, int]:
    """The middle MoE block: where a comparison of overlap is easiest to see."""
    middle = graph.moe_layers[len(graph.moe_layers) // 2]
    return middle, middle


def _token_count(text: str) -> float:
    try:
        tokens = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens; e.g. 1e12") from None
    if not 1 <= tokens < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a finite number of tokens >= 1")
    return tokens


def _layer_range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    first, sep, last = text.partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise MoesimError(f"--layers {text!r}: expected A-B with layer indices, e.g. 2-3") from None
    if low < 0 or high < low:
        raise MoesimError(f"--layers {text!r}: need 0 <= A <= B")
    return low, high


def _check_writable(path: Path | None, option: str) -> None:
    """Before any work: ``path``'s folder exists or can be made (its nearest existing ancestor is a folder)."""
    if path is None:
        return
    folder = path.parent.resolve()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise MoesimError(f"{option} {path}: {folder} is not a directory")


if __name__ == "__main__":
    sys.exit(main())
