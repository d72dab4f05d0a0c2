"""params.yaml as the stages read it: types checked, the profile named by a plain value, and a
file that stays itself under DVC's own rewrites (`dvc exp run -S`)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from onereward.config import ParamsError, active_profile, check_params, from_dict, load_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


@dataclasses.dataclass(frozen=True)
class Demo:
    steps: int = 1
    lr: float = 0.1
    flag: bool = False
    name: str = "x"
    pair: tuple[int, int] = (0, 1)
    names: tuple[str, ...] = ()
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    limit: int | None = None


def test_values_must_have_their_fields_type() -> None:
    cfg = from_dict(Demo, {"steps": 3, "lr": 1, "pair": [2, 5], "names": ["a"], "weights": {"a": 1}, "limit": None})
    assert cfg == Demo(steps=3, lr=1.0, pair=(2, 5), names=("a",), weights={"a": 1.0})
    assert isinstance(cfg.lr, float) and isinstance(cfg.weights["a"], float)
    assert from_dict(Demo, {"lr": "1e-05"}).lr == 1e-5  # YAML 1.1 reads DVC's 1e-05 as text
    bad = {
        "steps": ("abc", r"params\.demo\.steps: expected an integer, got str 'abc'"),
        "lr": ("fast", r"params\.demo\.lr: expected a number, got str 'fast'"),
        "flag": ("yes please", r"params\.demo\.flag: expected true or false"),
        "name": (3, r"params\.demo\.name: expected a string, got int 3"),
        "pair": ([1], r"params\.demo\.pair: expected 2 values, got 1"),
        "names": ([1], r"params\.demo\.names\[0\]: expected a string"),
        "weights": ({"a": "x"}, r"params\.demo\.weights\.a: expected a number"),
        "limit": (True, r"params\.demo\.limit: expected an integer, got bool True"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ParamsError, match=message):
            from_dict(Demo, {key: value}, ".demo")
    with pytest.raises(ParamsError, match=r"params\.demo: unknown key\(s\) \['step'\]"):
        from_dict(Demo, {"step": 1}, ".demo")


def test_the_profile_is_a_name_resolved_in_code() -> None:
    params = yaml.safe_load(PARAMS.read_text())
    assert params["profile"] == "tiny" and params["dataset"] == "data/raw"
    tiny = active_profile(params)
    assert tiny.name == "tiny" and tiny.dataset == "data/raw" and tiny.device == "cpu"
    assert load_params(PARAMS)["profile"] == dataclasses.asdict(tiny)  # what the stages see
    real = active_profile({**params, "profile": "real", "dataset": "/data/x"})
    assert (real.name, real.dataset, real.dtype) == ("real", "/data/x", "bfloat16")
    with pytest.raises(ParamsError, match=r"params\.profile: unknown profile 'huge'; .*\['real', 'tiny'\]"):
        active_profile({**params, "profile": "huge"})
    with pytest.raises(ParamsError, match=r"params\.dataset: profile 'real' reads data/raw"):
        check_params({**params, "profile": "real"})


def test_every_section_is_checked_at_once() -> None:
    params = yaml.safe_load(PARAMS.read_text())
    assert check_params(params).name == "tiny"
    cases = [
        (("synthesize", "num_inputs"), "abc", r"params\.synthesize\.num_inputs: expected an integer, got str 'abc'"),
        (("evaluate", "gsb_margin"), 0.7, r"params\.evaluate: evaluate\.gsb_margin must be in \[0, 0\.5\)"),
        (("train_judge", "per_profile", "tiny", "steps"), "many", r"params\.train_judge\.steps: expected an integer"),
        (("train_policy", "per_profile", "tiny", "lora", "rank"), 1.5, r"params\.train_policy\.lora\.rank: expected an integer"),
        (("shard", "strictly"), True, r"params\.shard: unknown key\(s\) \['strictly'\]"),
    ]
    for path, value, message in cases:
        broken = yaml.safe_load(PARAMS.read_text())
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ParamsError, match=message):
            check_params(broken)


def _check_cli(params_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onereward.config", str(params_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_check_command_prints_one_line(tmp_path: Path) -> None:
    ok = _check_cli(PARAMS)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{PARAMS}: ok (profile 'tiny', dataset data/raw)"
    bad = tmp_path / "params.yaml"
    bad.write_text(re.sub(r"(?m)^  num_inputs: \d+", "  num_inputs: abc", PARAMS.read_text(), count=1))
    assert "num_inputs: abc" in bad.read_text()
    failed = _check_cli(bad)
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.splitlines() == [
        f"{bad}: params.synthesize.num_inputs: expected an integer, got str 'abc'"
    ]


CHECK_STAGE = {
    "stages": {
        "check": {
            "cmd": "python -m onereward.config > checked.txt",
            "params": ["profile", "profiles.${profile}", "dataset", "synthesize"],
            "outs": ["checked.txt"],
        }
    }
}


def test_profile_switch_survives_dvc_rewrites(tmp_path: Path) -> None:
    """`dvc exp run -S` rewrites params.yaml: one value changes one line, and the file still reads."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(PARAMS, repo / "params.yaml")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(CHECK_STAGE, sort_keys=False))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # the check imports stage modules for their config classes
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }

    def run(*args: str) -> str:
        proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "baseline")

    run(sys.executable, "-m", "dvc", "exp", "run", "-S", "synthesize.seed=1")
    diff = run("git", "diff", "-U0", "--", "params.yaml").splitlines()
    changed = [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    # Lists in params.yaml must be in block style (one item a line), as DVC writes them back.
    assert changed == ["-  seed: 0", "+  seed: 1"], "dvc exp run -S rewrote more than the value:\n" + "\n".join(changed)
    assert (repo / "checked.txt").read_text().startswith("params.yaml: ok (profile 'tiny'")

    run(sys.executable, "-m", "dvc", "exp", "run", "-S", "profile=real", "-S", "dataset=/data/annotations")
    assert (repo / "checked.txt").read_text().startswith("params.yaml: ok (profile 'real', dataset /data/annotations)")
    assert active_profile(yaml.safe_load((repo / "params.yaml").read_text())).policy_model == (
        "black-forest-labs/FLUX.1-Fill-dev"
    )
