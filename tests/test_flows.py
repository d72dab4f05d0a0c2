"""The Prefect flow over the DVC pipeline: micro runs under prefect_test_harness in temporary
copies of the repository, failures and retries, the workspace lock, and the Prefect UI seen
by headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# Before prefect is imported: keep its home (and anything it writes) out of the project.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from conftest import make_repo_copy  # noqa: E402
from prefect import get_client  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort  # noqa: E402
from prefect.logging.handlers import APILogWorker  # noqa: E402
from prefect.states import State  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from flows import PROJECT_ROOT  # noqa: E402
from flows.pipeline import onereward_pipeline  # noqa: E402
from flows.reports import table_rows  # noqa: E402
from flows.workspace import (
    DvcResult,
    WorkspaceBusy,
    discover_stages,
    run_dvc,
    select_stages,
    workspace_lock,
)  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
FAST = {"retries": 2, "retry_delay_seconds": 0.0, "lock_timeout_seconds": 30.0}


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=90):
        yield


def _dvc(cwd: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=True, capture_output=True)


def _tiny_repo(root: Path, stages: dict[str, Any], params: dict[str, Any], files: dict[str, str] | None = None) -> Path:
    """A git-less DVC repository with hand-written stages (no project code needed)."""
    root.mkdir(parents=True)
    _dvc(root, "init", "--no-scm", "-q")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, text in (files or {}).items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def _micro_repo(dest: Path, params: dict[str, Any] | None = None) -> Path:
    repo = make_repo_copy(dest, params)
    shutil.rmtree(repo / "reports", ignore_errors=True)  # every report must come from this run
    (repo / "reports").mkdir()
    return repo


def _run(**params: Any) -> tuple[State[Any], list[str], dict[str, Any]]:
    """Run the flow; return its final state, its log messages and its artifacts by key."""
    state = onereward_pipeline(**{**FAST, **params}, return_state=True)
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs: list[str] = []
        while True:
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                limit=200,
                offset=len(logs),
                sort=LogSort.TIMESTAMP_ASC,
            )
            logs += [log.message for log in page]
            if len(page) < 200:
                break
        artifacts = {
            a.key: json.loads(a.data) if a.type == "table" and isinstance(a.data, str) else a.data
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
            if a.key
        }
    return state, logs, artifacts


def _statuses(state: State[Any]) -> list[tuple[str, str]]:
    return [(o.stage, o.status) for o in state.result()]


# --- pure parts: no Prefect server ------------------------------------------------------------


def test_stages_come_from_dvc_in_dependency_order(tmp_path: Path) -> None:
    out = "python -c \"open('{0}', 'w').write('{0}')\""
    repo = _tiny_repo(
        tmp_path / "ws",
        {  # declared against their dependency order on purpose
            "report": {"cmd": out.format("r.txt"), "deps": ["m.txt"], "outs": ["r.txt"]},
            "model": {"cmd": out.format("m.txt"), "deps": ["d.txt"], "outs": ["m.txt"]},
            "data": {"cmd": out.format("d.txt"), "outs": ["d.txt"]},
            "other": {"cmd": out.format("o.txt"), "outs": ["o.txt"]},
        },
        {},
    )
    stages = discover_stages(repo)
    assert [s.name for s in stages] == ["data", "model", "report", "other"]
    assert stages[2].outs == ("r.txt",) and stages[2].upstream == ("data", "model")
    assert [s.name for s in select_stages(stages, "model")] == ["data", "model"]
    assert [s.name for s in select_stages(stages, None)] == ["data", "model", "report", "other"]
    with pytest.raises(ValueError, match="unknown target stage 'nope'.*data, model, report, other"):
        select_stages(stages, "nope")


def test_report_tables_keep_their_shape() -> None:
    assert table_rows({"fill": {"structure": 0.8, "aesthetics": 0.7}, "removal": {"removal_quality": 0.9}}) == [
        {"name": "fill", "aesthetics": 0.7, "removal_quality": None, "structure": 0.8},
        {"name": "removal", "aesthetics": None, "removal_quality": 0.9, "structure": None},
    ]
    assert table_rows({"records_in": 28, "splits": {"train": {"fill": 3}}, "reasons": []}) == [
        {"metric": "records_in", "value": 28},
        {"metric": "splits.train.fill", "value": 3},
        {"metric": "reasons", "value": "[]"},
    ]
    assert table_rows([{"task": "fill", "gsb": {"good": 1}}]) == [{"task": "fill", "gsb": '{"good": 1}'}]


def test_only_signals_locks_and_network_count_as_transient() -> None:
    def result(code: int, *lines: str) -> DvcResult:
        return DvcResult(returncode=code, tail=lines)

    assert result(255, "ERROR: failed to reproduce 'x': failed to run: python x.py, exited with -9").transient
    assert result(255, "ERROR: failed to reproduce 'x': failed to run: sh x.sh, exited with 137").transient
    assert result(255, "ERROR: Unable to acquire lock. Most likely another DVC process is running").transient
    assert result(255, "requests.exceptions.ConnectionError: boom", "exited with 1").transient
    assert not result(255, "ValueError: bad params", "ERROR: ... failed to run: python x.py, exited with 1").transient
    assert not result(255, "ERROR: ... failed to run: python x.py, exited with 9").transient


def test_workspace_lock_excludes_other_processes(tmp_path: Path) -> None:
    probe = (
        "import sys; from pathlib import Path; from flows.workspace import workspace_lock, WorkspaceBusy\n"
        "try:\n"
        "    with workspace_lock(Path(sys.argv[1]), timeout=0.3, poll=0.05): print('acquired')\n"
        "except WorkspaceBusy as e: print('busy:', e)\n"
    )

    def other_process() -> str:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        return subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path)], env=env, capture_output=True, text=True, check=True
        ).stdout

    with workspace_lock(tmp_path, owner="flow run held-by-test"):
        assert other_process().startswith("busy:") and "held-by-test" in other_process()
        with pytest.raises(WorkspaceBusy):  # a second flow run in this process is kept out too
            with workspace_lock(tmp_path, timeout=0.1, poll=0.05):
                pass
    assert other_process().strip() == "acquired"


def test_an_interrupted_stage_does_not_outlive_the_flow(tmp_path: Path) -> None:
    """Cancelling a run (Prefect raises in the flow's thread) stops DVC and the stage command."""
    marker = f"sleeper-{os.getpid()}"
    cmd = f"python -c \"import time; print('{marker}', flush=True); time.sleep(120)\""
    repo = _tiny_repo(tmp_path / "ws", {"slow": {"cmd": cmd, "outs": ["never.txt"]}}, {})

    def cancel_on_start(line: str) -> None:
        if line == marker:
            raise KeyboardInterrupt

    def running() -> bool:
        return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0

    with pytest.raises(KeyboardInterrupt):
        run_dvc(["repro", "--single-item", "slow"], repo, cancel_on_start)
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running()


# --- the flow under prefect_test_harness ------------------------------------------------------


@pytest.mark.slow
def test_micro_pipeline_runs_then_is_a_noop(harness: None, tmp_path: Path) -> None:
    repo = _micro_repo(tmp_path / "repo")
    state, logs, artifacts = _run(target="shard", workspace=str(repo))
    assert state.is_completed(), state.message
    assert _statuses(state) == [("synthesize", "ran"), ("shard", "ran")]
    # The stages' own output reached the flow run's logs, line by line.
    assert "Running stage 'shard':" in logs
    assert any(line.startswith("shard: ") and " records, " in line for line in logs)

    stats = json.loads((repo / "reports" / "data_stats.json").read_text())
    assert artifacts["data-stats"] == table_rows(stats)
    assert {"metric": "records_in", "value": stats["records_in"]} in artifacts["data-stats"]
    assert "judge-accuracy" not in artifacts and "eval-metrics" not in artifacts  # absent reports
    assert artifacts["pipeline-progress"] == 100
    summary = artifacts["pipeline-summary"]
    assert "| 2 | `shard` | ran |" in summary
    assert f"]({(repo / 'reports' / 'data_stats.json').as_uri()})" in summary

    start = time.monotonic()
    again, logs, _ = _run(target="shard", workspace=str(repo))
    seconds = time.monotonic() - start
    assert again.is_completed(), again.message
    assert _statuses(again) == [("synthesize", "up to date"), ("shard", "up to date")]
    assert not any(line.startswith("Running stage") for line in logs)
    print(f"no-op rerun of the flow (synthesize + shard): {seconds:.1f} s")
    assert seconds < 30


GATE = """\
import sys
from pathlib import Path
import yaml

stats = yaml.safe_load(open("reports/data_stats.json"))
if not yaml.safe_load(open("params.yaml"))["gate"]["ok"]:
    sys.exit(f"gate: deliberate failure after {stats['records_in']} records (gate.ok is false)")
Path("data/gate.txt").write_text("ok")
"""


@pytest.mark.slow
def test_failing_stage_fails_the_run_and_a_rerun_skips_completed_stages(harness: None, tmp_path: Path) -> None:
    repo = _micro_repo(tmp_path / "repo", {"gate": {"ok": False}})
    # A tiny stage injected after shard, failing on a deliberately broken params value.
    (repo / "gate.py").write_text(GATE)
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
    dvc_yaml["stages"]["gate"] = {
        "cmd": "python gate.py",
        "deps": ["gate.py", "reports/data_stats.json"],
        "params": ["gate"],
        "outs": ["data/gate.txt"],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))

    state, logs, artifacts = _run(target="gate", workspace=str(repo))
    assert state.is_failed()
    assert "gate: deliberate failure" in (state.message or "")
    assert any("gate: deliberate failure after" in line for line in logs)
    assert any(line.startswith("ERROR: failed to reproduce 'gate'") for line in logs)
    assert logs.count("Running stage 'gate':") == 1  # deterministic: not retried
    assert "| 3 | `gate` | failed |" in artifacts["pipeline-summary"]
    assert "data-stats" in artifacts  # shard completed, so its table is fresh

    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("ok: false", "ok: true"))
    fixed, logs, _ = _run(target="gate", workspace=str(repo))
    assert fixed.is_completed(), fixed.message
    assert _statuses(fixed) == [("synthesize", "up to date"), ("shard", "up to date"), ("gate", "ran")]
    assert (repo / "data" / "gate.txt").read_text() == "ok"


FLAKY = """\
import os, signal
from pathlib import Path

attempts = Path("attempts")
attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
if attempts.read_text() == "x":
    print("flaky: first attempt, simulating the OOM killer", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
Path("out.txt").write_text("done")
"""


def test_transient_failure_is_retried(harness: None, tmp_path: Path) -> None:
    repo = _tiny_repo(
        tmp_path / "ws",
        {"flaky": {"cmd": "python flaky.py", "deps": ["flaky.py"], "outs": ["out.txt"]}},
        {},
        {"flaky.py": FLAKY},
    )
    state, logs, _ = _run(workspace=str(repo))
    assert state.is_completed(), state.message
    assert logs.count("Running stage 'flaky':") == 2
    assert any("looks transient" in line for line in logs)
    assert (repo / "attempts").read_text() == "xx"

    failing, _, _ = _run(workspace=str(repo), retries=0, set_params=["nope.key=1"])
    assert failing.is_failed() and "--set-param" in (failing.message or "")


COUNT = """\
import yaml
from pathlib import Path
Path("out.txt").write_text(str(yaml.safe_load(open("params.yaml"))["count"]["n"]))
"""


def test_overrides_hold_for_one_run_and_are_saved_as_an_experiment(harness: None, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "ws"
    repo.mkdir()
    git = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for key, value in (("user.name", "t"), ("user.email", "t@e")):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    (repo / "count.py").write_text(COUNT)
    stage = {"cmd": "python count.py", "deps": ["count.py"], "params": ["count"], "outs": ["out.txt"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"count": stage}}))
    (repo / "params.yaml").write_text("count:\n  n: 1  # the baseline\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=repo, check=True, env=git)
    baseline = (repo / "params.yaml").read_bytes()

    state, _, artifacts = _run(workspace=str(repo), set_params=["count.n=5"], exp_name="five")
    assert state.is_completed(), state.message
    assert (repo / "out.txt").read_text() == "5"
    assert (repo / "params.yaml").read_bytes() == baseline  # the override held for this run only
    assert "`count.n=5`" in artifacts["pipeline-summary"] and "`five`" in artifacts["pipeline-summary"]
    exps = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "list", "--name-only"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "five" in exps.stdout.split()


# --- the Prefect UI in headless Chromium ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _wait_for(what: str, check: Any, timeout: float, *procs: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{p.args!r} exited with {p.returncode} while waiting for {what}"
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _page_text(url: str, profile: Path, expect: re.Pattern[str], attempts: int = 4) -> str:
    """The UI page as text once headless Chromium has rendered what ``expect`` matches.

    The app fills lists in after a chain of API calls; a dump can come before the last one,
    so look again (a fresh profile each time) before calling it missing.
    """
    text = ""
    for attempt in range(attempts):
        dom = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}-{attempt}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=True,
        ).stdout
        text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))
        if expect.search(text):
            return text
        time.sleep(1)
    raise AssertionError(f"{url} never showed {expect.pattern!r}; last seen:\n{text[:3000]}")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (Debian package `chromium`) is not installed")
def test_ui_shows_the_scheduled_deployment_and_a_completed_run(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),  # where the UI looks for the API
        "PREFECT_UI_API_URL": api,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # serve picks the triggered run up at once
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    out = "python -c \"open('{0}', 'w').write('{0}')\""
    ws = _tiny_repo(
        tmp_path / "ws",
        {
            "prepare": {"cmd": out.format("a.txt"), "outs": ["a.txt"]},
            "build": {"cmd": out.format("b.txt"), "deps": ["a.txt"], "outs": ["b.txt"]},
        },
        {},
    )
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "wb") as f:
            procs.append(subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
        return procs[-1]

    try:
        server = start(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            "server.log",
        )
        _wait_for("the Prefect server", lambda: _get_json(f"{api}/health") is True, 90, server)
        serve = start(
            [
                sys.executable,
                "-m",
                "flows",
                "serve",
                "--port",
                str(port),
                "--workspace",
                str(ws),
                "--cron",
                "0 2 * * *",
            ],
            "serve.log",
        )
        deployment = _wait_for("the deployment", lambda: _get_json(f"{api}/deployments/filter", {}), 90, server, serve)[
            0
        ]
        trigger = subprocess.run(
            [sys.executable, "-m", "flows", "trigger", "--port", str(port)],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        run_name = trigger.stdout.split()[2]
        assert (ws / "b.txt").read_text() == "b.txt"

        schedule = "At 02:00 AM every day"  # how the UI spells cron "0 2 * * *"
        _page_text(
            f"http://127.0.0.1:{port}/deployments",
            tmp_path / "chrome-list",
            re.compile(rf"nightly onereward-pipeline .*{schedule}"),
        )
        _page_text(
            f"http://127.0.0.1:{port}/deployments/deployment/{deployment['id']}?tab=Runs",
            tmp_path / "chrome-deployment",
            re.compile(rf"Deployments nightly .*{re.escape(run_name)} .*?Completed .*Schedules {schedule}"),
        )
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
