"""The OneReward pipeline as a Prefect flow: one task per DVC stage, in DVC's order.

DVC is the cache and the record of what produced what: every task runs
``dvc repro --single-item <stage>``, so a stage whose inputs did not change is a DVC no-op
and a rerun with nothing changed takes seconds. Prefect schedules, retries, logs and
shows the reports as artifacts.
"""

from __future__ import annotations

from flows import PROJECT_ROOT, configure_environment

configure_environment()  # before prefect is imported, also when Prefect loads this file by path

import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, cast  # noqa: E402
from uuid import UUID  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import (  # noqa: E402
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.client.schemas.objects import TaskRun  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import State  # noqa: E402
from prefect.tasks import Task, exponential_backoff  # noqa: E402

from flows.reports import REPORT_TABLES, StageOutcome, summary_markdown, table_rows  # noqa: E402
from flows.workspace import (  # noqa: E402
    DvcResult,
    StageInfo,
    apply_param_overrides,
    discover_stages,
    is_git_workspace,
    restore_files,
    run_dvc,
    select_stages,
    workspace_lock,
)

FLOW_NAME = "onereward-pipeline"
DVC_TAG = "dvc-workspace"
"""Tag on every task that drives DVC; a server-side tag concurrency limit of 1 queues them."""
PROGRESS_KEY = "pipeline-progress"
SUMMARY_KEY = "pipeline-summary"

_TQDM_BAR = re.compile(r"\[\d+:\d\d(?::\d\d)?(?:<[^,\]]*)?, [^\]]*\]")  # tqdm's "[00:01<00:02, 3.1it/s]"
_TQDM_PERCENT = re.compile(r"(\d{1,3})%\|")
_PROGRESS_EVERY_S = 2.0  # artifact updates during a stage, at most this often
_BAR_LOG_EVERY_S = 10.0  # progress-bar lines in the logs, at most this often


class StageFailed(RuntimeError):
    """A DVC stage failed; the message carries the end of its output."""

    def __init__(self, stage: str, result: DvcResult) -> None:
        self.stage = stage
        self.result = result
        tail = "\n".join(result.tail[-15:])
        super().__init__(f"stage {stage!r} failed (dvc exit {result.returncode}):\n{tail}")


class TransientStageFailure(StageFailed):
    """A failure that a retry may fix: killed by a signal, lock contention, network."""


def _retry_if_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only transient failures: a deterministic stage failure must surface at once."""
    exc: object = state.data
    if not isinstance(exc, BaseException):
        try:
            state.result()
        except BaseException as e:  # noqa: BLE001 - the failure itself is what we inspect
            exc = e
    return isinstance(exc, TransientStageFailure)


def _set_progress(progress_id: UUID | None, percent: float) -> None:
    if progress_id is not None:
        update_progress_artifact(artifact_id=progress_id, progress=round(min(max(percent, 0.0), 100.0), 1))


@task(
    task_run_name="{stage}",
    tags=[DVC_TAG],
    cache_policy=NO_CACHE,  # DVC is the cache; Prefect must always ask it
    persist_result=False,
    retry_condition_fn=_retry_if_transient,
)
def run_stage(
    stage: str,
    workspace: str,
    pull: bool = False,
    progress_id: UUID | None = None,
    index: int = 0,
    total: int = 1,
) -> StageOutcome:
    """``dvc repro --single-item <stage>``, its output streamed line by line into the logs."""
    logger = get_run_logger()
    status = "up to date"  # what DVC says when it neither runs nor restores the stage
    last_update = last_bar = 0.0
    held_bar: str | None = None  # latest progress-bar line not logged yet

    def on_line(line: str) -> None:
        nonlocal status, last_update, last_bar, held_bar
        if line.startswith("Running stage "):
            status = "ran"
        elif line.startswith("Stage ") and "is cached - skipping run" in line:
            status = "restored from run-cache"
        if _TQDM_BAR.search(line):  # a progress bar: move the artifact, keep the logs readable
            now = time.monotonic()
            m = _TQDM_PERCENT.search(line)
            if m and (now - last_update >= _PROGRESS_EVERY_S or int(m.group(1)) >= 100):
                _set_progress(progress_id, 100.0 * (index + int(m.group(1)) / 100.0) / total)
                last_update = now
            if now - last_bar < _BAR_LOG_EVERY_S:
                held_bar = line
                return
            last_bar = now
        elif held_bar is not None:  # the bar's final state, before what follows it
            logger.info(held_bar)
        held_bar = None
        (logger.error if line.startswith("ERROR") else logger.info)(line)

    start = time.monotonic()
    result = run_dvc(["repro", "--single-item", stage, *(["--pull"] if pull else [])], Path(workspace), on_line)
    if held_bar is not None:
        logger.info(held_bar)
    if result.returncode != 0:
        if result.transient:
            logger.warning(
                "stage %r failed in a way that looks transient; retrying with backoff if retries remain", stage
            )
            raise TransientStageFailure(stage, result)
        logger.error("stage %r failed deterministically (not retried): fix the cause and rerun", stage)
        raise StageFailed(stage, result)
    return StageOutcome(stage, status, time.monotonic() - start)


@task(tags=[DVC_TAG], cache_policy=NO_CACHE, persist_result=False)
def record_experiment(workspace: str, name: str) -> str | None:
    """``dvc exp save``: keep this run's params, dvc.lock and metrics as a DVC experiment."""
    logger = get_run_logger()
    ws = Path(workspace)
    if not is_git_workspace(ws):
        logger.warning("workspace is not a git repository: experiment %r not recorded (see the run's artifacts)", name)
        return None
    result = run_dvc(["exp", "save", "--name", name], ws, logger.info)
    if result.returncode != 0:
        raise RuntimeError(f"dvc exp save failed (exit {result.returncode}):\n" + "\n".join(result.tail[-10:]))
    return name


@task(
    tags=[DVC_TAG], cache_policy=NO_CACHE, persist_result=False, retries=3, retry_delay_seconds=exponential_backoff(10)
)
def push_outputs(workspace: str) -> None:
    """``dvc push --run-cache``: outputs and run-cache to the DVC remote (network trouble is retried).

    With the run-cache there, a fresh clone elsewhere restores unchanged stages instead of
    recomputing them.
    """
    logger = get_run_logger()
    result = run_dvc(["push", "--run-cache"], Path(workspace), logger.info)
    if result.returncode != 0:
        raise RuntimeError(f"dvc push failed (exit {result.returncode}):\n" + "\n".join(result.tail[-10:]))


def _publish(
    ws: Path,
    stages: list[StageInfo],
    outcomes: list[StageOutcome],
    target: str | None,
    overrides: list[str],
    experiment: str | None,
    error: str | None,
) -> None:
    """Table artifacts for fresh reports, then the markdown summary."""
    logger = get_run_logger()
    completed = {o.stage for o in outcomes if o.status not in ("failed", "not run")}
    writer = {out: s.name for s in stages for out in s.outs}
    published: dict[str, str] = {}
    for report in REPORT_TABLES:
        path = ws / report.path
        # A report whose stage was not part of this run may be stale: leave it out.
        if not path.is_file() or (report.path in writer and writer[report.path] not in completed):
            continue
        try:
            rows = table_rows(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            logger.warning("cannot read %s as JSON (%s): no table artifact", report.path, e)
            continue
        create_table_artifact(table=rows, key=report.key, description=f"{report.title} - `{report.path}`")
        published[report.path] = report.key
    create_markdown_artifact(
        markdown=summary_markdown(ws, outcomes, target, overrides, experiment, published, error),
        key=SUMMARY_KEY,
        description="Stages run or skipped by DVC, and links to the reports",
    )


@flow(name=FLOW_NAME, persist_result=False)
def onereward_pipeline(
    target: str | None = None,
    set_params: list[str] | None = None,
    exp_name: str | None = None,
    pull: bool = False,
    push: bool = False,
    workspace: str | None = None,
    retries: int = 2,
    retry_delay_seconds: float = 30.0,
    lock_timeout_seconds: float = 3600.0,
) -> list[StageOutcome]:
    """Run the DVC pipeline stage by stage; unchanged stages are DVC no-ops.

    Args:
        target: Stage to build, with the stages it depends on; empty for all stages.
        set_params: Overrides as for `dvc exp run --set-param`, e.g. `synthesize.num_inputs=24`
            or `params.yaml:shard.seed=1`. They hold for this run only: the params files are
            restored afterwards and the result is saved as a DVC experiment (git workspaces).
        exp_name: Name of the DVC experiment to save; defaults to the flow run's name
            when overrides are given. Setting it records an experiment even without overrides.
        pull: Pull missing inputs and cached outputs from the DVC remote (`dvc repro --pull`).
        push: Push outputs and run-cache to the DVC remote after the last stage (`dvc push --run-cache`).
        workspace: DVC workspace to run in; defaults to this repository.
        retries: Retries per stage for transient failures (killed, lock or network trouble).
        retry_delay_seconds: First retry delay; it doubles with every retry.
        lock_timeout_seconds: How long to wait for another run that holds the workspace.
    """
    logger = get_run_logger()
    ws = Path(workspace).resolve() if workspace else PROJECT_ROOT
    overrides = list(set_params or [])
    stage_task = run_stage.with_options(retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_seconds))
    progress_id = cast(  # sync call: a UUID, not the coroutine the signature also allows
        UUID,
        create_progress_artifact(progress=0.0, key=PROGRESS_KEY, description="Share of the selected DVC stages done"),
    )
    stages: list[StageInfo] = []
    outcomes: list[StageOutcome] = []
    experiment: str | None = None
    error: str | None = None
    with workspace_lock(ws, lock_timeout_seconds, owner=f"flow run {flow_run.name}", on_wait=logger.warning):
        originals = apply_param_overrides(ws, overrides)
        try:
            stages = discover_stages(ws)
            selected = select_stages(stages, target)
            logger.info("DVC stages in dependency order: %s", ", ".join(s.name for s in selected) or "none")
            for i, stage in enumerate(selected):
                try:
                    outcomes.append(stage_task(stage.name, str(ws), pull, progress_id, i, len(selected)))
                except BaseException:
                    outcomes.append(StageOutcome(stage.name, "failed"))
                    outcomes += [StageOutcome(s.name, "not run") for s in selected[i + 1 :]]
                    raise
                _set_progress(progress_id, 100.0 * (i + 1) / len(selected))
            _set_progress(progress_id, 100.0)
            if overrides or exp_name:
                experiment = record_experiment(str(ws), exp_name or str(flow_run.name))
            if push:
                push_outputs(str(ws))
        except BaseException as e:
            error = str(e)
            raise
        finally:
            restore_files(originals)
            try:
                _publish(ws, stages, outcomes, target, overrides, experiment, error)
            except Exception:  # an artifact hiccup must not hide the run's real outcome
                logger.exception("could not publish the run's artifacts")
    ran = sum(o.status == "ran" for o in outcomes)
    logger.info("done: %d stage(s) ran, %d skipped by DVC (unchanged)", ran, len(outcomes) - ran)
    return outcomes
