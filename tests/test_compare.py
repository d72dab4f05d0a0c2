"""`python -m onereward.eval.compare`: runs read at git revisions, rater and judge numbers side by side."""

import json
import subprocess

import pytest

from onereward.eval.compare import main


def _metrics(good: float, bad: float) -> dict:
    rater = {"n": 10, "gsb": {"good": good, "same": 100 - good - bad, "bad": bad},
             "good_minus_bad": [good - bad, good - bad - 20, good - bad + 20],
             "score": {"removal_quality": {"diff": [0.01, -0.02, 0.04]}}}
    return {"removal": {"n": 10, "gsb": {"good": 90.0, "same": 10.0, "bad": 0.0}, "rater": rater}}


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_compares_a_committed_run_with_the_workspace(tmp_path, capsys):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@t")
    _git(tmp_path, "config", "user.name", "t")
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "reports").mkdir()
    path = tmp_path / "reports" / "eval_metrics.json"
    path.write_text(json.dumps(_metrics(60.0, 20.0)))
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "alg1")
    path.write_text(json.dumps(_metrics(30.0, 50.0)))
    out = tmp_path / "cmp.md"
    main(["HEAD", "workspace", "--labels", "Alg. 1", "Alg. 2", "--repo", str(tmp_path), "-o", str(out)])
    text = out.read_text()
    assert "| object removal | Alg. 1 | 10 | 60.0 / 20.0 / 20.0 | 40.0 [20.0, 60.0] | 90.0 / 10.0 / 0.0 |" in text
    assert "| object removal | Alg. 2 | 10 | 30.0 / 20.0 / 50.0 | -20.0 [-40.0, 0.0] |" in text
    assert "0.010 [-0.020, 0.040]" in text


def test_an_unknown_revision_is_one_line_naming_it(tmp_path):
    _git(tmp_path, "init", "-q")
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    with pytest.raises(SystemExit, match="cannot read reports/eval_metrics.json at 'no-such-exp'"):
        main(["no-such-exp", "--repo", str(tmp_path)])
