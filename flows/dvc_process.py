"""``dvc`` as a subprocess of a flow: the workspace lock, the environment, streamed output,
and which failures a retry may cure.

Each stage runs as ``dvc repro --single-item`` in its own process group, so stopping DVC stops
the stage command too.
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
_STAGE_EVENTS: tuple[tuple[re.Pattern[str], str], ...] = (
    # what `dvc repro` / `dvc exp run` print for each stage they visit
    (re.compile(r"^Running stage '(?P<stage>[^']+)':"), "ran"),
    (re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping"), "up to date"),
    (re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run"), "restored from run-cache"),
)

def stage_event(line: str) -> tuple[str, str] | None:
    """``(stage, status)`` when a DVC output line says what happened to a stage."""
    for pattern, status in _STAGE_EVENTS:
        m = pattern.match(line)
        if m:
            return m.group("stage"), status
    return None


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
