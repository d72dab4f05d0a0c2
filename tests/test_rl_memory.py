"""RL memory: what the policy, its snapshots, the judge and the caches hold, measured on the tiny models."""

from __future__ import annotations

import itertools

import pytest
import torch
from accelerate import Accelerator

from onereward.config import Profile
from onereward.policy.adapter import DTYPES
from onereward.policy.tiny import build_tiny_pipeline, save_pipeline
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.trainer import setup_policy, snapshots


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl_memory")
    save_pipeline(build_tiny_pipeline(seed=0), root / "policy")
    return root


def _profile(models, dtype: str) -> Profile:
    return Profile(name="tiny", dataset="unused", judge_model="unused", policy_model=str(models / "policy"), dtype=dtype)


def _velocity(policy, runner) -> torch.Tensor:
    torch.manual_seed(3)
    images, masks = torch.rand(1, 3, 32, 32), (torch.rand(1, 1, 32, 32) > 0.5).float()
    # bf16 runs under autocast, as the trainer's accelerator does on a GPU (fp32 master weights, bf16 compute)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=policy.vae.dtype == torch.bfloat16):
        cond, noise = policy.prepare(images, masks, ["a red cube"], torch.Generator().manual_seed(0))
        return policy.velocity(noise, 500.0, cond, transformer=runner).float()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_only_trained_tensors_are_fp32_and_the_snapshots_hold_only_them(models, dtype, finetune):
    cfg = TrainPolicyConfig(finetune=finetune, ema_device="cpu")
    policy = setup_policy(cfg, _profile(models, dtype), Accelerator(cpu=True))
    tr = policy.transformer
    trained = {n for n, p in tr.named_parameters() if p.requires_grad}
    reference, ema = snapshots(cfg, tr, torch.device("cpu"), DTYPES[dtype])

    assert trained and all(tr.get_parameter(n).dtype == torch.float32 for n in trained)  # fp32 master weights
    if dtype == "bfloat16":  # nothing else is fp32: no fp32 copy of a frozen weight anywhere
        pipe = policy.pipe
        for module in (tr, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            for n, t in itertools.chain(module.named_parameters(), module.named_buffers()):
                if t.is_floating_point() and t.dtype == torch.float32:
                    assert module is tr and n in trained, f"frozen {n} is float32"
    assert set(ema.tensors) == trained
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ema.tensors.values())
    if finetune == "lora":
        assert all("lora_" in n for n in trained)
        assert reference.tensors == {}  # the base with adapters off: no copy at all
    else:
        assert len(trained) == len(list(tr.parameters()))
        assert set(reference.tensors) == trained
        assert all(t.dtype == DTYPES[dtype] for t in reference.tensors.values())  # the base's own dtype

    # the reference still runs the untrained base after the weights moved
    before = _velocity(policy, tr)
    with torch.no_grad():
        for n in trained:
            tr.get_parameter(n).add_(0.05)
    assert not torch.equal(_velocity(policy, tr), before)
    assert torch.equal(_velocity(policy, reference.bind(tr)), before)
    assert all(tr.get_parameter(n).requires_grad for n in trained)  # switching adapters off and on kept them trainable


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    from onereward.judge.model import JudgeMeta
    from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge

    root = tmp_path_factory.mktemp("rl_judge")
    save_tiny_judge(TinyJudgeConfig(), root)
    JudgeMeta(resolution=56).write(root)  # 4 vision tokens per image
    return root


def _saved_activation_bytes(judge, first, second, queries) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for backward (weights left out), and the gradient w.r.t. ``first``."""
    weights = {p.untyped_storage().data_ptr() for p in judge.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    first = first.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        p = judge.p_yes(first, second, queries)
    p.sum().backward()
    return sum(seen.values()), first.grad


def test_judge_layers_are_checkpointed_in_eval_mode_and_keep_far_fewer_activations(judge_dir):
    from onereward.judge.model import Judge
    from onereward.rl.judging import checkpoint_layers

    judge = Judge.load(judge_dir, gradient_checkpointing=True).requires_grad_(False).eval()
    torch.manual_seed(0)
    first, second = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    queries = ["Is the first image better?"] * 4
    plain, grad_plain = _saved_activation_bytes(judge, first, second, queries)  # transformers' checkpointing: off in eval
    layers = len(judge.model.model.language_model.layers) + len(judge.model.model.visual.blocks)
    assert checkpoint_layers(judge.model) == layers
    assert checkpoint_layers(judge.model) == layers  # idempotent
    assert not any(m.training for m in judge.modules())  # still eval: no dropout
    ckpt, grad_ckpt = _saved_activation_bytes(judge, first, second, queries)
    assert ckpt < 0.5 * plain, f"checkpointed judge keeps {ckpt} bytes against {plain} without"
    assert torch.equal(grad_ckpt, grad_plain)  # recomputation gives the same gradient


def test_each_image_enters_the_vision_tower_once_and_rewards_match_the_per_query_path(judge_dir):
    from onereward.judge.model import Judge
    from onereward.rl.judging import checkpoint_layers
    from onereward.rl.rollout import judge_rewards

    judge = Judge.load(judge_dir).requires_grad_(False).eval()
    checkpoint_layers(judge.model)
    seen = []
    judge.model.model.visual.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs["grid_thw"].shape[0], torch.is_grad_enabled())), with_kwargs=True)
    torch.manual_seed(1)
    first, second = torch.rand(3, 3, 64, 64, requires_grad=True), torch.rand(3, 3, 64, 64)
    prompts = ["a red cube", None, "two birds"]
    r = judge_rewards(judge, first, second, "fill", prompts)
    assert len(r.sample) > len(prompts)  # several dimensions per image: the old path encoded each image that often
    assert sum(n for n, _ in seen) == 2 * len(prompts)  # every distinct image once
    assert [g for _, g in seen].count(True) == 1  # the policy images with gradient, the reference without
    (grad,) = torch.autograd.grad(r.p_yes.sum(), first)

    seen.clear()
    old = judge.p_yes(first[r.sample], second[r.sample], _queries("fill", prompts))  # one query, both images, at a time
    assert sum(n for n, _ in seen) == 2 * len(r.sample)
    assert (r.p_yes - old).abs().max() < 1e-5
    (old_grad,) = torch.autograd.grad(old.sum(), first)
    assert (grad - old_grad).abs().max() < 1e-5 * max(1.0, float(old_grad.abs().max()))


def test_both_orders_reward_is_the_judges_order_symmetric_score_with_gradient(judge_dir):
    from onereward.judge.model import Judge
    from onereward.rl.rollout import judge_rewards

    judge = Judge.load(judge_dir).requires_grad_(False).eval()
    torch.manual_seed(2)
    first, second = torch.rand(2, 3, 64, 64, requires_grad=True), torch.rand(2, 3, 64, 64)
    prompts = ["a red cube", None]
    one = judge_rewards(judge, first, second, "fill", prompts)
    both = judge_rewards(judge, first, second, "fill", prompts, orders="both")
    with torch.no_grad():
        symmetric = judge.symmetric_score(first[both.sample], second[both.sample], _queries("fill", prompts))
    assert (both.p_yes - symmetric).abs().max() < 1e-5
    assert (both.p_yes - one.p_yes).abs().max() > 1e-3  # the second order changes the reward
    (grad,) = torch.autograd.grad(both.p_yes.sum(), first)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="orders"):
        judge_rewards(judge, first, second, "fill", prompts, orders="reversed")


def _queries(task, prompts):
    from onereward import tasks
    from onereward.judge.queries import render_query

    return [render_query(task, d, p) for p in prompts for d in tasks.dimensions_for(task, p)]


@pytest.mark.parametrize("offload", [False, True])
def test_prompt_embeddings_are_cached_on_the_cpu_bounded_and_unchanged_by_eviction(models, offload):
    from onereward.policy.adapter import FillPolicy

    policy = FillPolicy.load(str(models / "policy"), prompt_cache_size=2)
    if offload:
        policy.offload_text_encoders()
        assert all(p.device.type == "cpu" for m in (policy.pipe.text_encoder, policy.pipe.text_encoder_2)
                   for p in m.parameters())
    calls = []
    policy.pipe.text_encoder_2.register_forward_pre_hook(lambda m, a: calls.append(1))
    first, _, _ = policy.encode_prompts(["a", "b", "a"])
    assert len(calls) == 2  # each distinct prompt once
    policy.encode_prompts(["b", "a"])
    assert len(calls) == 2  # cached
    policy.encode_prompts(["c"])  # evicts the least recently used ("b")
    assert list(policy._prompt_cache) == ["a", "c"]
    assert all(t.device.type == "cpu" for pair in policy._prompt_cache.values() for t in pair)
    again, _, _ = policy.encode_prompts(["a", "b", "a"])
    assert len(calls) == 4 and len(policy._prompt_cache) == 2
    assert torch.equal(again, first)  # a re-encoded prompt gives the same bytes
    with pytest.raises(ValueError, match="prompt_cache_size"):
        policy.encode_prompts(["x", "y", "z"])


METRICS_RUNNER = """
import json, sys
import torch
from accelerate import Accelerator
from onereward.rl.rollout import Rewards
from onereward.rl.trainer import step_metrics
acc = Accelerator(cpu=True)
r = acc.process_index
task = ["fill", "removal"][r % 2]
dims = ["structure", "aesthetics", "structure"] if task == "fill" else ["removal_quality"] * 3
rewards = Rewards(torch.tensor([0.1, 0.2, 0.3]) + r, [0, 0, 1], dims, task)
out = step_metrics(acc, torch.tensor(float(r)), rewards, 2)
if acc.is_main_process:
    open(sys.argv[1], "w").write(json.dumps(out))
acc.end_training()
"""


def _expected(ranks: int) -> dict:
    per_sample, out = [], {"train/loss": sum(range(ranks)) / ranks}
    for r in range(ranks):
        per_sample += [(0.1 + r + 0.2 + r) / 2, 0.3 + r]
    out["train/reward"] = sum(per_sample) / len(per_sample)
    out["train/reward_std"] = float(torch.tensor(per_sample).std())
    out["reward/fill/structure"] = sum((0.1 + r + 0.3 + r) / 2 for r in range(0, ranks, 2)) / len(range(0, ranks, 2))
    out["reward/fill/aesthetics"] = sum(0.2 + r for r in range(0, ranks, 2)) / len(range(0, ranks, 2))
    if ranks > 1:
        out["reward/removal/removal_quality"] = sum(0.2 + r for r in range(1, ranks, 2)) / len(range(1, ranks, 2))
    return out


def _run_metrics(tmp_path, ranks: int) -> dict:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "runner.py").write_text(METRICS_RUNNER)
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "out.json")]
    if ranks > 1:
        cmd[1:1] = ["-m", "accelerate.commands.launch", "--config_file", str(repo / "configs/accelerate/ddp.yaml"),
                    "--num_processes", str(ranks), "--main_process_port", "29531"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out.json").read_text())


@pytest.mark.parametrize("ranks", [1, 2])
def test_logged_step_metrics_are_means_over_every_process(tmp_path, ranks):
    got, want = _run_metrics(tmp_path, ranks), _expected(ranks)
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 1e-6 for k in want), (got, want)


def test_train_policy_settings_per_profile_as_the_stage_reads_them():
    import copy

    import yaml

    from pathlib import Path

    from onereward.config import resolve_profile
    from onereward.judge.params import judge_section

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    got = {}
    for name in ("tiny", "real"):
        params = copy.deepcopy(raw)
        params["profile"] = name
        got[name], _ = judge_section(TrainPolicyConfig, "train_policy", resolve_profile(params))
    real, tiny = got["real"], got["tiny"]
    assert (real.finetune, real.ema_device, real.offload_text_encoders) == ("lora", "cpu", True)
    assert real.lora.rank >= 32 and real.lora.alpha / real.lora.rank == 2.0
    assert real.true_cfg > 1 and real.num_inference_steps > tiny.num_inference_steps
    assert (tiny.finetune, tiny.ema_device, tiny.offload_text_encoders) == ("lora", "accelerator", False)
    assert tiny.lora.rank == 16 and tiny.lr == 5e-4  # the tiny default measured nearest its base (BENCHMARKS.md)
