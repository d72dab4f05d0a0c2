"""DVC's output in a flow run's logs and progress artifact: stage statuses noted, tqdm bars
thinned in the logs and turned into the run's progress."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from uuid import UUID

from prefect import get_run_logger  # the flows package has set Prefect's environment
from prefect.artifacts import update_progress_artifact

from flows.dvc_process import stage_event

_TQDM_BAR = re.compile(r"\[\d+:\d\d(?::\d\d)?(?:<[^,\]]*)?, [^\]]*\]")  # tqdm's "[00:01<00:02, 3.1it/s]"
_TQDM_PERCENT = re.compile(r"(\d{1,3})%\|")
_PROGRESS_EVERY_S = 2.0  # artifact updates during a stage, at most this often
_BAR_LOG_EVERY_S = 10.0  # progress-bar lines in the logs, at most this often


def set_progress(progress_id: UUID | None, percent: float) -> None:
    if progress_id is not None:
        update_progress_artifact(artifact_id=progress_id, progress=round(min(max(percent, 0.0), 100.0), 1))


class StageStream:
    """DVC's output into the logs: stage statuses noted, tqdm bars thinned and turned into progress."""

    def __init__(self, progress_id: UUID | None, position: Callable[[str | None], tuple[int, int]]) -> None:
        self.logger = get_run_logger()
        self.progress_id = progress_id
        self.position = position  # stage (None: the current one) -> (index, total) for the progress bar
        self.status: dict[str, str] = {}
        self.current: str | None = None
        self.last_update = self.last_bar = 0.0
        self.held_bar: str | None = None  # latest progress-bar line not logged yet

    def __call__(self, line: str) -> None:
        event = stage_event(line)
        if event is not None:
            self.current = event[0]
            self.status[event[0]] = event[1]
            index, total = self.position(event[0])
            set_progress(self.progress_id, 100.0 * index / total)
        if _TQDM_BAR.search(line):  # a progress bar: move the artifact, keep the logs readable
            now = time.monotonic()
            m = _TQDM_PERCENT.search(line)
            if m and (now - self.last_update >= _PROGRESS_EVERY_S or int(m.group(1)) >= 100):
                index, total = self.position(self.current)
                set_progress(self.progress_id, 100.0 * (index + int(m.group(1)) / 100.0) / total)
                self.last_update = now
            if now - self.last_bar < _BAR_LOG_EVERY_S:
                self.held_bar = line
                return
            self.last_bar = now
        elif self.held_bar is not None:  # the bar's final state, before what follows it
            self.logger.info(self.held_bar)
        self.held_bar = None
        (self.logger.error if line.startswith("ERROR") else self.logger.info)(line)

    def flush(self) -> None:
        if self.held_bar is not None:
            self.logger.info(self.held_bar)
            self.held_bar = None
