"""The OneReward pipeline as a Prefect flow: one task per DVC stage, in DVC's order.

DVC is the cache and the record of what produced what: every task runs
``dvc repro --single-item <stage>``, so a stage whose inputs did not change is a DVC no-op
and a rerun with nothing changed takes seconds. A run with overrides is a DVC experiment
instead (``dvc exp run --temp``): it runs in a temporary clone and leaves params, data and
``dvc.lock`` of the workspace as they were. Prefect schedules, retries, logs and shows the
reports as artifacts. Nothing runs before :func:`flows.workspace.preflight` has passed.
"""

from __future__ import annotations

from flows import PROJECT_ROOT, configure_environment

configure_environment()  # before prefect is imported, also when Prefect loads this file by path

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, cast  # noqa: E402
from uuid import UUID  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import (  # noqa: E402
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.client.schemas.objects import TaskRun  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import State  # noqa: E402
from prefect.tasks import Task, exponential_backoff  # noqa: E402

from flows.reports import REPORT_MARKDOWN, REPORT_TABLES, StageOutcome, artifact_markdown, summary_markdown  # noqa: E402
from flows.dvc_process import DvcResult, run_dvc, workspace_lock  # noqa: E402
from flows.progress import StageStream, set_progress  # noqa: E402
from flows.workspace import StageInfo, experiment_command, experiment_ref, preflight, read_at  # noqa: E402

FLOW_NAME = "onereward-pipeline"
DVC_TAG = "dvc-workspace"
"""Tag on every task that drives DVC; a server-side tag concurrency limit of 1 queues them."""
PROGRESS_KEY = "pipeline-progress"
SUMMARY_KEY = "pipeline-summary"



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


def _raise_for(stage: str, result: DvcResult) -> None:
    logger = get_run_logger()
    if result.transient:
        logger.warning("stage %r failed in a way that looks transient; retrying with backoff if retries remain", stage)
        raise TransientStageFailure(stage, result)
    logger.error("stage %r failed deterministically (not retried): fix the cause and rerun", stage)
    raise StageFailed(stage, result)


@task(name="check", cache_policy=NO_CACHE, persist_result=False)
def check_run(workspace: str, target: str | None, overrides: list[str], experiment: bool) -> list[StageInfo]:
    """Stages, overrides and params checked before DVC touches anything (one line on failure)."""
    return preflight(Path(workspace), target, overrides, experiment)


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
    stream = StageStream(progress_id, lambda _: (index, total))
    start = time.monotonic()
    result = run_dvc(["repro", "--single-item", stage, *(["--pull"] if pull else [])], Path(workspace), stream)
    stream.flush()
    if result.returncode != 0:
        _raise_for(stage, result)
    # DVC says nothing about a stage it neither runs nor restores
    return StageOutcome(stage, stream.status.get(stage, "up to date"), time.monotonic() - start)


@task(
    task_run_name="experiment {name}",
    tags=[DVC_TAG],
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_retry_if_transient,
)
def run_experiment(
    name: str,
    workspace: str,
    stages: list[str],
    target: str | None,
    overrides: list[str],
    pull: bool = False,
    progress_id: UUID | None = None,
) -> list[StageOutcome]:
    """``dvc exp run --temp``: the selected stages in a temporary clone, saved as experiment ``name``."""
    order = {s: i for i, s in enumerate(stages)}
    stream = StageStream(progress_id, lambda s: (order.get(s or "", 0), max(len(stages), 1)))
    start = time.monotonic()
    result = run_dvc(experiment_command(name, target, overrides, pull), Path(workspace), stream)
    stream.flush()
    if result.returncode != 0:
        _raise_for(stream.current or f"experiment {name}", result)
    seconds = time.monotonic() - start
    return [StageOutcome(s, stream.status.get(s, "up to date"), seconds if s == stages[-1] else 0.0) for s in stages]


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
    """Table and markdown artifacts for the reports this run wrote, then the markdown summary.

    A report whose stage was not part of this run may be stale, so it is left out; an
    experiment's reports are read from its commit (the workspace still has the old ones).
    """
    logger = get_run_logger()
    completed = {o.stage for o in outcomes if o.status not in ("failed", "not run")}
    writer = {out: s.name for s in stages for out in s.outs}
    rev = experiment_ref(ws, experiment) if experiment else None

    def fresh(rel: str) -> str | None:
        if rel in writer and writer[rel] not in completed:
            return None
        if experiment:
            return read_at(ws, rev, rel) if rev else None
        path = ws / rel
        return path.read_text() if path.is_file() else None

    published: dict[str, list[str]] = {}
    for report in REPORT_TABLES:
        text = fresh(report.path)
        if text is None:
            continue
        try:
            data = json.loads(text)
            rows = report.rows(data)
            extra = report.description(data) if report.description else ""
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            logger.warning("cannot read %s as its table (%s): no table artifact", report.path, e)
            continue
        description = f"{report.title}{': ' + extra if extra else ''} (`{report.path}`)"
        create_table_artifact(table=rows, key=report.key, description=description)
        published.setdefault(report.path, []).append(report.key)
    for md in REPORT_MARKDOWN:
        text = fresh(md.path)
        if text is None:
            continue
        create_markdown_artifact(
            markdown=artifact_markdown(text, md.path), key=md.key, description=f"{md.title} (`{md.path}`)"
        )
        published.setdefault(md.path, []).append(md.key)
    reports = sorted({r.path for r in REPORT_TABLES} | {m.path for m in REPORT_MARKDOWN})
    create_markdown_artifact(
        markdown=summary_markdown(str(ws), outcomes, target, overrides, experiment, published, reports, error),
        key=SUMMARY_KEY,
        description="Stages run or skipped by DVC, and the artifacts that show the reports",
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
            or `params.yaml:shard.seed=1`. They hold for this run only: the run is a DVC
            experiment in a temporary clone (`dvc exp run --temp`, git workspaces), so the
            workspace's params, data and dvc.lock stay as they were.
        exp_name: Name of that DVC experiment; defaults to the flow run's name. Setting it
            makes a run an experiment even without overrides.
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
    experiment = (exp_name or str(flow_run.name)) if (overrides or exp_name) else None
    backoff = exponential_backoff(retry_delay_seconds)
    progress_id = cast(  # sync call: a UUID, not the coroutine the signature also allows
        UUID,
        create_progress_artifact(progress=0.0, key=PROGRESS_KEY, description="Share of the selected DVC stages done"),
    )
    stages: list[StageInfo] = []
    outcomes: list[StageOutcome] = []
    error: str | None = None
    try:
        selected = stages = check_run(str(ws), target, overrides, experiment is not None)
        logger.info("DVC stages in dependency order: %s", ", ".join(s.name for s in selected) or "none")
        with workspace_lock(ws, lock_timeout_seconds, owner=f"flow run {flow_run.name}", on_wait=logger.warning):
            if experiment:
                names = [s.name for s in selected]
                outcomes = [StageOutcome(n, "not run") for n in names]
                exp_task = run_experiment.with_options(retries=retries, retry_delay_seconds=backoff)
                try:
                    outcomes = exp_task(experiment, str(ws), names, target, overrides, pull, progress_id)
                except BaseException:
                    outcomes = [StageOutcome(n, "failed" if i == 0 else "not run") for i, n in enumerate(names)]
                    raise
            else:
                stage_task = run_stage.with_options(retries=retries, retry_delay_seconds=backoff)
                for i, stage in enumerate(selected):
                    try:
                        outcomes.append(stage_task(stage.name, str(ws), pull, progress_id, i, len(selected)))
                    except BaseException:
                        outcomes.append(StageOutcome(stage.name, "failed"))
                        outcomes += [StageOutcome(s.name, "not run") for s in selected[i + 1 :]]
                        raise
                    set_progress(progress_id, 100.0 * (i + 1) / len(selected))
            set_progress(progress_id, 100.0)
            if push:
                push_outputs(str(ws))
    except BaseException as e:
        error = str(e)
        raise
    finally:
        try:
            _publish(ws, stages, outcomes, target, overrides, experiment if not error else None, error)
        except Exception:  # an artifact hiccup must not hide the run's real outcome
            logger.exception("could not publish the run's artifacts")
    ran = sum(o.status == "ran" for o in outcomes)
    logger.info("done: %d stage(s) ran, %d skipped by DVC (unchanged)", ran, len(outcomes) - ran)
    return outcomes
