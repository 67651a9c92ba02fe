"""`moesim trace`: run the reference model on this machine, trace one step, write a traced workload file;
or import the Kineto (torch.profiler) traces of such a run made elsewhere (``import_kineto``).

The ranks (``moesim.validation.reference.train --trace`` under torchrun) train the model for a few steps,
profile one more and attribute its time to moesim's op names; this process turns their JSON into a
``moesim.workload.traced`` file. Torch is not imported here: only the ranks run it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moesim.errors import MoesimError
from moesim.overrides import one_line
from moesim.validation.launch import torchrun
from moesim.workload.config import Workload
from moesim.workload.presets import load_workload
from moesim.workload.recorded import RecordedRun
from moesim.workload.traced import TracedWorkloadFile, TraceSource, is_traced, recorded_from_reference, write_traced

WORKER = "moesim.validation.reference.train"
CPU_DEVICE = "cpu-rank"  # the device name of moesim's CPU specs (cpu-loopback, calibrated cpu-local)
# torch.cuda.get_device_name substrings -> moesim GPU presets, most specific first
_GPU_NAMES = (("H200", "H200-SXM-141GB"), ("H100", "H100-SXM5-80GB"), ("A100-SXM4-80GB", "A100-SXM4-80GB"),
              ("A100 80GB", "A100-SXM4-80GB"), ("A100", "A100-SXM4-40GB"), ("V100", "V100-SXM2-32GB"),
              ("B200", "B200"), ("MI300X", "MI300X"))


def gpu_preset(reported: str) -> str:
    """The moesim GPU preset a CUDA device name (``torch.cuda.get_device_name``) identifies, else the name."""
    return next((preset for key, preset in _GPU_NAMES if key in reported), reported)


def device_of(environment: Mapping[str, Any]) -> str:
    """The moesim GPU name of the device a run used (its ``environment``): ``cpu-rank`` for gloo on CPU, else
    ``gpu_preset`` of the device name reported."""
    if environment.get("backend") == "gloo":
        return CPU_DEVICE
    return gpu_preset(str((environment.get("devices") or ["unknown"])[0]))


def trace_model(model: str | Path, out: str | Path, *, overrides: Mapping[str, Any] | None = None,
                settings: Sequence[str] = (), nproc: int = 2, steps: int = 3, warmup: int = 1,
                timeout_s: float = 900.0, kineto_dir: Path | None = None, trace_steps: int = 1) -> TracedWorkloadFile:
    """Trace ``model`` (a preset or YAML, with ``settings`` as the CLI's ``--set`` strings and ``overrides``
    their parsed form) on ``nproc`` local ranks and write the traced workload to ``out``; with
    ``kineto_dir``, the ranks also write their (last) profiled step there as Kineto traces (``rank{r}.json``).
    ``trace_steps`` steps are profiled; each op's time is its median over them."""
    if is_traced(model):
        raise MoesimError(f"model {str(model)!r}: trace a preset or a YAML model, not a traced file")
    load_workload(model, num_gpus=nproc, gpu=CPU_DEVICE, overrides=overrides)  # bad input fails before the run
    with tempfile.TemporaryDirectory(prefix="moesim-trace-") as scratch:
        measured = Path(scratch) / "reference.json"
        arguments = ["--model", str(model), "--steps", str(steps), "--warmup", str(warmup), "--trace",
                     "--trace-steps", str(trace_steps), "--out", str(measured)]
        for setting in settings:
            arguments += ["--set", setting]
        if kineto_dir is not None:
            arguments += ["--kineto-dir", str(kineto_dir)]
        torchrun(WORKER, arguments, nproc, timeout_s=timeout_s)
        result = json.loads(measured.read_text(encoding="utf-8"))
    environment = result.get("environment", {})
    device = device_of(environment)
    base = load_workload(model, num_gpus=nproc, gpu=device, overrides=overrides)
    source = TraceSource(tool="moesim trace", traced_at=datetime.now(UTC), torch=environment.get("torch"),
                         backend=environment.get("backend"), steps=len(result.get("step_times_s", [])),
                         median_step_s=result.get("median_step_s"),
                         step_times_s=tuple(result.get("step_times_s", ())))
    return _write(out, base, recorded_from_reference(result, device), source,
                  f"traced on {nproc} x {device}", settings)


def import_kineto(model: str | Path, paths: Sequence[str | Path], out: str | Path, *,
                  overrides: Mapping[str, Any] | None = None, settings: Sequence[str] = ()) -> TracedWorkloadFile:
    """A traced workload from the Kineto traces of one run of ``model`` (one file per rank, as
    ``train --trace --kineto-dir`` writes them; forward ops labelled with moesim's op names), written to
    ``out``. The device is ``cpu-rank`` for a gloo run, else the GPU preset the traces' device names."""
    from moesim.validation.reference.from_kineto import read_ranks, recorded_from_ranks

    if is_traced(model):
        raise MoesimError(f"model {str(model)!r}: name the model the traces ran (a preset or YAML), not a traced file")
    if not paths:
        raise MoesimError("--kineto: give one trace file per rank")
    ranks = read_ranks([Path(p) for p in paths], len(paths))
    device = device_of({"backend": ranks[0].backend, "devices": list(ranks[0].device_names) or ["unknown"]})
    base = load_workload(model, num_gpus=len(paths), gpu=device, overrides=overrides)
    source = TraceSource(tool="moesim trace --kineto", traced_at=datetime.now(UTC), backend=ranks[0].backend)
    return _write(out, base, recorded_from_ranks(ranks, base, device),
                  source, f"imported from {len(paths)} Kineto traces on {device}", settings)


def _write(out: str | Path, base: Workload, recorded: RecordedRun, source: TraceSource, how: str,
           settings: Sequence[str]) -> TracedWorkloadFile:
    """``base`` with its ``recorded`` run, checked together, written to ``out``."""
    try:
        workload = Workload(model=base.model, training=base.training, num_gpus=base.num_gpus, preset=base.preset,
                            recorded=recorded)
    except ValidationError as err:  # the run disagrees with its own config
        raise MoesimError(one_line(err, prefix=f"the run of {base.preset}: ")) from None
    description = f"{base.preset} {how}" + (f" ({', '.join(settings)})" if settings else "")
    return write_traced(out, name=Path(out).stem, workload=workload, source=source, description=description)
