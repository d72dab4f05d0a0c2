"""Shared fixtures: a micro synthetic dataset and a temporary copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from onereward.numerics import pin_from_params

REPO = Path(__file__).resolve().parents[1]
# The tests' own computations use the numerics every stage pins, before torch loads: the bits a
# test compares in-process are then the same on any CPU (unpinned, MKL and oneDNN pick kernels by
# the CPU, and a weight swapped back in can round differently from the weight it replaced).
pin_from_params(REPO / "params.yaml")

import pytest  # noqa: E402
import yaml  # noqa: E402

from onereward.data.synthetic import SynthesizeConfig, synthesize  # noqa: E402
# Never copied into a temporary repository: outputs, caches and local state.
_TOP_LEVEL_SKIP = {".git", ".dvc", "data", ".prefect", "dvclive", ".pytest_cache", "build", ".venv", "dvc_plots"}
_ANYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".tmp-*")


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = set(_ANYWHERE(folder, names))
    if Path(folder) == REPO:
        skip |= _TOP_LEVEL_SKIP & set(names)
    return skip

MICRO_PARAMS = {
    "synthesize": {"num_inputs": 24, "bad_records": 4, "workers": 1},
    "shard": {"max_samples_per_shard": 8},
}


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory) -> str:
    """An untrained, seeded tiny FLUX.1-Fill pipeline folder: the candidates' generator in tests."""
    from onereward.policy.tiny import build_tiny_pipeline, save_pipeline

    path = tmp_path_factory.mktemp("generator") / "policy_base"
    save_pipeline(build_tiny_pipeline(seed=0), path)
    return str(path)


@pytest.fixture(scope="session")
def micro_dataset(tmp_path_factory, tiny_generator) -> Path:
    """A raw annotation set of 24 inputs (all tasks) made by the synthesize code."""
    root = tmp_path_factory.mktemp("raw")
    synthesize(root, SynthesizeConfig(num_inputs=24, workers=1), tiny_generator)
    return root


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def make_repo_copy(dest: Path, params: dict | None = None) -> Path:
    """Copy the working tree (code, dvc.yaml, params) to ``dest`` as a git-less DVC repo.

    ``params`` is merged into params.yaml (on top of MICRO_PARAMS) in the copy.
    """
    shutil.copytree(REPO, dest, ignore=_ignore)
    (dest / "data").mkdir()
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=dest, check=True)
    (dest / "dvc.lock").unlink(missing_ok=True)
    merged = _merge(_merge(yaml.safe_load((dest / "params.yaml").read_text()), MICRO_PARAMS), params or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return dest


def run_dvc(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo), **(env or {})}
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc
