"""Model presets (``workloads/*.yaml``) and the loader that turns one into a validated Workload.

A preset file has two sections, ``model`` (ModelConfig fields) and ``training`` (TrainingConfig
fields), plus an optional ``description``. Presets are read through importlib.resources from the
package ``moesim.workloads`` (the repository's top-level ``workloads/`` folder, mapped by
pyproject); from a plain checkout without an install, the folder next to the package is used. A ``.json``
path is a traced workload (``moesim.workload.traced``); ``traced/<name>`` names one bundled in
``workloads/traced/``.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from moesim.errors import MoesimError
from moesim.overrides import apply_overrides, one_line, split_scopes
from moesim.workload.config import ModelConfig, TrainingConfig, Workload
from moesim.workload.traced import is_traced, load_traced

_SECTIONS = ("model", "training")
TRACED_DIR = "traced"  # bundled traced workloads: workloads/traced/<name>.json, named traced/<name>
_TOP_LEVEL = frozenset({"description", *_SECTIONS})

S = TypeVar("S", bound=BaseModel)


def list_model_presets() -> list[str]:
    """Names of the bundled model presets, sorted."""
    names = (path.name for path in _preset_dir().iterdir())
    return sorted(name[: -len(".yaml")] for name in names if name.endswith(".yaml"))


def list_traced_presets() -> list[str]:
    """Names of the bundled traced workloads (``workloads/traced/*.json``), as ``traced/<name>``, sorted."""
    folder = _preset_dir() / TRACED_DIR
    if not folder.is_dir():
        return []
    return sorted(f"{TRACED_DIR}/{path.name[: -len('.json')]}" for path in folder.iterdir()
                  if path.name.endswith(".json"))


def load_workload(model: str | Path, *, num_gpus: int, gpu: str,
                  overrides: Mapping[str, Any] | None = None) -> Workload:
    """A Workload from a preset name or a YAML path, for ``num_gpus`` GPUs of preset ``gpu``.

    ``overrides`` keys are dotted and scoped ``model.`` or ``training.`` (``{"training.batch_per_gpu": 4}``).
    Unless the batch is overridden, it comes from the preset's per-GPU table for ``gpu`` (see
    ``TrainingConfig.batch_for``). Every bad input raises MoesimError with a one-line message.
    """
    if isinstance(model, str) and model.startswith(f"{TRACED_DIR}/"):
        if model not in list_traced_presets():
            raise MoesimError(f"model {model!r}: unknown traced workload; allowed: "
                              f"{', '.join(list_traced_presets()) or 'none bundled'} or a path to a .json file")
        with importlib.resources.as_file(_preset_dir() / f"{model}.json") as path:
            return load_traced(path, num_gpus=num_gpus, overrides=overrides)
    if is_traced(model):
        return load_traced(model, num_gpus=num_gpus, overrides=overrides)
    name, raw = _read(model)
    scoped = split_scopes(overrides or {}, _SECTIONS)
    model_config = apply_overrides(_section(ModelConfig, raw, "model", name), scoped["model"], where="model.")
    training = apply_overrides(_section(TrainingConfig, raw, "training", name), scoped["training"],
                               where="training.")
    if "batch_per_gpu" not in scoped["training"]:
        training = training.model_copy(update={"batch_per_gpu": training.batch_for(gpu)})
    try:
        return Workload(model=model_config, training=training, num_gpus=num_gpus, preset=name)
    except ValidationError as err:
        raise MoesimError(one_line(err)) from None


def _read(model: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(model)
    if isinstance(model, str) and path.suffix not in (".yaml", ".yml"):
        candidate = _preset_dir() / f"{model}.yaml"
        if not candidate.is_file():
            raise MoesimError(f"model {model!r}: unknown preset; allowed: {', '.join(list_model_presets())}"
                              " or a path to a .yaml file")
        text, name = candidate.read_text(encoding="utf-8"), model
    else:
        if not path.is_file():
            raise MoesimError(f"model {str(model)!r}: no such file")
        text, name = path.read_text(encoding="utf-8"), path.stem
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MoesimError(f"model {name!r}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not set(raw) <= _TOP_LEVEL or not set(_SECTIONS) <= set(raw):
        raise MoesimError(f"model {name!r}: expected top-level keys model, training (and description)")
    return name, raw


def _section(spec: type[S], raw: dict[str, Any], section: str, name: str) -> S:
    try:
        return spec.model_validate(raw[section])
    except ValidationError as err:
        raise MoesimError(one_line(err, prefix=f"{name}: {section}.")) from None


def _preset_dir() -> Any:
    """The bundled presets folder (a Traversable, or the checkout's ``workloads/`` path)."""
    try:
        return importlib.resources.files("moesim.workloads")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "workloads"
