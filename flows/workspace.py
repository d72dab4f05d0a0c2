"""The DVC side of orchestration, free of Prefect: stage discovery, the checks before a run,
``--set-param`` overrides and experiments (the ``dvc`` subprocesses: ``flows.dvc_process``).

DVC stays the source of truth: the stage list and its order come from DVC's own graph of
``dvc.yaml``, overrides go through the parser ``dvc exp run --set-param`` uses, and each
stage runs as ``dvc repro --single-item`` so an unchanged stage is a DVC no-op.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.dvc_process import dvc_env

PARAMS_CHECK = ("onereward/config.py", "onereward.config")
"""The project's params check: run (``python -m onereward.config FILE``) on a workspace that
has the file, i.e. a checkout of this project; other DVC workspaces have only DVC's checks."""


class PreflightError(ValueError):
    """A run that must not start; the message is one line saying why."""


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """One DVC stage as the flow sees it."""

    name: str
    """DVC's address of the stage: ``shard``, ``train@0`` or ``sub/dvc.yaml:stage``."""
    outs: tuple[str, ...]
    """Outputs, metrics and plots it declares, as paths relative to the workspace."""
    upstream: tuple[str, ...] = ()
    """Every stage it depends on, directly or not."""


def discover_stages(workspace: Path) -> list[StageInfo]:
    """Every runnable stage of the workspace's DVC pipelines, in dependency order.

    Read from DVC's own graph, so stages added to ``dvc.yaml`` join the flow by themselves;
    ties keep their ``dvc.yaml`` order. Plain ``.dvc`` data sources have nothing to run.
    """
    import networkx as nx
    from dvc.repo import Repo

    repo = Repo(str(workspace))
    try:
        index = repo.index
        position = {stage: i for i, stage in enumerate(index.stages)}
        graph = index.graph  # edges point from a stage to the stages it depends on
        order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=position.__getitem__)
        root = Path(repo.root_dir)
        address = {s: _address(s, root) for s in index.stages}
        return [
            StageInfo(
                name=address[s],
                outs=tuple(Path(os.path.relpath(o.fs_path, root)).as_posix() for o in s.outs),
                upstream=tuple(sorted(address[u] for u in nx.descendants(graph, s) if u.cmd or u.is_import)),
            )
            for s in order
            if s.cmd or s.is_import
        ]
    finally:
        repo.close()


def _address(stage: Any, root: Path) -> str:
    """DVC's stage address relative to the workspace (``Stage.addressing`` is cwd-relative)."""
    rel = Path(os.path.relpath(stage.path, root)).as_posix()
    name = getattr(stage, "name", None)
    if name is None:  # a .dvc file
        return rel
    return name if rel == "dvc.yaml" else f"{rel}:{name}"


def select_stages(stages: Sequence[StageInfo], target: str | None) -> list[StageInfo]:
    """``target`` and the stages it depends on (all stages without a target), in order."""
    if not target:
        return list(stages)
    by_name = {s.name: s for s in stages}
    if target not in by_name:
        raise ValueError(f"unknown target stage {target!r}; dvc.yaml has: {', '.join(by_name) or 'no stages'}")
    keep = {target, *by_name[target].upstream}
    return [s for s in stages if s.name in keep]


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def preflight(
    workspace: Path, target: str | None, overrides: Sequence[str], experiment: bool = False
) -> list[StageInfo]:
    """Check a run before anything changes: the stages ``target`` selects, the overrides and
    the params they give, and for an ``experiment`` a git workspace. Returns the selected
    stages; raises :class:`PreflightError`.

    The overrides are applied to copies of the params files in a temporary folder, so a value
    that fails here has touched neither params nor outputs.
    """
    if not (workspace / "dvc.yaml").is_file():
        raise PreflightError(f"no dvc.yaml in {workspace}: not a DVC workspace")
    try:
        stages = discover_stages(workspace)
    except Exception as e:  # noqa: BLE001 - any DVC parse error, reported as its one line
        raise PreflightError(f"dvc.yaml: {_one_line(str(e))}") from None
    try:
        selected = select_stages(stages, target)
    except ValueError as e:
        raise PreflightError(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="onereward-params-") as tmp:
        scratch = Path(tmp)
        if (workspace / "params.yaml").is_file():
            shutil.copy(workspace / "params.yaml", scratch / "params.yaml")
        from dvc.utils.cli_parse import to_path_overrides

        try:
            for rel in to_path_overrides(list(overrides)):
                if (workspace / rel).is_file() and not (scratch / rel).exists():
                    (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(workspace / rel, scratch / rel)
            apply_param_overrides(scratch, overrides)
        except ValueError as e:
            raise PreflightError(" ".join(str(e).split()).replace(str(scratch), str(workspace))) from None
        if (workspace / PARAMS_CHECK[0]).is_file() and (scratch / "params.yaml").is_file():
            path = os.pathsep.join(p for p in (str(workspace), os.environ.get("PYTHONPATH")) if p)
            env = {**dvc_env(), "PYTHONPATH": path}  # stage modules hold some config classes
            proc = subprocess.run(
                [sys.executable, "-m", PARAMS_CHECK[1], str(scratch / "params.yaml")],
                cwd=workspace,
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                message = _one_line(proc.stderr or proc.stdout).replace(str(scratch / "params.yaml"), "params.yaml")
                raise PreflightError(message + (" (with the run's overrides)" if overrides else ""))
    if experiment and not is_git_workspace(workspace):
        raise PreflightError(
            f"overrides and exp_name need a git workspace ({workspace} is not one): "
            "DVC runs them as an experiment in a temporary clone"
        )
    return selected


def experiment_ref(workspace: Path, name: str) -> str | None:
    """The git commit of experiment ``name`` on the workspace's HEAD, if it exists."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True).stdout.strip()

    base = git("rev-parse", "HEAD")
    if not base:
        return None
    return git("rev-parse", "--verify", "--quiet", f"refs/exps/{base[:2]}/{base[2:]}/{name}") or None


def read_at(workspace: Path, rev: str, rel: str) -> str | None:
    """File ``rel`` as committed in ``rev`` (an experiment's results), or None."""
    proc = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=workspace, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def experiment_command(name: str, target: str | None, overrides: Sequence[str], pull: bool = False) -> list[str]:
    """``dvc exp run --temp``: the run happens in a temporary clone, the workspace stays as it is.

    The experiment commit holds what ran: ``dvc.lock`` entries of the stages that were
    reproduced, the others as they were, the overridden params and the uncached reports.
    """
    args = ["exp", "run", "--temp", "--name", name]
    for o in overrides:
        args += ["--set-param", o]
    if pull:
        args.append("--pull")
    return [*args, *([target] if target else [])]


def is_git_workspace(workspace: Path) -> bool:
    """Whether DVC sees a git repository (experiments need one)."""
    from dvc.repo import Repo
    from dvc.scm import NoSCM

    repo = Repo(str(workspace))
    try:
        return not isinstance(repo.scm, NoSCM)
    finally:
        repo.close()


def apply_param_overrides(workspace: Path, overrides: Sequence[str]) -> dict[Path, bytes]:
    """Apply ``[<file>:]<key>=<value>`` overrides exactly as ``dvc exp run --set-param`` does.

    Returns the original bytes of every file touched, for :func:`restore_files`.
    """
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    originals: dict[Path, bytes] = {}
    try:
        for rel, items in to_path_overrides(overrides).items():
            path = workspace / rel
            if not path.is_file():
                raise ValueError(f"--set-param: no params file {rel!r} in {workspace}")
            originals[path] = path.read_bytes()
            try:
                apply_overrides(str(path), items)
            except ValueError as e:  # dvc's InvalidArgumentError hides hydra's reason in __cause__
                raise ValueError(f"--set-param {items} on {rel}: {e} ({e.__cause__})") from None
    except BaseException:
        restore_files(originals)
        raise
    return originals


def restore_files(originals: dict[Path, bytes]) -> None:
    """Put back files saved by :func:`apply_param_overrides` (atomically, one rename each)."""
    for path, data in originals.items():
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)


