"""The scheduled deployment of the pipeline flow: serve it from this machine, trigger runs.

``python -m flows serve`` registers ``onereward-pipeline/nightly`` with a cron schedule on
the Prefect server and executes its runs in this process's machine; ``prefect.yaml``
describes the same deployment for a work pool and ``prefect worker start`` instead.
"""

from __future__ import annotations

import os

from flows import PROJECT_ROOT, configure_environment

configure_environment()

from typing import Any, cast  # noqa: E402

from prefect import get_client  # noqa: E402
from prefect.client.schemas.objects import FlowRun  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.schedules import Cron  # noqa: E402
from prefect.types.entrypoint import EntrypointType  # noqa: E402

from flows.pipeline import DVC_TAG, FLOW_NAME, onereward_pipeline  # noqa: E402

DEPLOYMENT = "nightly"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every night: retrain on the day's fresh annotations
DEFAULT_TIMEZONE = "UTC"


def ensure_dvc_tag_limit() -> None:
    """A server-side limit of one running task tagged :data:`DVC_TAG` at a time.

    The workspace file lock already keeps DVC runs apart; this makes a second run queue
    visibly in the UI ("AwaitingConcurrencySlot") instead of waiting inside a task.
    """
    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(DVC_TAG)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=DVC_TAG, concurrency_limit=1)


def serve(
    name: str = DEPLOYMENT,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    parameters: dict[str, Any] | None = None,
) -> None:
    """Register the deployment with its cron schedule and execute its runs (blocks)."""
    ensure_dvc_tag_limit()
    # Runs start in a subprocess that imports flows.pipeline by module path.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    onereward_pipeline.serve(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        global_limit=1,  # one run of this deployment at a time: it owns one workspace
        parameters=parameters or {},
        tags=["onereward"],
        description="The OneReward DVC pipeline, stage by stage; unchanged stages are DVC no-ops.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def trigger(
    name: str = DEPLOYMENT,
    parameters: dict[str, Any] | None = None,
    wait: bool = True,
) -> FlowRun:
    """Create a run of the deployment now; with ``wait``, return once it has finished."""
    run = run_deployment(
        f"{FLOW_NAME}/{name}",
        parameters=parameters or {},
        timeout=None if wait else 0,
        poll_interval=2,
    )
    return cast(FlowRun, run)  # sync call: a FlowRun, not the coroutine the signature also allows
