"""``python -m flows server|serve|trigger|run``: the pipeline in the Prefect UI, no exports needed.

python -m flows server     # Prefect server + UI on http://127.0.0.1:4200 (database in .prefect/)
python -m flows serve      # register onereward-pipeline/nightly (cron) and execute its runs
python -m flows trigger    # run the deployment now and wait for it
python -m flows run        # run the flow right here, without a deployment

Stages, overrides and params are checked before a run is created; a problem is one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from flows import PROJECT_ROOT, configure_environment

configure_environment()  # before anything imports prefect


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def port(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--port", type=int, default=4200, help="local server port (when PREFECT_API_URL is unset)")

    def flow_params(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--target", help="stage to build, with its upstream stages (default: all)")
        sp.add_argument(
            "-S",
            "--set-param",
            action="append",
            default=[],
            metavar="[FILE:]KEY=VALUE",
            help="override for this run, as `dvc exp run --set-param` (repeatable)",
        )
        sp.add_argument("--exp-name", help="DVC experiment name (default: the flow run's name)")
        sp.add_argument("--workspace", help="DVC workspace (default: this repository)")

    port(sub.add_parser("server", help="start the Prefect server and UI on 127.0.0.1"))
    sp = sub.add_parser("serve", help="register the cron deployment and execute its runs")
    port(sp)
    sp.add_argument("--name", default="nightly", help="deployment name")
    sp.add_argument("--cron", default="0 2 * * *", help="cron schedule (default: 02:00 every day)")
    sp.add_argument("--timezone", default="UTC")
    sp.add_argument("--workspace", help="DVC workspace its runs use (default: this repository)")
    sp = sub.add_parser("trigger", help="run the deployment now")
    port(sp)
    sp.add_argument("--name", default="nightly", help="deployment name")
    sp.add_argument("--no-wait", action="store_true", help="return once the run is created")
    sp.add_argument(
        "--pickup-timeout", type=float, default=60.0, help="seconds to wait for a runner to pick the run up (cancelled after)"
    )
    flow_params(sp)
    sp = sub.add_parser("run", help="run the flow in this process")
    port(sp)
    flow_params(sp)
    sp.add_argument("--pull", action="store_true", help="dvc repro --pull")
    sp.add_argument("--push", action="store_true", help="dvc push at the end")
    return p


def _server_is_up(api_url: str, timeout: float = 3.0) -> bool:
    # urllib, not httpx/prefect: PREFECT_API_URL must be settled before prefect is imported
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _flow_parameters(args: argparse.Namespace) -> dict[str, object]:
    params: dict[str, object] = {}
    if args.target:
        params["target"] = args.target
    if args.set_param:
        params["set_params"] = args.set_param
    if args.exp_name:
        params["exp_name"] = args.exp_name
    if args.workspace:
        params["workspace"] = os.path.abspath(args.workspace)
    return params


def _experiment(args: argparse.Namespace) -> bool:
    return bool(args.set_param or args.exp_name)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    api_url = f"http://127.0.0.1:{args.port}/api"

    if args.command == "server":
        # exec: Ctrl-C and signals reach the server directly
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(args.port)]
        # The UI learns the API address from these settings, not from --port.
        os.environ["PREFECT_SERVER_API_HOST"] = "127.0.0.1"
        os.environ["PREFECT_SERVER_API_PORT"] = str(args.port)
        os.environ.setdefault("PREFECT_UI_API_URL", api_url)
        print(f"Prefect UI on http://127.0.0.1:{args.port} (PREFECT_HOME={os.environ['PREFECT_HOME']})", flush=True)
        os.execv(sys.executable, cmd)

    from flows.workspace import PreflightError, preflight  # DVC only: no prefect yet

    if args.command == "run":
        try:
            preflight(Path(args.workspace or PROJECT_ROOT).resolve(), args.target, args.set_param, _experiment(args))
        except PreflightError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not os.environ.get("PREFECT_API_URL"):
        if _server_is_up(api_url):
            os.environ["PREFECT_API_URL"] = api_url
        elif args.command != "run":
            print(f"No Prefect server at {api_url}: start one with `python -m flows server`.", file=sys.stderr)
            return 2
        else:
            print("No Prefect server running: using a temporary one (start `python -m flows server` to keep runs).")
    from flows import deploy  # imports prefect: only now that PREFECT_API_URL is settled

    try:
        if args.command == "serve":
            params = {"workspace": os.path.abspath(args.workspace)} if args.workspace else {}
            deploy.serve(name=args.name, cron=args.cron, timezone=args.timezone, parameters=params)
            return 0
        parameters = _flow_parameters(args)
        if args.command == "trigger":
            deployment = deploy.find_deployment(args.name)
            ws = str(parameters.get("workspace") or deployment.parameters.get("workspace") or PROJECT_ROOT)
            if os.path.isdir(ws):  # else the workspace lives on the runner's machine: the run checks it
                preflight(Path(ws), args.target, args.set_param, _experiment(args))
            run = deploy.trigger(deployment, parameters, wait=not args.no_wait, pickup_timeout=args.pickup_timeout)
            ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
            state_name = run.state.name if run.state else "unknown"
            print(f"flow run {run.name} ({run.id}): {state_name}\n{ui}/runs/flow-run/{run.id}")
            if run.state is not None and run.state.is_failed() and run.state.message:
                print(" ".join(run.state.message.split())[:500], file=sys.stderr)
            return 0 if args.no_wait or (run.state is not None and run.state.is_completed()) else 1
    except (PreflightError, deploy.TriggerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state = deploy.onereward_pipeline(**parameters, pull=args.pull, push=args.push, return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
