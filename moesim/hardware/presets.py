"""Hardware presets: YAML files under ``hardware_specs/`` (the package ``moesim.hardware_specs``).

Layout: ``gpus/<name>.yaml`` (a GPUSpec), ``nodes/<name>.yaml`` (a NodeSpec whose ``gpu`` names a GPU
preset or is an inline mapping) and ``calibrated/<name>.yaml`` (a NodeSpec written by calibration).
A node name resolves in ``nodes/`` first, then in ``calibrated/``, then in
``./hardware_specs/calibrated/`` of the working directory (where `moesim calibrate` writes when the
package is installed elsewhere). Every problem a user can cause
raises MoesimError with a one-line message naming the field or listing what is available.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from moesim.errors import MoesimError
from moesim.hardware.specs import ClusterSpec, GPUSpec, NodeSpec
from moesim.overrides import apply_overrides, one_line

_GPUS = "gpus"
_NODE_FOLDERS = ("nodes", "calibrated")
_SUFFIX = ".yaml"
_GPU_KEY = "node.gpu"

_M = TypeVar("_M", GPUSpec, NodeSpec)


def list_gpu_presets() -> list[str]:
    """Names of the GPU presets, sorted."""
    return _names(_GPUS)


def list_node_presets() -> list[str]:
    """Names of the node presets (hand-written and calibrated), sorted."""
    packaged = {name for folder in _NODE_FOLDERS for name in _names(folder)}
    return sorted(packaged | set(_entries(user_calibrated_dir())))


def load_gpu(name: str) -> GPUSpec:
    """The GPU preset ``name``, validated."""
    data = gpu_preset_data(name)
    return _validate(GPUSpec, data, source=f"{_GPUS}/{name}{_SUFFIX}")


def gpu_preset_data(name: str) -> dict[str, Any]:
    """The raw mapping of GPU preset ``name`` (NodeSpec validates it as its ``gpu``)."""
    entry = _specs_root().joinpath(_GPUS, name + _SUFFIX)
    if not entry.is_file():
        raise MoesimError(f"gpu: unknown GPU preset {name!r}; available: {', '.join(list_gpu_presets())}")
    return _read_mapping(entry, source=f"{_GPUS}/{name}{_SUFFIX}")


def load_node(hardware: str | Path) -> NodeSpec:
    """A node preset by name, or a node YAML file by path; a ``gpu`` given by name is the GPU preset's spec."""
    entry, source = _locate_node(hardware)
    data = _read_mapping(entry, source=source)
    if isinstance(data.get("gpu"), str):
        data["gpu"] = gpu_preset_data(data["gpu"])
    return _validate(NodeSpec, data, source=source)


def load_cluster(
    hardware: str | Path,
    nodes: int = 1,
    overrides: Mapping[str, Any] | None = None,
    *,
    where: str = "",
) -> ClusterSpec:
    """``nodes`` copies of the node ``hardware`` (preset name or YAML path), with dotted ``overrides``
    relative to the cluster (``{"node.network.nic_gbps": 200}``, ``{"num_nodes": 4}``) applied last.
    ``where`` prefixes override keys in error messages (e.g. ``"hardware."`` for the CLI scope)."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise MoesimError(f"nodes: must be an integer >= 1, got {nodes!r}")
    cluster = ClusterSpec(node=load_node(hardware), num_nodes=nodes)
    updates = dict(overrides or {})
    if isinstance(updates.get(_GPU_KEY), str):  # a GPU preset by name swaps the node's GPU
        updates[_GPU_KEY] = gpu_preset_data(updates[_GPU_KEY])
    return apply_overrides(cluster, updates, where=where)


def _locate_node(hardware: str | Path) -> tuple[Traversable, str]:
    if isinstance(hardware, Path) or hardware.endswith((".yaml", ".yml")) or "/" in hardware:
        path = Path(hardware)
        if not path.is_file():
            raise MoesimError(f"hardware: no such file {str(path)!r}")
        return path, str(path)
    for folder in _NODE_FOLDERS:
        entry = _specs_root().joinpath(folder, hardware + _SUFFIX)
        if entry.is_file():
            return entry, f"{folder}/{hardware}{_SUFFIX}"
    user = user_calibrated_dir() / (hardware + _SUFFIX)
    if user.is_file():
        return user, str(user)
    available = ", ".join(list_node_presets())
    if hardware in list_gpu_presets():
        raise MoesimError(f"hardware: {hardware!r} is a GPU preset, name a node preset: {available}")
    raise MoesimError(f"hardware: unknown node preset {hardware!r}; available: {available}")


def _read_mapping(entry: Traversable, *, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(entry.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise MoesimError(f"{source}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise MoesimError(f"{source}: expected a mapping of fields at the top level")
    return data


def _validate(model: type[_M], data: dict[str, Any], *, source: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise MoesimError(one_line(err, prefix=f"{source}: ")) from None


def user_calibrated_dir() -> Path:
    """Where calibrations of this working directory live: ``./hardware_specs/calibrated``."""
    return Path.cwd() / "hardware_specs" / "calibrated"


def _names(folder: str) -> list[str]:
    return _entries(_specs_root().joinpath(folder))


def _entries(directory: Traversable) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(e.name[: -len(_SUFFIX)] for e in directory.iterdir() if e.name.endswith(_SUFFIX))


def _specs_root() -> Traversable:
    try:
        return resources.files("moesim.hardware_specs")
    except ModuleNotFoundError:
        # A source checkout used without installing: the data folder sits beside the package.
        return Path(__file__).resolve().parents[2] / "hardware_specs"
