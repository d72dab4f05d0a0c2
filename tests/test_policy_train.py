"""train_policy on tiny models: crash-resume equality, frozen judge, DDP with 2 CPU processes.

Everything is built in code: a micro synthetic dataset sharded with the data stage's code, a
random tiny FLUX.1-Fill and a random tiny judge at the judge's smallest input size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onereward.config import Profile
from onereward.data.sharding import ShardConfig, shard_dataset
from onereward.data.synthetic import SynthesizeConfig, synthesize
from onereward.judge.model import Judge, JudgeMeta
from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge
from onereward.policy.tiny import build_tiny_pipeline, save_pipeline
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.trainer import Paths, train

REPO = Path(__file__).resolve().parents[1]
RUNNER = """
import json, sys
from pathlib import Path
from onereward.config import Profile, from_dict
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.trainer import Paths, train
spec = json.loads(Path(sys.argv[1]).read_text())
train(from_dict(TrainPolicyConfig, spec["cfg"]), Profile(**spec["profile"]),
      Paths(**{k: Path(v) for k, v in spec["paths"].items()}))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shards, a tiny policy base and a tiny judge; returns (cfg, profile)."""
    root = tmp_path_factory.mktemp("rl")
    save_pipeline(build_tiny_pipeline(seed=0), root / "policy_base")
    synthesize(root / "raw", SynthesizeConfig(num_inputs=32, workers=1), str(root / "policy_base"))
    shard_dataset(root / "raw", root / "shards", root / "manifest.parquet", root / "quarantine.jsonl",
                  ShardConfig(split={"train": 0.7, "val": 0.3, "test": 0.0}, workers=1))
    save_tiny_judge(TinyJudgeConfig(), root / "judge")
    JudgeMeta(resolution=28).write(root / "judge")  # one vision token per image: fast
    profile = Profile(name="tiny", dataset=str(root / "raw"), judge_model=str(root / "judge"),
                      policy_model=str(root / "policy_base"))
    cfg = TrainPolicyConfig(steps=8, batch_size=2, lr=1e-3, warmup_steps=1, num_inference_steps=4, t_range=(1, 2),
                            checkpoint_every=2, val_every=4, val_size=4, judge=str(root / "judge"),
                            shards=str(root / "shards"), ema_decay=0.5)
    return cfg, profile


def _paths(root: Path) -> Paths:
    return Paths(out=root / "out", checkpoints=root / "ckpt", live=root / "live", reports=root / "reports")


def _spec_file(root: Path, cfg, profile) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    spec = {"cfg": dataclasses.asdict(cfg), "profile": dataclasses.asdict(profile),
            "paths": {k: str(v) for k, v in dataclasses.asdict(_paths(root)).items()}}
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "runner.py").write_text(RUNNER)
    return root / "spec.json"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(root: Path, cfg, profile) -> subprocess.CompletedProcess:
    spec = _spec_file(root, cfg, profile)
    return subprocess.run([sys.executable, str(root / "runner.py"), str(spec)], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=300)


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(str(root / "out" / "transformer" / "diffusion_pytorch_model.safetensors"))


def kill_at_first_checkpoint(cmd: list[str], root: Path, timeout: float = 400) -> None:
    """Start ``cmd`` in ``root``; SIGKILL it and every process it started once a checkpoint is complete."""
    import psutil

    proc = subprocess.Popen(cmd, cwd=root, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not (root / "ckpt" / "step-000002" / "meta.json").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    # a launcher's workers too (torch's elastic agent starts them in sessions of their own)
    family = [proc] + psutil.Process(proc.pid).children(recursive=True)
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            p.kill()
    proc.wait()
    psutil.wait_procs([p for p in family[1:]], timeout=30)
    assert not (root / "out").exists(), "the killed run must not have finished"


def test_sigkill_then_rerun_equals_uninterrupted_run(world, tmp_path):
    cfg, profile = world
    clean = _run(tmp_path / "clean", cfg, profile)
    assert clean.returncode == 0, clean.stderr[-3000:]

    crash = tmp_path / "crash"
    spec = _spec_file(crash, cfg, profile)
    kill_at_first_checkpoint([sys.executable, str(crash / "runner.py"), str(spec)], crash, timeout=240)

    resumed = _run(crash, cfg, profile)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = _weights(tmp_path / "clean"), _weights(crash)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ema_a = load_file(str(tmp_path / "clean" / "out" / "transformer_ema" / "diffusion_pytorch_model.safetensors"))
    ema_b = load_file(str(crash / "out" / "transformer_ema" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert (tmp_path / "clean" / "reports" / "val_reward.csv").read_bytes() == (crash / "reports" / "val_reward.csv").read_bytes()
    # the per-step log was restored from the checkpoint: one row per step, none twice
    rows = (crash / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().strip().splitlines()[1:]
    assert [int(r.split("\t")[0]) for r in rows] == list(range(1, cfg.steps + 1))
    assert not (crash / "ckpt").exists()  # finished runs leave nothing to resume


@pytest.mark.parametrize("algorithm,finetune", [("reference_ema", "full"), ("dynamic", "lora")])
def test_policy_weights_change_and_judge_stays_bit_identical(world, tmp_path, algorithm, finetune):
    cfg, profile = world
    cfg = dataclasses.replace(cfg, steps=3, algorithm=algorithm, finetune=finetune, checkpoint_every=100, val_every=100)
    judge = Judge.load(cfg.judge)
    before = {k: v.clone() for k, v in judge.model.state_dict().items()}
    base = build_tiny_pipeline(seed=0).transformer.state_dict()
    train(cfg, profile, _paths(tmp_path), judge_loader=lambda device, dtype: judge)
    after = judge.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the judge's weights changed"
    assert all(p.grad is None and not p.requires_grad for p in judge.model.parameters())
    if finetune == "full":
        tuned = _weights(tmp_path)
        changed = [k for k in base if not torch.equal(base[k], tuned[k])]
        assert len(changed) > len(base) // 2, f"only {len(changed)} of {len(base)} tensors changed"
    else:
        lora = load_file(str(tmp_path / "out" / "lora" / "pytorch_lora_weights.safetensors"))
        assert lora and all(k.startswith("transformer.") for k in lora)
        assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # lora_B starts at zero


def test_ddp_two_cpu_processes(world, tmp_path):
    cfg, profile = world
    cfg = dataclasses.replace(cfg, steps=3, checkpoint_every=2, val_every=100)
    spec = _spec_file(tmp_path, cfg, profile)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/ddp.yaml"),
           "--num_processes", "2", "--main_process_port", "29517", str(tmp_path / "runner.py"), str(spec)]
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "train_policy.json").read_text())
    assert summary["world_size"] == 2
    assert summary["weights_in_sync"], "DDP replicas diverged"


RUNNER_PROCESSES = """
import json, sys
from pathlib import Path
from onereward.config import Profile, from_dict
from onereward.launch import data_parallel
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.trainer import Paths, train

def run(spec_file):
    spec = json.loads(Path(spec_file).read_text())
    train(from_dict(TrainPolicyConfig, spec["cfg"]), Profile(**spec["profile"]),
          Paths(**{k: Path(v) for k, v in spec["paths"].items()}))

if __name__ == "__main__":  # as stages/train_policy.py starts itself
    data_parallel(run, json.loads(Path(sys.argv[1]).read_text())["cfg"]["processes"], sys.argv[1])
"""


def test_processes_from_params_start_a_ddp_run_without_a_launcher(world, tmp_path):
    cfg, profile = world
    cfg = dataclasses.replace(cfg, steps=3, checkpoint_every=2, val_every=100, processes=2)
    spec = _spec_file(tmp_path, cfg, profile)
    (tmp_path / "runner.py").write_text(RUNNER_PROCESSES)
    out = subprocess.run([sys.executable, str(tmp_path / "runner.py"), str(spec)], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "train_policy.json").read_text())
    assert summary["world_size"] == 2
    assert summary["weights_in_sync"], "DDP replicas diverged"

def test_reward_hacking_is_flagged_when_reward_rises_and_the_rater_falls():
    from onereward.rl.validation import hacking_signs

    first = {"reward": 0.5, "fill": 0.5, "removal": 0.5, "rater": 0.6, "rater_fill": 0.6, "rater_removal": 0.6}
    honest = {"reward": 0.6, "fill": 0.6, "removal": 0.6, "rater": 0.65, "rater_fill": 0.65, "rater_removal": 0.65}
    hacked = {"reward": 0.6, "fill": 0.7, "removal": 0.5, "rater": 0.55, "rater_fill": 0.5, "rater_removal": 0.6,
              "rater_fill_consistency": 0.4}
    assert hacking_signs(first, honest) == []
    assert hacking_signs(first, hacked) == ["all", "fill"]
