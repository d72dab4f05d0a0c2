"""Two clean copies of the repository write byte-identical reports (and exports).

Each copy comes from ``make_repo_copy`` (code and params; no data, no DVC cache) and runs DVC.

- The real `synthesize`, `shard`, `export` and `evaluate` stages (``dvc repro --single-item``)
  at micro size, with seeded tiny stand-ins for the trained judge and policy: about 1.5 minutes
  on two shared cores; checks what the reports say.
- The whole chain, ``dvc repro evaluate`` (synthesize ... train_judge, eval_judge, train_policy,
  export, evaluate) at micro size: about 2 minutes per copy.

Compared: every file under ``reports/`` and ``data/export/SHA256SUMS``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from conftest import make_repo_copy, run_dvc

pytestmark = pytest.mark.slow

MICRO_EVAL = {"evaluate": {"per_profile": {"tiny": {"per_setting": 1, "num_inference_steps": 2}}}}
MICRO_FULL = {
    **MICRO_EVAL,
    "shard": {"split": {"train": 0.5, "val": 0.2, "test": 0.3}},  # a test split with most settings
    "base_model": {"vae_steps": 2, "steps": 2, "batch_size": 2, "vae_batch_size": 2, "pool_size": 8,
                   "bar": {"max_kept_error": 1.0, "min_sharpness_ratio": 0.0, "max_sharpness_ratio": 1.0e9, "inputs": 4}},
    "train_judge": {"per_profile": {"tiny": {"steps": 2, "eval_every": 2, "checkpoint_every": 2, "batch_size": 4}}},
    "train_policy": {"steps": 2, "batch_size": 1, "val_size": 2, "val_every": 2, "checkpoint_every": 2,
                     "num_inference_steps": 2, "t_range": [0, 1]},
}
STAGES = ("synthesize", "shard", "base_model", "judge_base", "queries", "train_judge", "eval_judge",
          "train_policy", "export", "evaluate")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """data/models/{policy_base, policy_rl, judge} and the upstream metrics, built from seeds."""
    from diffusers import FluxTransformer2DModel

    from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge
    from onereward.policy.tiny import build_tiny_pipeline, save_pipeline

    root = tmp_path_factory.mktemp("stand_ins")
    models = root / "data" / "models"
    save_pipeline(build_tiny_pipeline(seed=0), models / "policy_base")
    for name, seed in (("transformer", 1), ("transformer_ema", 2)):
        tr = FluxTransformer2DModel.from_pretrained(models / "policy_base" / "transformer")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in tr.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        tr.save_pretrained(models / "policy_rl" / name)
    (models / "policy_rl" / "train_policy.json").write_text(json.dumps({"config": {"finetune": "full"}, "metrics": {}}))
    save_tiny_judge(TinyJudgeConfig(), models / "judge")
    (models / "judge" / "judge.json").write_text(json.dumps({"resolution": 56}))
    reports = root / "reports"
    (reports / "train_policy").mkdir(parents=True)
    (reports / "train_policy" / "metrics.json").write_text(json.dumps({"val_reward_end": 0.5}))
    cell = {"accuracy": 60.0, "accuracy_single_order": 60.0, "order_consistency": 90.0, "pairs": 5}
    (reports / "judge_accuracy.json").write_text(json.dumps(
        {"cells": {"fill": {"consistency": cell}}, "mean_accuracy": 60.0, "min_cell_accuracy": 60.0,
         "pair_accuracy": 60.0, "order_consistency": 90.0, "pairs": 5}))
    return root


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _assert_identical(a, b) -> list[str]:
    ra, rb = a / "reports", b / "reports"
    files = _files(ra)
    assert files == _files(rb)
    differ = [f for f in files if (ra / f).read_bytes() != (rb / f).read_bytes()]
    assert not differ, f"reports differ between two clean copies: {differ}"
    assert (a / "data/export/SHA256SUMS").read_bytes() == (b / "data/export/SHA256SUMS").read_bytes()
    return files


def _check_reports(repo) -> None:
    """What the reports say, checked once."""
    r = repo / "reports"
    metrics = json.loads((r / "eval_metrics.json").read_text())
    evaluated = {name: m for name, m in metrics.items() if m["n"]}
    assert evaluated, metrics
    for name, m in evaluated.items():
        assert sum(m["gsb"].values()) == pytest.approx(100.0, abs=0.02)
        assert m["rater"]["n"] == m["n"]  # the rater scored every input the judge scored
        grid = Image.open(r / "eval" / f"grid_{name}.png")
        assert grid.format == "PNG" and grid.width >= 4 * 64 * 2 and grid.height >= m["n"] * 64 * 2
    tables = (r / "paper_tables.md").read_text()
    assert "not by humans" in tables and "68.0 / 23.6 / 8.4" in tables and "Table 1" in tables
    assert "rater-scored" in tables and "training objective" in tables
    assert (r / "eval_gsb.csv").read_text().startswith("bar,percent,scorer\n")
    card = (repo / "data/export/README.md").read_text()  # the code named by dvc.lock's hashes, as the export ran
    from onereward.export import code_version

    assert code_version(repo / "dvc.lock") in card


def test_two_clean_copies_give_identical_reports(tmp_path, stand_ins):
    repos = []
    for name in ("a", "b"):
        repo = make_repo_copy(tmp_path / name, MICRO_EVAL)
        shutil.copytree(stand_ins / "data" / "models", repo / "data" / "models")
        shutil.copytree(stand_ins / "reports", repo / "reports", dirs_exist_ok=True)
        out = run_dvc(repo, "repro", "--single-item", "synthesize", "shard", "export", "evaluate").stdout
        ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
        assert ran == ["synthesize", "shard", "export", "evaluate"], out
        repos.append(repo)
    files = _assert_identical(*repos)
    assert {"data_stats.json", "eval_metrics.json", "paper_tables.md", "eval_gsb.csv", "eval_scores.json",
            "eval/gsb.png"} <= set(files)
    _check_reports(repos[0])
    again = run_dvc(repos[0], "repro", "--single-item", "evaluate").stdout
    assert "Running stage" not in again  # evaluate leaves its own dependencies alone


# What a machine decides unless params.numerics pins it: thread counts and the kernels' ISA.
MACHINES = {"a": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            "b": {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO",
                  "OPENBLAS_CORETYPE": "Zen"}}


def test_whole_micro_pipeline_twice_gives_identical_reports(tmp_path):
    """Two clean copies on what look like two machines (other thread counts and CPU kernels)."""
    repos = []
    for name in ("a", "b"):
        repo = make_repo_copy(tmp_path / name, MICRO_FULL)
        out = run_dvc(repo, "repro", "evaluate", env=MACHINES[name]).stdout
        assert all(f"Running stage '{s}'" in out for s in STAGES), out
        repos.append(repo)
    files = _assert_identical(*repos)
    assert {"judge_accuracy.json", "train_policy/metrics.json", "eval_metrics.json"} <= set(files)
    _check_reports(repos[0])
