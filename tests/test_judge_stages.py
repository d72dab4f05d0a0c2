"""The judge stages end to end through DVC on a micro dataset, and the scoring CLI."""

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import make_repo_copy, run_dvc

JUDGE_STAGES = ["queries", "train_judge", "eval_judge"]
FAST = {
    "train_judge": {"per_profile": {"tiny": {"finetune": "full", "lr": 1.0e-3, "steps": 4, "batch_size": 8, "warmup_steps": 1,
                                             "eval_every": 2, "checkpoint_every": 2, "gradient_checkpointing": False}}},
}


def ran(proc) -> list[str]:
    return [line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")]


@pytest.mark.slow
def test_repro_eval_judge_then_a_template_edit_reruns_only_judge_stages(tmp_path):
    repo = make_repo_copy(tmp_path / "repo", FAST)
    first = run_dvc(repo, "repro", "eval_judge")
    assert set(JUDGE_STAGES + ["judge_base"]) <= set(ran(first))

    table = (repo / "reports/table1_judge_accuracy.md").read_text()
    for row in ("| image fill |", "| image extend |", "| object removal |"):
        assert row in table
    assert "83.77" in table and "84.93" in table  # the paper's numbers beside ours
    metrics = json.loads((repo / "reports/judge_accuracy.json").read_text())
    assert metrics["pairs"] > 0 and 0 <= metrics["order_consistency"] <= 100
    assert (repo / "data/models/judge/model.safetensors").is_file()
    assert (repo / "dvclive/train_judge/metrics.json").is_file()

    path = repo / "templates/judge_queries.yaml"
    path.write_text(path.read_text().replace("version: 1", "version: 2").replace(
        "Is the object removed more cleanly", "Is the object removed more completely"))
    second = run_dvc(repo, "repro", "eval_judge")
    assert ran(second) == JUDGE_STAGES
    assert "removed more completely" in json.dumps(
        __import__("pyarrow.parquet", fromlist=["x"]).read_table(repo / "data/queries.parquet").to_pylist())

    # A temporary experiment downstream of the judge takes the trained judge from the cache: every
    # output of train_judge is in git or in the cache (none is left behind by the temp copy).
    git = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    (repo / ".dvc/.gitignore").write_text("/config.local\n/tmp\n/cache\n")
    for cmd in (["git", "init", "-q"], ["dvc", "config", "--unset", "core.no_scm"], ["git", "add", "-A"], ["git", "commit", "-qm", "judge"]):
        subprocess.run(cmd, cwd=repo, env=git, check=True, capture_output=True)
    exp = run_dvc(repo, "exp", "run", "--temp", "-S", "eval_judge.batch_size=32", "eval_judge", env=git)
    assert ran(exp) == ["eval_judge"], exp.stdout


def test_cli_prints_p_yes(tmp_path, capsys):
    from onereward.judge.cli import main
    from onereward.judge.model import Judge, JudgeMeta
    from onereward.judge.queries import render_query
    from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge

    save_tiny_judge(TinyJudgeConfig(), tmp_path / "judge")
    JudgeMeta(resolution=56).write(tmp_path / "judge")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    args = ["--judge", str(tmp_path / "judge"), "--task", "fill", "--dimension", "text_alignment",
            "--prompt", "a red circle", str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert main(args) == 0
    printed = float(capsys.readouterr().out.strip())
    judge = Judge.load(tmp_path / "judge")
    expected = judge.score([Image.open(tmp_path / "a.png")], [Image.open(tmp_path / "b.png")],
                           [render_query("fill", "text_alignment", "a red circle")])[0].item()
    assert abs(printed - expected) < 1e-6
    assert main(args + ["--symmetric"]) == 0
    assert 0 < float(capsys.readouterr().out.strip()) < 1
    assert main(args[:6] + [str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 2  # text alignment needs a prompt
