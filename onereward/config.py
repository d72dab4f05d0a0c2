"""Typed configuration: ``params.yaml`` sections become dataclasses.

Each stage reads only its own section plus the active profile. Unknown keys are an
error (a typo in params must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PARAMS_FILE = Path("params.yaml")


@dataclasses.dataclass(frozen=True)
class Profile:
    """Which models and data every stage uses: the tiny embedded default or the real setup."""

    name: str
    """'tiny' (built in code, offline, CPU) or 'real' (FLUX.1-Fill-dev + Qwen2.5-VL-7B)."""
    dataset: str
    """Root of the raw annotation set (records.jsonl + images), see docs/data-format.md."""
    judge_model: str
    """Local path or model id of the Qwen2.5-VL judge base."""
    policy_model: str
    """Local path or model id of the FLUX.1-Fill policy base."""
    device: str = "cpu"
    """torch device for training and inference."""
    dtype: str = "float32"
    """Weights and compute dtype: float32 on CPU, bfloat16 on GPU."""

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"params{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"params{where}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value, where)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def section(cls: type[T], name: str, params: dict[str, Any] | None = None) -> T:
    """The typed config of params section ``name``."""
    params = load_params() if params is None else params
    if name not in params:
        raise ValueError(f"params.yaml has no section {name!r}")
    return from_dict(cls, params[name], f".{name}")


def active_profile(params: dict[str, Any] | None = None) -> Profile:
    """The profile selected by the top-level ``profile`` key."""
    return section(Profile, "profile", params)
