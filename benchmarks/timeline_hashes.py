"""A digest of every predicted timeline: proof that a refactor left the predictions byte-identical.

    python benchmarks/timeline_hashes.py [--cpu-spec PATH] [--out hashes.txt]

For every model preset x schedule (defaults, and the grad_sync modes priority and packed) on one CPU
spec (default: benchmarks/specs/cpu-host.yaml, a calibrated file that sets the host effects) and on 2 x p4de.24xlarge
and 2 x dgx-h100, plus Zipf-routed two-block variants (every rank simulated), prints one line per case: the SHA-256
of its spans (every field, floats as their exact hex) and the iteration time. Run it before and after a
change and diff the outputs; the last line digests all of them.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import replace
from pathlib import Path

from moesim.api import run_schedule, scenario
from moesim.errors import MoesimError
from moesim.schedules import registered
from moesim.timeline import Timeline
from moesim.workload.presets import list_model_presets

# Zipf routing makes ranks uneven, so every rank is simulated: models cut to a few layers keep that fast.
ZIPF = {"training.routing.kind": "zipf", "training.routing.alpha": 1.2, "model.num_layers": 2}
SETTINGS = [{}, {"grad_sync": "priority"}, {"grad_sync": "packed"}]


def digest(timeline: Timeline) -> str:
    sha = hashlib.sha256()
    for s in timeline.spans:
        fields = (s.rank, s.stream.value, s.task, s.op, s.name, s.kind.value, s.phase.value, s.layer,
                  float(s.start).hex(), float(s.end).hex(), float(s.flops).hex(), float(s.bytes).hex())
        sha.update(repr(fields).encode())
    return sha.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-spec", default=str(Path(__file__).resolve().parent / "specs" / "cpu-host.yaml"))
    parser.add_argument("--out", default=None, help="also write the lines here")
    args = parser.parse_args()
    clusters = [(args.cpu_spec, 1), ("p4de.24xlarge", 2), ("dgx-h100", 2)]
    lines = []
    total = hashlib.sha256()
    for hardware, nodes in clusters:
        shown = Path(hardware).stem if hardware.endswith((".yaml", ".yml")) else hardware  # the same in any checkout
        for model in list_model_presets():
            for variant, overrides in (("", {}), ("+zipf", ZIPF)):
                try:
                    scn = scenario(model, hardware, nodes, overrides)
                except MoesimError as err:  # a preset that does not fit this cluster
                    lines.append(f"{model}{variant} {shown} x{nodes}: {err}")
                    continue
                for schedule in registered():
                    for settings in SETTINGS:
                        result = run_schedule(replace(scn, schedule_settings=settings), schedule)
                        label = ",".join(f"{k}={v}" for k, v in settings.items()) or "default"
                        line = (f"{model}{variant} {shown} x{nodes} {schedule} {label} "
                                f"{digest(result.timeline)} {result.metrics.iteration_time_s!r}")
                        lines.append(line)
                        print(line, flush=True)
    for line in lines:
        total.update(line.encode())
    print(f"all {len(lines)} {total.hexdigest()}")
    if args.out:
        with open(args.out, "w") as out:
            out.write("\n".join(lines) + f"\nall {len(lines)} {total.hexdigest()}\n")


if __name__ == "__main__":
    main()
