"""The Python API notebooks use: ``simulate`` one schedule, ``compare`` several.

    result = moesim.simulate(model="gpt2-s-moe", hardware="p3dn.24xlarge", nodes=2,
                             schedule="sequential", **{"training.batch_per_gpu": 8})
    result.metrics.iteration_time_s; result.to_dataframe(); result.write_chrome_trace("t.json")

Overrides are dotted keys scoped ``model.``, ``training.``, ``hardware.``, ``cost.`` or ``schedule.``
(the same as the CLI's ``--set``); ``training__batch_per_gpu=8`` is accepted as a keyword spelling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moesim.analysis.chrome_trace import write_chrome_trace
from moesim.analysis.metrics import Metrics, compute_metrics
from moesim.analysis.throughput import Throughput, throughput
from moesim.engine import simulate_plan
from moesim.errors import MoesimError
from moesim.hardware.cost import RooflineCostModel
from moesim.hardware.presets import load_cluster
from moesim.hardware.specs import ClusterSpec
from moesim.overrides import apply_overrides, split_scopes
from moesim.plan import Decisions, ExecutionPlan
from moesim.schedules import get_schedule, registered
from moesim.timeline import Timeline
from moesim.workload.builder import build_graph
from moesim.workload.config import Workload
from moesim.workload.ops import OpGraph
from moesim.workload.presets import load_workload

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

SCOPES = ("model", "training", "hardware", "cost", "schedule")


@dataclass(frozen=True, slots=True, eq=False)
class Scenario:
    """Everything but the schedule: the cluster, the workload and its op graph, the cost model."""

    model: str
    hardware: str
    nodes: int
    cluster: ClusterSpec
    workload: Workload
    graph: OpGraph
    cost: RooflineCostModel
    schedule_settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class SimulationResult:
    scenario: Scenario
    plan: ExecutionPlan
    timeline: Timeline
    metrics: Metrics

    @property
    def schedule(self) -> str:
        return self.plan.schedule

    @property
    def decisions(self) -> Decisions:
        """What the schedule decided for this plan (a typed value that renders itself)."""
        return self.plan.decisions

    @property
    def throughput(self) -> Throughput:
        """Tokens/s, TFLOP/s per GPU, MFU, GPU-hours and dollars per million tokens, and training time/cost."""
        scn = self.scenario
        return throughput(self.metrics, scn.workload.tokens_per_gpu, scn.cluster, scn.cost.dtype)

    @property
    def knobs(self) -> dict[str, object]:
        """The decisions as JSON-ready data (``--json``'s ``knobs``)."""
        return self.plan.decisions.to_json()

    @property
    def knob_summary(self) -> str:
        """The decisions in one short line."""
        return self.plan.decisions.summary()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object `moesim run --json` prints."""
        facts = self.scenario.graph.require_facts("the result's JSON")
        return {
            "schedule": self.schedule,
            "model": self.scenario.model,
            "hardware": self.scenario.hardware,
            "nodes": self.scenario.nodes,
            **self.metrics.to_dict(),
            **self.throughput.to_dict(),
            "ep_size": facts.ep_size,
            "knobs": self.knobs,
        }

    def to_dataframe(self) -> pd.DataFrame:
        from moesim.analysis.tables import to_dataframe

        return to_dataframe(self.timeline)

    def write_chrome_trace(self, path: str | Path) -> Path:
        return write_chrome_trace(self.timeline, path)

    def plot_timeline(self, **kwargs: Any) -> Figure:
        from moesim.analysis.gantt import plot_timeline

        kwargs.setdefault("title", f"{self.schedule}: {self.scenario.model} on {self.scenario.nodes} x "
                                   f"{self.scenario.hardware}")
        return plot_timeline(self.timeline, **kwargs)


def scenario(
    model: str | Path = "gpt2-s-moe",
    hardware: str | Path = "p3dn.24xlarge",
    nodes: int = 1,
    overrides: Mapping[str, Any] | None = None,
) -> Scenario:
    """Load and validate the inputs once; schedules can then be planned against the result."""
    scoped = split_scopes(normalise_overrides(overrides or {}), SCOPES)
    cluster = _cluster(hardware, nodes, scoped)
    workload_updates = {f"{scope}.{key}": value for scope in ("model", "training")
                        for key, value in scoped[scope].items()}
    workload = load_workload(model, num_gpus=cluster.num_gpus, gpu=cluster.node.gpu.name,
                             overrides=workload_updates)
    recorded = workload.recorded  # a traced workload's op times hold on the device it was traced on
    measured = recorded is not None and recorded.device == cluster.node.gpu.name
    graph = build_graph(workload, measured=measured)
    if measured:
        cluster = _without_compute_interference(cluster)
    cost = RooflineCostModel(cluster, workload.training.dtype)
    return Scenario(str(model), str(hardware), nodes, cluster, workload, graph, cost, scoped["schedule"])


def cluster_of(hardware: str | Path = "p3dn.24xlarge", nodes: int = 1,
               overrides: Mapping[str, Any] | None = None) -> ClusterSpec:
    """``nodes`` x ``hardware`` with ``hardware.*`` and ``cost.*`` overrides; any other scope is an error."""
    scoped = split_scopes(normalise_overrides(overrides or {}), SCOPES)
    other = [f"{scope}.{key}" for scope in ("model", "training", "schedule") for key in scoped[scope]]
    if other:
        raise MoesimError(f"{other[0]}: only hardware.* and cost.* settings apply to a cluster alone")
    return _cluster(hardware, nodes, scoped)


def _cluster(hardware: str | Path, nodes: int, scoped: Mapping[str, Mapping[str, Any]]) -> ClusterSpec:
    if "num_nodes" in scoped["hardware"]:
        raise MoesimError("hardware.num_nodes: set the node count with --nodes (nodes= in Python)")
    cluster = load_cluster(hardware, nodes, scoped["hardware"], where="hardware.")
    if scoped["cost"]:
        cluster = cluster.with_cost(apply_overrides(cluster.cost, scoped["cost"], where="cost."))
    return cluster


def _without_compute_interference(cluster: ClusterSpec) -> ClusterSpec:
    """The cluster for a traced workload's measured ops: what concurrent collectives took from the compute
    (a slowdown, a CPU host's stolen work) is inside the measured times already, so the cost model adds none.
    What happens between ops (hand-over, rendezvous, a collective's own slowdown) stays modelled."""
    return cluster.with_cost(cluster.cost.model_copy(update={"compute_slowdown_under_comm": 0.0, "comm_cpu_us": 0.0,
                                                             "comm_cpu_us_per_mib": 0.0}))


def simulate(
    model: str | Path = "gpt2-s-moe",
    hardware: str | Path = "p3dn.24xlarge",
    nodes: int = 1,
    schedule: str = "sequential",
    **overrides: Any,
) -> SimulationResult:
    """Plan ``schedule`` for the model on ``nodes`` x ``hardware`` and simulate one iteration."""
    return run_schedule(scenario(model, hardware, nodes, overrides), schedule)


def run_schedule(scn: Scenario, schedule: str) -> SimulationResult:
    plan = get_schedule(schedule).plan_with(scn.graph, scn.cost, scn.schedule_settings)
    timeline = simulate_plan(plan, scn.cost)
    return SimulationResult(scn, plan, timeline, compute_metrics(timeline))


def compare(
    model: str | Path = "gpt2-s-moe",
    hardware: str | Path = "p3dn.24xlarge",
    nodes: int = 1,
    schedules: Sequence[str] | None = None,
    **overrides: Any,
) -> list[SimulationResult]:
    """Simulate each schedule (default: every registered one) on the same inputs.

    ``schedule.*`` settings go only to the schedules whose config knows them.
    """
    names = list(schedules) if schedules else list(registered())
    for name in names:
        get_schedule(name)
    scn = scenario(model, hardware, nodes, overrides)
    knobs = {name: get_schedule(name).config.model_fields for name in names}
    for key in scn.schedule_settings:
        if not any(key.split(".")[0] in fields for fields in knobs.values()):
            raise MoesimError(f"unknown setting 'schedule.{key}': no schedule among {', '.join(names)} has it")
    results = []
    for name in names:
        settings = {k: v for k, v in scn.schedule_settings.items() if k.split(".")[0] in knobs[name]}
        results.append(run_schedule(replace(scn, schedule_settings=settings), name))
    return results


def normalise_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``training__batch_per_gpu`` as a spelling of ``training.batch_per_gpu``."""
    normalised = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise MoesimError(f"override {key!r}: keys are dotted names such as training.batch_per_gpu")
        normalised[key.replace("__", ".")] = value
    return normalised
