"""Judge params sections with per-profile overrides.

A section may carry ``per_profile: {tiny: {...}, real: {...}}``: the active profile's entries
replace the section's own before it becomes a typed config. The tiny random-init judge needs
full fine-tuning and a large learning rate; the real 7B judge keeps the paper-like defaults.
"""

from __future__ import annotations

from typing import Any, TypeVar

from onereward.config import Profile, active_profile, from_dict, load_params

T = TypeVar("T")

OVERRIDES_KEY = "per_profile"


def merged_section(name: str, profile_name: str, params: dict[str, Any]) -> dict[str, Any]:
    if name not in params:
        raise ValueError(f"params.yaml has no section {name!r}")
    data = dict(params[name] or {})
    overrides = data.pop(OVERRIDES_KEY, None) or {}
    unknown = sorted(set(overrides) - set(params.get("profiles", {}) or {}))
    if unknown and params.get("profiles"):
        raise ValueError(f"params.{name}.{OVERRIDES_KEY}: unknown profile(s) {unknown}")
    data.update(overrides.get(profile_name) or {})
    return data


def judge_section(cls: type[T], name: str, params: dict[str, Any] | None = None) -> tuple[T, Profile]:
    """(typed section ``name`` with the active profile's overrides applied, the profile)."""
    params = load_params() if params is None else params
    profile = active_profile(params)
    return from_dict(cls, merged_section(name, profile.name, params), f".{name}"), profile
