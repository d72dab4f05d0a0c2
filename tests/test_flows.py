"""The Prefect flow over the DVC pipeline: micro runs under prefect_test_harness in temporary
copies of the repository, failures and retries, checks before a run, overrides as experiments,
the workspace lock, a real server's scheduler, and the Prefect UI and DVC's plots page seen by
headless Chromium."""

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
from flows.reports import data_rows, figure7_rows, table1_rows, table2_rows  # noqa: E402
from flows.dvc_process import DvcResult, WorkspaceBusy, run_dvc, workspace_lock  # noqa: E402
from flows.workspace import PreflightError, discover_stages, preflight, select_stages  # noqa: E402

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


MICRO_BASE_MODEL = {"base_model": {"vae_steps": 2, "steps": 2, "pool_size": 16, "vae_batch_size": 4, "batch_size": 4}}


def _micro_repo(dest: Path, params: dict[str, Any] | None = None) -> Path:
    repo = make_repo_copy(dest, {**MICRO_BASE_MODEL, **(params or {})})  # the base model, if shard needs it
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


ACCURACY = {  # reports/judge_accuracy.json as eval_judge writes it (two cells left out)
    "cells": {
        "fill": {d: {"accuracy": a} for d, a in zip(("text_alignment", "consistency", "structure"), (63.6, 65.1, 76.8))},
        "extend": {"aesthetics": {"accuracy": 95.9}},
        "removal": {"removal_quality": {"accuracy": 83.2}},
    },
    "mean_accuracy": 77.9,
}
DIMENSION_COLUMNS = ["text alignment", "consistency", "structure", "aesthetics", "removal quality"]


def test_report_tables_are_the_papers_tables() -> None:
    rows = table1_rows(ACCURACY)
    assert [r["task"] for r in rows] == ["image fill", "image extend", "object removal"]
    assert all(list(r)[1:] == DIMENSION_COLUMNS for r in rows)
    assert rows[0] == {"task": "image fill", "text alignment": 63.6, "consistency": 65.1, "structure": 76.8,
                       "aesthetics": "-", "removal quality": "-"}
    assert rows[2]["removal quality"] == 83.2 and rows[2]["aesthetics"] == "-"

    setting = {"n": 4, "gsb": {"good": 50.0, "same": 25.0, "bad": 25.0}, "mean_preference": 0.57,
               "base": {"usability": 25.0, "win_rate": {"removal_quality": 50.0}},
               "tuned": {"usability": 75.0, "win_rate": {"removal_quality": 75.0}}}
    assert figure7_rows({"removal": setting}) == [
        {"setting": "object removal", "scored by": "judge", "n": 4, "good %": 50.0, "same %": 25.0, "bad %": 25.0,
         "mean preference for tuned": 0.57}
    ]
    base, tuned = table2_rows({"removal": setting})
    assert (base["model"], base["usability %"], base["removal quality"], base["structure"]) == ("base", 25.0, 50.0, "-")
    assert (tuned["model"], tuned["usability %"]) == ("tuned", 75.0)
    rated = {**setting, "rater": {"gsb": {"good": 75.0, "same": 0.0, "bad": 25.0}, "usability": {"base": 0.0, "tuned": 50.0}}}
    assert figure7_rows({"removal": rated})[0]["scored by"] == "rater"
    assert figure7_rows({"removal": rated})[0]["good %"] == 75.0  # the rater's, as the report's Figure 7
    assert [r["usability %"] for r in table2_rows({"removal": rated})] == [0.0, 50.0]

    stats = {"inputs_per_split": {"train": 3}, "pairs_per_split": {"train": 7},
             "pairs": {"train": {"fill": {"structure": 2, "aesthetics": 3}, "removal": {"removal_quality": 2}}}}
    assert data_rows(stats) == [
        {"split": "train", "inputs": 3, "pairs": 7, "image fill pairs": 5, "image extend pairs": 0,
         "object removal pairs": 2}
    ]


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
        "import sys; from pathlib import Path; from flows.dvc_process import workspace_lock, WorkspaceBusy\n"
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
    upstream = [s.name for s in select_stages(discover_stages(repo), "shard")]
    assert _statuses(state) == [(name, "ran") for name in upstream]
    # The stages' own output reached the flow run's logs, line by line.
    assert "Running stage 'shard':" in logs
    assert any(line.startswith("shard: ") and " records, " in line for line in logs)

    stats = json.loads((repo / "reports" / "data_stats.json").read_text())
    assert artifacts["data-stats"] == data_rows(stats)
    assert [r["split"] for r in artifacts["data-stats"]] == sorted(stats["inputs_per_split"])
    assert "judge-accuracy" not in artifacts and "eval-gsb" not in artifacts  # stages not run
    assert artifacts["pipeline-progress"] == 100
    summary = artifacts["pipeline-summary"]
    assert "| 2 | `shard` | ran |" in summary or "| 3 | `shard` | ran |" in summary
    assert "- `reports/data_stats.json`: artifacts `data-stats`" in summary
    assert "file://" not in summary  # the UI cannot open files on the flow's machine

    start = time.monotonic()
    again, logs, _ = _run(target="shard", workspace=str(repo))
    seconds = time.monotonic() - start
    assert again.is_completed(), again.message
    assert _statuses(again) == [(name, "up to date") for name in upstream]
    assert not any(line.startswith("Running stage") for line in logs)
    print(f"no-op rerun of the flow ({', '.join(upstream)}): {seconds:.1f} s")
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
    assert "| `gate` | failed |" in artifacts["pipeline-summary"]
    assert "data-stats" in artifacts  # shard completed, so its table is fresh

    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("ok: false", "ok: true"))
    fixed, logs, _ = _run(target="gate", workspace=str(repo))
    assert fixed.is_completed(), fixed.message
    upstream = [s.name for s in select_stages(discover_stages(repo), "shard")]
    assert _statuses(fixed) == [*((name, "up to date") for name in upstream), ("gate", "ran")]
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


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True, capture_output=True, text=True
    ).stdout


def _commit_all(repo: Path, message: str) -> None:
    if not (repo / ".git").exists():
        _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", message)


def _exp_file(repo: Path, name: str, rel: str) -> str:
    base = _git(repo, "rev-parse", "HEAD").strip()
    return _git(repo, "show", f"refs/exps/{base[:2]}/{base[2:]}/{name}:{rel}")


def test_overrides_hold_for_one_run_and_are_saved_as_an_experiment(harness: None, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "ws"
    repo.mkdir()
    _git(repo, "init", "-q")
    _dvc(repo, "init", "-q")
    (repo / "count.py").write_text(COUNT)
    stage = {"cmd": "python count.py", "deps": ["count.py"], "params": ["count"], "outs": ["out.txt"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"count": stage}}))
    (repo / "params.yaml").write_text("count:\n  n: 1  # the baseline\n")
    _dvc(repo, "repro", "-q")
    _commit_all(repo, "baseline")
    before = {p: (repo / p).read_bytes() for p in ("params.yaml", "dvc.lock", "out.txt")}

    state, _, artifacts = _run(workspace=str(repo), set_params=["count.n=5"], exp_name="five")
    assert state.is_completed(), state.message
    assert _statuses(state) == [("count", "ran")]
    # The run was an experiment in a temporary clone: the workspace is exactly as it was.
    assert {p: (repo / p).read_bytes() for p in before} == before
    assert _git(repo, "status", "--porcelain") == ""
    assert "n: 5" in _exp_file(repo, "five", "params.yaml")
    assert "`count.n=5`" in artifacts["pipeline-summary"] and "`dvc exp apply five`" in artifacts["pipeline-summary"]
    _dvc(repo, "exp", "apply", "five")  # its outputs are in the DVC cache
    assert (repo / "out.txt").read_text() == "5"


@pytest.mark.slow
def test_an_override_of_the_pipeline_leaves_the_workspace_as_it_was(harness: None, tmp_path: Path) -> None:
    """`trigger --target shard -S synthesize.num_inputs=...`: params, data and dvc.lock stay; the
    experiment records new lock entries for the stages that ran and nothing else."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = _micro_repo(tmp_path / "repo")
    shutil.rmtree(repo / ".dvc")
    _git(repo, "init", "-q")
    _dvc(repo, "init", "-q")
    baseline, _, _ = _run(target="queries", workspace=str(repo))  # one stage past the override's target
    assert baseline.is_completed(), baseline.message
    _commit_all(repo, "baseline")
    lock = (repo / "dvc.lock").read_bytes()
    params = (repo / "params.yaml").read_bytes()
    records = (repo / "data" / "raw" / "records.jsonl").read_bytes()

    state, _, artifacts = _run(target="shard", workspace=str(repo), set_params=["synthesize.num_inputs=20"])
    assert state.is_completed(), state.message
    ran = dict(_statuses(state))
    assert ran["synthesize"] == "ran" and ran["shard"] == "ran" and "queries" not in ran
    assert (repo / "dvc.lock").read_bytes() == lock and (repo / "params.yaml").read_bytes() == params
    assert (repo / "data" / "raw" / "records.jsonl").read_bytes() == records
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", "queries"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert json.loads(status.stdout) == {}  # what the baseline built is up to date: nothing to rerun

    name = next(line.split("`")[1] for line in artifacts["pipeline-summary"].splitlines() if "DVC experiment" in line)
    old, new = yaml.safe_load(lock), yaml.safe_load(_exp_file(repo, name, "dvc.lock"))
    assert new["stages"]["queries"] == old["stages"]["queries"]  # not run: recorded as it was
    assert new["stages"]["shard"] != old["stages"]["shard"]
    assert new["stages"]["synthesize"]["params"]["params.yaml"]["synthesize"]["num_inputs"] == 20
    stats = json.loads(_exp_file(repo, name, "reports/data_stats.json"))
    assert artifacts["data-stats"] == data_rows(stats)  # the experiment's report, not the workspace's


def _flows_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows", *args],
        cwd=PROJECT_ROOT,
        env=env or {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"},  # never reached
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_input_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    repo = make_repo_copy(tmp_path / "repo")
    (repo / "data" / "raw").mkdir()
    (repo / "data" / "raw" / "keep.txt").write_text("untouched")
    params = (repo / "params.yaml").read_bytes()
    cases = {
        ("--target", "nosuch"): r"^error: unknown target stage 'nosuch'; dvc\.yaml has: .*shard",
        ("--target", "shard", "-S", "synthesize.num_inputs=abc"): (
            r"^error: params\.yaml: params\.synthesize\.num_inputs: expected an integer, got str 'abc' \(with the run's overrides\)$"
        ),
        ("-S", "nope.key=1"): r"^error: --set-param \['nope\.key=1'\] on params\.yaml: .*Could not override 'nope\.key'",
        ("-S", "profile=huge"): r"^error: params\.yaml: params\.profile: unknown profile 'huge'",
        ("-S", "synthesize.num_inputs=30"): r"^error: overrides and exp_name need a git workspace",
    }
    for args, message in cases.items():
        proc = _flows_cli("run", "--workspace", str(repo), *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and re.match(message, proc.stderr), (args, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr
    assert (repo / "params.yaml").read_bytes() == params
    assert sorted(p.name for p in (repo / "data").rglob("*")) == ["keep.txt", "raw"]
    with pytest.raises(PreflightError, match="no dvc.yaml"):
        preflight(tmp_path, None, [])


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


JUDGE = f"""\
import json, os
os.makedirs("reports", exist_ok=True)
json.dump({json.dumps(ACCURACY)}, open("reports/judge_accuracy.json", "w"))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real Prefect server (its own PREFECT_HOME) and `python -m flows serve` of a tiny workspace."""
    tmp = tmp_path_factory.mktemp("served")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),
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
        tmp / "ws",
        {
            "prepare": {"cmd": out.format("a.txt"), "outs": ["a.txt"]},
            "build": {"cmd": out.format("b.txt"), "deps": ["a.txt"], "outs": ["b.txt"]},
            "eval_judge": {"cmd": "python judge.py", "deps": ["b.txt"], "outs": [{"reports/judge_accuracy.json": {"cache": False}}]},
        },
        {},
        {"judge.py": JUDGE},
    )
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(tmp / log, "wb") as f:
            procs.append(subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
        return procs[-1]

    try:
        server = start(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            "server.log",
        )
        _wait_for("the Prefect server", lambda: _get_json(f"{api}/health") is True, 90, server)
        serve = start(
            [sys.executable, "-m", "flows", "serve", "--port", str(port), "--workspace", str(ws), "--cron", "0 2 * * *"],
            "serve.log",
        )
        deployment = _wait_for(
            "the deployment", lambda: _get_json(f"{api}/deployments/filter", {}), 90, server, serve
        )[0]
        yield {"api": api, "port": port, "env": env, "ws": ws, "deployment": deployment, "tmp": tmp, "procs": procs}
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log = (tmp / "server.log").read_text(errors="replace")
        assert "Can't evaluate bulk DML" not in log and "InvalidRequestError" not in log, log[-3000:]


def _runs(api: str, deployment_id: str, *states: str) -> list[dict[str, Any]]:
    flow_runs: dict[str, Any] = {"deployment_id": {"any_": [deployment_id]}}
    if states:
        flow_runs["state"] = {"type": {"any_": list(states)}}
    return list(_get_json(f"{api}/flow_runs/filter", {"flow_runs": flow_runs}))


@pytest.mark.slow
def test_the_servers_scheduler_creates_the_nightly_runs(served: dict[str, Any]) -> None:
    """Not only the schedule's label: the server's own scheduler service creates the cron's runs."""
    api, deployment = served["api"], served["deployment"]
    start = time.monotonic()
    runs = _wait_for(
        "runs scheduled by the server", lambda: _runs(api, deployment["id"], "SCHEDULED"), 90, *served["procs"]
    )
    print(f"first scheduled run after {time.monotonic() - start:.0f} s")
    assert all(r["auto_scheduled"] for r in runs)
    assert all(r["expected_start_time"][11:19] == "02:00:00" for r in runs), [r["expected_start_time"] for r in runs]


@pytest.mark.slow
def test_trigger_refuses_with_one_line_before_creating_a_run(served: dict[str, Any]) -> None:
    api, port, env, deployment = served["api"], str(served["port"]), served["env"], served["deployment"]

    def trigger(*args: str) -> subprocess.CompletedProcess[str]:
        proc = _flows_cli("trigger", "--port", port, *args, env=env, timeout=120)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        return proc

    manual = len([r for r in _runs(api, deployment["id"]) if not r["auto_scheduled"]])
    assert re.match(r"error: no deployment onereward-pipeline/nosuch on this server \(it has: nightly\)",
                    trigger("--name", "nosuch").stderr)
    assert re.match(r"error: unknown target stage 'nope'; dvc\.yaml has: prepare, build, eval_judge",
                    trigger("--target", "nope").stderr)
    assert len([r for r in _runs(api, deployment["id"]) if not r["auto_scheduled"]]) == manual  # none created

    unserved = _get_json(f"{api}/deployments/", {"name": "unserved", "flow_id": deployment["flow_id"]})
    assert re.match(r"error: nothing serves onereward-pipeline/unserved: ", trigger("--name", "unserved").stderr)
    assert _runs(api, unserved["id"]) == []


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (Debian package `chromium`) is not installed")
def test_ui_shows_the_schedule_a_completed_run_and_table1(served: dict[str, Any]) -> None:
    api, port, env, ws, tmp = served["api"], served["port"], served["env"], served["ws"], served["tmp"]
    trigger = _flows_cli("trigger", "--port", str(port), env=env)
    assert trigger.returncode == 0, trigger.stdout + trigger.stderr
    run_name, run_id = trigger.stdout.split()[2], trigger.stdout.split()[3].strip("():")
    assert (ws / "b.txt").read_text() == "b.txt"

    schedule = "At 02:00 AM every day"  # how the UI spells cron "0 2 * * *"
    _page_text(
        f"http://127.0.0.1:{port}/deployments",
        tmp / "chrome-list",
        re.compile(rf"nightly onereward-pipeline .*{schedule}"),
    )
    _page_text(
        f"http://127.0.0.1:{port}/deployments/deployment/{served['deployment']['id']}?tab=Runs",
        tmp / "chrome-deployment",
        re.compile(rf"Deployments nightly .*{re.escape(run_name)} .*?Completed .*Schedules {schedule}"),
    )
    artifacts = _get_json(
        f"{api}/artifacts/filter",
        {"artifacts": {"key": {"any_": ["judge-accuracy"]}, "flow_run_id": {"any_": [run_id]}}},
    )
    assert len(artifacts) == 1
    # Table 1 as in the report: a row per task, a column per dimension.
    header = r"task text alignment consistency structure aesthetics removal quality"
    _page_text(
        f"http://127.0.0.1:{port}/artifacts/artifact/{artifacts[0]['id']}",
        tmp / "chrome-artifact",
        re.compile(rf"{header} image fill 63\.6 65\.1 76\.8 (- )*image extend (- )*95\.9 (- )*object removal (- )*83\.2"),
    )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (Debian package `chromium`) is not installed")
def test_plots_page_draws_its_charts_offline(tmp_path: Path) -> None:
    """`dvc plots show` with the project's DVC config: the charting library is in the page itself."""
    repo = _tiny_repo(tmp_path / "ws", {}, {})
    shutil.copy(PROJECT_ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "templates" / "plots").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "templates" / "plots" / "page.html", repo / "templates" / "plots" / "page.html")
    (repo / "val_reward.csv").write_text("step,reward\n0,0.46\n25,0.55\n50,0.61\n75,0.65\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"val_reward.csv": {"x": "step", "y": "reward"}}]}))
    _dvc(repo, "plots", "show", "-q")
    page = (repo / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page) and "cdn.jsdelivr" not in page

    dom = subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000",
            "--dump-dom", (repo / "dvc_plots" / "index.html").as_uri(),
        ],
        capture_output=True, text=True, timeout=90, check=True,
    ).stdout
    line = re.search(r'<path[^>]*aria-roledescription="line mark"[^>]*\sd="(M[^"]+)"', dom) or re.search(
        r'<path[^>]*\sd="(M[^"]+)"[^>]*aria-roledescription="line mark"', dom
    )
    assert line is not None, dom[:3000]
    assert line.group(1).count(",") >= 4  # a line through the four points
    assert re.search(r">reward<", dom) and re.search(r">step<", dom)  # axis titles
