"""The DVC side of orchestration, free of Prefect: stage discovery, the workspace lock,
``--set-param`` overrides and streaming ``dvc`` subprocesses.

DVC stays the source of truth: the stage list and its order come from DVC's own graph of
``dvc.yaml``, overrides go through the parser ``dvc exp run --set-param`` uses, and each
stage runs as ``dvc repro --single-item`` so an unchanged stage is a DVC no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

LOCK_FILE = Path(".dvc/tmp/onereward-flow.lock")
"""Per-workspace lock file; ``.dvc/tmp`` is ignored by git and by DVC."""

# A stage killed by SIGKILL/SIGTERM was most likely OOM-killed or preempted; a stage that
# exits with a status of its own (a traceback, sys.exit) fails the same way again.
TRANSIENT_EXIT_CODES = frozenset({-9, -15, 137, 143})
TRANSIENT_MARKERS: tuple[str, ...] = (
    "Unable to acquire lock",  # a DVC command run by hand in the same workspace
    "ConnectionError",
    "ConnectionResetError",
    "Connection refused",
    "Temporary failure in name resolution",
    "ReadTimeout",
    "503 Service Unavailable",
)
_STAGE_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """One DVC stage as the flow sees it."""

    name: str
    """DVC's address of the stage: ``shard``, ``train@0`` or ``sub/dvc.yaml:stage``."""
    outs: tuple[str, ...]
    """Outputs, metrics and plots it declares, as paths relative to the workspace."""
    upstream: tuple[str, ...] = ()
    """Every stage it depends on, directly or not."""


class WorkspaceBusy(RuntimeError):
    """Another flow run kept the workspace lock for longer than the timeout."""


@dataclasses.dataclass(frozen=True)
class DvcResult:
    """What a finished ``dvc`` subprocess left behind."""

    returncode: int
    tail: tuple[str, ...]
    """The last lines of its merged stdout/stderr, for error messages."""

    @property
    def transient(self) -> bool:
        """Whether a retry may succeed (killed by a signal, lock or network trouble)."""
        if self.returncode in TRANSIENT_EXIT_CODES:
            return True
        for line in self.tail:
            m = _STAGE_EXIT.search(line)
            if m and int(m.group(1)) in TRANSIENT_EXIT_CODES:
                return True
        return any(marker in line for line in self.tail for marker in TRANSIENT_MARKERS)


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


@contextlib.contextmanager
def workspace_lock(
    workspace: Path,
    timeout: float = 3600.0,
    owner: str = "",
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.5,
) -> Iterator[None]:
    """Hold an exclusive lock on the workspace so that no two flow runs drive DVC at once.

    An ``flock`` on a file in ``.dvc/tmp``: released by the kernel when the holder exits,
    even if it is killed, so a crash never leaves a stale lock behind.
    """
    path = workspace / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = path.read_text(errors="replace").strip() or "unknown holder"
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"another DVC run holds the workspace lock {path} ({holder}); gave up after {timeout:g} s"
                    ) from None
                if not told and on_wait is not None:
                    on_wait(f"waiting for the workspace lock {path}, held by {holder}")
                    told = True
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} {owner}".strip().encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def dvc_env() -> dict[str, str]:
    """Environment for ``dvc`` and the stage commands it starts."""
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # stage prints reach the flow's logs as they happen
    # Stage commands say `python`: make it this interpreter even in an unactivated venv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_dvc(
    args: Sequence[str],
    workspace: Path,
    on_line: Callable[[str], None],
    tail_lines: int = 40,
) -> DvcResult:
    """Run ``dvc <args>`` in ``workspace``, handing each output line to ``on_line``.

    stderr is merged into stdout to keep the order; text mode's universal newlines turn
    tqdm's carriage returns into line ends, so progress bars arrive as lines too.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=dvc_env(),
        start_new_session=True,  # its own process group: stopping DVC stops the stage command too
    )
    tail: deque[str] = deque(maxlen=tail_lines)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                on_line(line)
        returncode = proc.wait()
    finally:
        if proc.poll() is None:  # cancelled or crashed while streaming: leave no stage running
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
    return DvcResult(returncode=returncode, tail=tuple(tail))


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
