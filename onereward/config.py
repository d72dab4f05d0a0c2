"""Typed configuration: ``params.yaml`` sections become dataclasses.

Each stage reads only its own section plus the active profile. Unknown keys and values of
the wrong type are an error (a typo in params must not silently fall back to a default, and
``-S synthesize.num_inputs=abc`` must stop before any work with one line saying why).

``profile`` names one entry of ``profiles``; ``dataset`` (top level, so that ``dvc.yaml`` can
interpolate it) is the raw annotation set. Both are plain scalars, because DVC rewrites
params.yaml on every ``dvc exp run -S`` and drops YAML anchors and aliases.

``python -m onereward.config [FILE]`` checks a whole params file: every section the stages
read, at once, with one line per run naming the first problem and exit status 2.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PARAMS_FILE = Path("params.yaml")
SYNTHETIC_DATASET = "data/raw"
"""Where the synthesize stage writes the embedded preference set (tiny profile only)."""

SECTIONS: dict[str, str] = {
    # params section -> the dataclass its stage builds from it ("module:Class")
    "synthesize": "onereward.data.synthetic:SynthesizeConfig",
    "shard": "onereward.data.sharding:ShardConfig",
    "base_model": "onereward.policy.pretrain:PretrainConfig",
    "judge_base": "stages.judge_base:JudgeBaseConfig",
    "queries": "stages.queries:QueriesConfig",
    "train_judge": "onereward.judge.train:TrainJudgeConfig",
    "eval_judge": "stages.eval_judge:EvalJudgeConfig",
    "train_policy": "onereward.rl.config:TrainPolicyConfig",
    "export": "onereward.export:ExportConfig",
    "evaluate": "onereward.eval.config:EvaluateConfig",
    "numerics": "onereward.numerics:NumericsConfig",
    "generation": "onereward.policy.known:GenerationConfig",
}
"""What :func:`check_params` validates; a section with ``per_profile`` is checked as the
active profile sees it."""


class ParamsError(ValueError):
    """A params value that no stage can run with; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Profile:
    """Which models and data every stage uses: the tiny embedded default or the real setup."""

    name: str
    """'tiny' (built in code, offline, CPU) or 'real' (FLUX.1-Fill-dev + Qwen2.5-VL-7B)."""
    dataset: str
    """Root of the raw annotation set (records.jsonl + images), see docs/data-format.md;
    params.yaml's top-level ``dataset``."""
    judge_model: str
    """Local path or model id of the Qwen2.5-VL judge base."""
    policy_model: str
    """Local path or model id of the FLUX.1-Fill policy base."""
    device: str = "cpu"
    """torch device for training and inference."""
    dtype: str = "float32"
    """Weights and compute dtype: float32 on CPU, bfloat16 on GPU."""
    attn_implementation: str = "auto"
    """The judge's attention kernel (transformers' ``attn_implementation``): 'auto' is
    flash_attention_2 on CUDA where flash-attn is installed, sdpa otherwise; or any name
    transformers accepts ('sdpa', 'eager', 'flash_attention_2')."""

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml as the stages see it: ``profile`` resolved to the active profile's mapping
    (``name``, ``dataset`` and that entry of ``profiles``)."""
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return resolve_profile(params)


def resolve_profile(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with ``profile: <name>`` replaced by the named profile's mapping (a copy)."""
    name = params.get("profile")
    if not isinstance(name, str):
        return params  # already resolved, or no profile at all (checked where it is read)
    profiles = params.get("profiles")
    if not isinstance(profiles, dict) or name not in profiles:
        known = sorted(profiles) if isinstance(profiles, dict) else []
        raise ParamsError(f"params.profile: unknown profile {name!r}; params.yaml's profiles: {known}")
    entry = profiles[name]
    if not isinstance(entry, dict):
        raise ParamsError(f"params.profiles.{name}: expected a mapping, got {_show(entry)}")
    if "name" in entry or "dataset" in entry:
        raise ParamsError(f"params.profiles.{name}: 'name' and 'dataset' are set by `profile` and `dataset`")
    if "dataset" not in params:
        raise ParamsError("params.yaml has no top-level `dataset` (the raw annotation set the shard stage reads)")
    return {**params, "profile": {"name": name, "dataset": params["dataset"], **entry}}


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses.

    Every value must have its field's type (an int is a float too, a numeric string is a
    float: YAML 1.1 reads ``1e-05`` as text); a ``__post_init__`` range check that fails
    is reported with the section's name.
    """
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"params{where}: expected a mapping, got {_show(data)}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ParamsError(f"params{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except (TypeError, ValueError) as e:
        raise ParamsError(f"params{where}: {e}") from None


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` as type ``hint``, or a :class:`ParamsError` naming ``where``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or isinstance(hint, TypeVar):
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(errors[0] if len(errors) == 1 else f"params{where}: expected {hint}, got {_show(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ParamsError(f"params{where}: expected one of {list(args)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"params{where}: expected a list, got {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ParamsError(f"params{where}: expected {len(args)} values, got {len(value)}: {list(value)}")
            items = [_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item = args[0] if args else Any
            items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"params{where}: expected a mapping, got {_show(value)}")
        key_type, value_type = args or (Any, Any)
        return {_coerce(key_type, k, where): _coerce(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"params{where}: expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamsError(f"params{where}: expected an integer, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            number = float(value)
        else:
            raise ParamsError(f"params{where}: expected a number, got {_show(value)}")
        if not math.isfinite(number):
            raise ParamsError(f"params{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ParamsError(f"params{where}: expected a string, got {_show(value)}")
    return value


def section(cls: type[T], name: str, params: dict[str, Any] | None = None) -> T:
    """The typed config of params section ``name``."""
    params = load_params() if params is None else params
    if name not in params:
        raise ParamsError(f"params.yaml has no section {name!r}")
    return from_dict(cls, params[name], f".{name}")


def active_profile(params: dict[str, Any] | None = None) -> Profile:
    """The profile that the top-level ``profile`` names (``profiles.<name>`` + ``dataset``)."""
    params = load_params() if params is None else resolve_profile(params)
    return section(Profile, "profile", params)


def section_class(name: str) -> type:
    """The dataclass of params section ``name`` (imported on first use: some pull in torch)."""
    module, _, cls = SECTIONS[name].partition(":")
    return typing.cast(type, getattr(importlib.import_module(module), cls))


def check_params(params: dict[str, Any]) -> Profile:
    """Validate the profile and every section in :data:`SECTIONS` that ``params`` has.

    Returns the active profile; raises :class:`ParamsError` (one line) at the first problem.
    Top-level keys that no stage reads as a section are left alone.
    """
    profile = active_profile(params)
    resolved = resolve_profile(params)
    if not profile.is_tiny and Path(profile.dataset) == Path(SYNTHETIC_DATASET):
        raise ParamsError(
            f"params.dataset: profile {profile.name!r} reads {SYNTHETIC_DATASET}, which synthesize fills only for the "
            "tiny profile; point `dataset` at your export (docs/data-format.md)"
        )
    from onereward.judge.params import merged_section  # per-profile overrides, as the stages apply them

    for name in SECTIONS:
        if name in resolved:
            data = resolved[name]
            if isinstance(data, dict) and "per_profile" in data:
                data = merged_section(name, profile.name, resolved)
            from_dict(section_class(name), data, f".{name}")
    return profile


def main(argv: list[str] | None = None) -> int:
    """``python -m onereward.config [params.yaml]``: check every section, one line either way."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else PARAMS_FILE)
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
        if not isinstance(params, dict):
            raise ParamsError(f"expected a mapping of sections, got {_show(params)}")
        profile = check_params(params)
    except (OSError, yaml.YAMLError, ValueError) as e:  # ValueError: ParamsError and merged_section
        print(f"{path}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"{path}: ok (profile {profile.name!r}, dataset {profile.dataset})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
