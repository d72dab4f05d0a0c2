"""train_policy's sharded path (``parallel: fsdp``) on two CPU processes over gloo.

FSDP2 runs on CPU, so the path the GPUs take is the one tested: the loss curve against DDP on
the same processes (same draws, so the same gradients up to reduction order), and a run
killed after its first checkpoint that resumes to the uninterrupted run's weights.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_policy_train import REPO, _env, _spec_file, kill_at_first_checkpoint, world  # noqa: F401  (fixture)

LOSS_RTOL = 1e-4
"""DDP averages gradients with an all-reduce, FSDP with a reduce-scatter: other summation order."""


def _launch(root: Path, cfg, profile, port: int) -> list[str]:
    spec = _spec_file(root, cfg, profile)
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/fsdp.yaml"),
            "--num_processes", "2", "--main_process_port", str(port), str(root / "runner.py"), str(spec)]


def _run(root: Path, cfg, profile, port: int) -> subprocess.CompletedProcess:
    out = subprocess.run(_launch(root, cfg, profile, port), cwd=root, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _losses(root: Path) -> list[float]:
    rows = (root / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().strip().splitlines()[1:]
    return [float(r.split("\t")[-1]) for r in rows]


def _weights(root: Path, name: str = "transformer") -> dict[str, torch.Tensor]:
    return load_file(str(root / "out" / name / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def fsdp_cfg(world):  # noqa: F811
    cfg, profile = world
    # one t for every process in both modes (FSDP draws it per step, DDP per step and process)
    return dataclasses.replace(cfg, steps=4, t_range=(1, 1), checkpoint_every=2, val_every=4, parallel="fsdp"), profile


@pytest.fixture(scope="module")
def fsdp_run(fsdp_cfg, tmp_path_factory):
    cfg, profile = fsdp_cfg
    root = tmp_path_factory.mktemp("fsdp")
    out = _run(root, cfg, profile, 29541)
    return root, out


def test_fsdp_run_shards_the_weights_and_exports_whole_ones(fsdp_run, fsdp_cfg):
    root, out = fsdp_run
    summary = json.loads((root / "out" / "train_policy.json").read_text())
    assert summary["world_size"] == 2 and summary["parallel"] == "fsdp"
    from onereward.policy.tiny import build_tiny_pipeline

    base = build_tiny_pipeline(seed=0).transformer.state_dict()
    tuned, ema = _weights(root), _weights(root, "transformer_ema")
    assert tuned.keys() == ema.keys() == base.keys()
    assert all(tuned[k].shape == base[k].shape for k in base), "the export must hold whole tensors, not shards"
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert len(changed) > len(base) // 2
    assert any(not torch.equal(tuned[k], ema[k]) for k in base)


def test_fsdp_loss_curve_matches_ddp_on_the_same_processes(fsdp_run, fsdp_cfg, tmp_path):
    root, _ = fsdp_run
    cfg, profile = fsdp_cfg
    _run(tmp_path, dataclasses.replace(cfg, parallel="ddp"), profile, 29543)
    sharded, replicated = _losses(root), _losses(tmp_path)
    assert len(sharded) == len(replicated) == cfg.steps
    assert sharded == pytest.approx(replicated, rel=LOSS_RTOL)
    a, b = _weights(root), _weights(tmp_path)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_killed_fsdp_run_resumes_to_the_uninterrupted_weights(fsdp_run, fsdp_cfg, tmp_path):
    clean, _ = fsdp_run
    cfg, profile = fsdp_cfg
    kill_at_first_checkpoint(_launch(tmp_path, cfg, profile, 29545), tmp_path)  # the launcher and both workers

    resumed = _run(tmp_path, cfg, profile, 29547)
    assert "resumed from" in resumed.stdout + resumed.stderr
    for name in ("transformer", "transformer_ema"):
        a, b = _weights(clean, name), _weights(tmp_path, name)
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed {name} differs from the uninterrupted run"
    assert _losses(clean) == _losses(tmp_path)
