"""The scheduled deployment of the pipeline flow: serve it from this machine, trigger runs.

``python -m flows serve`` registers ``onereward-pipeline/nightly`` with a cron schedule on
the Prefect server and executes its runs in this process's machine; ``prefect.yaml``
describes the same deployment for a work pool and ``prefect worker start`` instead.
"""

from __future__ import annotations

import os
import time

from flows import PROJECT_ROOT, configure_environment

configure_environment()

from datetime import datetime, timezone  # noqa: E402
from typing import Any, cast  # noqa: E402

from prefect import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowFilter, FlowFilterName  # noqa: E402
from prefect.client.schemas.objects import FlowRun  # noqa: E402
from prefect.client.schemas.responses import DeploymentResponse  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.states import Cancelled  # noqa: E402
from prefect.schedules import Cron  # noqa: E402
from prefect.types.entrypoint import EntrypointType  # noqa: E402

from flows.pipeline import DVC_TAG, FLOW_NAME, onereward_pipeline  # noqa: E402

DEPLOYMENT = "nightly"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every night: retrain on the day's fresh annotations
DEFAULT_TIMEZONE = "UTC"
SERVED_WITHIN_S = 60.0
"""A deployment counts as served when a runner or worker asked for its runs this recently
(``python -m flows serve`` asks every ``PREFECT_RUNNER_POLL_FREQUENCY`` seconds, 10 by default)."""
PICKUP_TIMEOUT_S = 60.0
"""How long ``trigger`` waits for a created run to be picked up before it cancels it."""


class TriggerError(RuntimeError):
    """The deployment cannot run now; the message is one line saying why."""


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


def find_deployment(name: str = DEPLOYMENT) -> DeploymentResponse:
    """The deployment ``onereward-pipeline/<name>``, or a :class:`TriggerError` naming the ones there are."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            flows = FlowFilter(name=FlowFilterName(any_=[FLOW_NAME]))
            known = sorted(d.name for d in client.read_deployments(flow_filter=flows))
            raise TriggerError(
                f"no deployment {FLOW_NAME}/{name} on this server (it has: {', '.join(known) or 'none'}); "
                f"`python -m flows serve --name {name}` creates it"
            ) from None


def _served(deployment: DeploymentResponse) -> bool:
    last = deployment.last_polled
    return last is not None and (datetime.now(timezone.utc) - last).total_seconds() <= SERVED_WITHIN_S


def trigger(
    deployment: DeploymentResponse,
    parameters: dict[str, Any] | None = None,
    wait: bool = True,
    pickup_timeout: float = PICKUP_TIMEOUT_S,
    poll_interval: float = 2.0,
) -> FlowRun:
    """Create a run of ``deployment`` now; with ``wait``, return once it has finished.

    Refuses (:class:`TriggerError`, no run created) when nothing has polled the deployment
    lately; a run that nobody picks up within ``pickup_timeout`` is cancelled.
    """
    full_name = f"{FLOW_NAME}/{deployment.name}"
    if not _served(deployment):
        raise TriggerError(
            f"nothing serves {full_name}: no `python -m flows serve` or worker has asked for its runs in the last "
            f"{SERVED_WITHIN_S:.0f} s; start one, then trigger again"
        )
    run = cast(FlowRun, run_deployment(full_name, parameters=parameters or {}, timeout=0))
    if not wait:
        return run
    deadline = time.monotonic() + pickup_timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run.id)
            state = run.state
            if state is not None and state.is_final():
                return run
            # Scheduled / Late: nobody took it yet (AwaitingConcurrencySlot: a runner did, and queued it)
            if state is not None and state.name in ("Scheduled", "Late") and time.monotonic() > deadline:
                client.set_flow_run_state(run.id, Cancelled(message="not picked up by any runner"), force=True)
                raise TriggerError(
                    f"flow run {run.name} was not picked up within {pickup_timeout:.0f} s "
                    f"(is `python -m flows serve` for {full_name} still running?); cancelled it"
                )
            time.sleep(poll_interval)
