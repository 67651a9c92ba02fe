"""`--set a.b=value` overrides, applied to frozen pydantic specs and re-validated.

Values are parsed as YAML scalars (``8`` -> int, ``0.5`` -> float, ``false`` -> bool, ``auto`` ->
str), so the command line and the YAML files agree on types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from moesim.errors import MoesimError

M = TypeVar("M", bound=BaseModel)


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; a malformed item raises MoesimError."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MoesimError(f"--set {item!r}: expected key=value, e.g. training.batch_per_gpu=8")
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            parsed[key.strip()] = raw
    return parsed


def split_scopes(overrides: Mapping[str, Any], scopes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Group ``{"training.x": 1}`` by its first component; an unknown scope raises MoesimError."""
    grouped: dict[str, dict[str, Any]] = {scope: {} for scope in scopes}
    for key, value in overrides.items():
        scope, _, rest = key.partition(".")
        if scope not in grouped or not rest:
            raise MoesimError(f"--set {key}: key must start with one of {', '.join(s + '.' for s in scopes)}")
        grouped[scope][rest] = value
    return grouped


def apply_overrides(spec: M, updates: Mapping[str, Any], *, where: str = "") -> M:
    """A copy of ``spec`` with dotted ``updates`` applied and validated again.

    Unknown keys and invalid values raise MoesimError naming the full key and what is allowed.
    """
    if not updates:
        return spec
    data = spec.model_dump(mode="python")
    for dotted, value in updates.items():
        _assign(data, type(spec), dotted.split("."), value, f"{where}{dotted}")
    try:
        return type(spec).model_validate(data)
    except ValidationError as err:
        raise MoesimError(one_line(err, prefix=where)) from None


def _assign(data: dict[str, Any], model: type[BaseModel] | None, path: list[str], value: Any, full: str) -> None:
    head, rest = path[0], path[1:]
    if model is not None and head not in model.model_fields:
        allowed = ", ".join(sorted(model.model_fields))
        raise MoesimError(f"unknown setting {full!r}: {head!r} is not one of {allowed}")
    if not rest:
        data[head] = value
        return
    child = data.get(head)
    if not isinstance(child, dict):
        raise MoesimError(f"unknown setting {full!r}: {head!r} has no sub-fields")
    annotation = model.model_fields[head].annotation if model is not None else None
    child_model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    _assign(child, child_model, rest, value, full)


def one_line(err: ValidationError, *, prefix: str = "") -> str:
    """The first validation problem as ``field: message``."""
    first = err.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    return f"{prefix}{loc}: {first['msg']}" if loc else f"{prefix.rstrip('.')}: {first['msg']}"
