"""`dvc repro` of the data stages on a micro config in a temporary copy of the repository."""

import json

from conftest import make_repo_copy, run_dvc


def test_repro_builds_data_stages_then_is_a_noop(tmp_path):
    repo = make_repo_copy(tmp_path / "repo")
    run_dvc(repo, "repro", "shard")
    stats = json.loads((repo / "reports" / "data_stats.json").read_text())
    assert stats["records_in"] == 24 + 4 and stats["quarantined"] == 4
    assert stats["accepted"] + stats["quarantined"] == stats["records_in"]
    assert list((repo / "data" / "shards" / "train").glob("train-*.tar"))
    again = run_dvc(repo, "repro", "shard")
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    # A params change of the shard section reruns shard only, not synthesize.
    params = (repo / "params.yaml").read_text().replace("max_samples_per_shard: 8", "max_samples_per_shard: 5")
    (repo / "params.yaml").write_text(params)
    rerun = run_dvc(repo, "repro", "shard")
    assert "Running stage 'shard'" in rerun.stdout and "Running stage 'synthesize'" not in rerun.stdout
