"""The OneReward training loop (Alg. 1 and Alg. 2): sample -> reward -> optimize -> EMA.

Runs alone or under ``accelerate launch``: DDP, or full fine-tuning sharded with FSDP2
(``parallel: fsdp``, ``onereward.rl.sharding``). Every process draws its own conditions from
(seed, step, rank); the main process logs (step metrics averaged over all processes) and saves,
and validates (every process takes part when sharded: each forward is a collective).

Memory: only trained tensors are fp32 (frozen weights stay in the profile's dtype); the EMA and
the reference hold only trained tensors, optionally on the CPU (``ema_device``), and under LoRA
the reference is the base with adapters off; the judge's layers are checkpointed in eval mode
and each image passes its vision tower once per reward (``onereward.rl.judging``); prompt
embeddings are cached on the CPU, bounded, and the text encoders may stay there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm import tqdm

from onereward.config import Profile
from onereward.data.reader import SKIPPED
from onereward.io import atomic_path, canonical_safetensors, dumps_json
from onereward.launch import settle_collectives
from onereward.numerics import adamw
from onereward.policy.adapter import DTYPES, FillPolicy
from onereward.policy.known import GenerationConfig
from onereward.rl import checkpoint as ckpt_mod
from onereward.rl.conditions import draw, load_conditions, validation_subset
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.ema import Snapshot, base_reference, load_trainable, trainable_state, whole_trainable
from onereward.rl.judging import checkpoint_layers
from onereward.rl.rollout import Rollouts, capped_loss, judge_rewards
from onereward.rl.sharding import (full, load_optimizer_state, optimizer_state, save_pretrained_whole,
                                   shard_transformer, whole_state_dict)
from onereward.rl.validation import Validator, hacking_signs, save_grid


@dataclass(frozen=True)
class Paths:
    """Where the stage reads and writes."""

    out: Path = Path("data/models/policy_rl")
    """Trained weights (diffusers layout) and a summary."""
    checkpoints: Path = Path("data/checkpoints/train_policy")
    """Resumable checkpoints (not a DVC output: ``dvc repro`` must not delete them)."""
    live: Path = Path("dvclive/train_policy")
    """DVCLive per-step logs."""
    reports: Path = Path("reports/train_policy")
    """Validation reward curve (DVC plot) and final metrics."""


def fingerprint(cfg: TrainPolicyConfig, profile: Profile, generation: GenerationConfig = GenerationConfig()) -> str:
    """Checkpoints resume only into a run with the same settings (the process count is checked
    apart, with a message: ``Checkpointer.latest``)."""
    blob = json.dumps({"cfg": cfg.to_dict(), "profile": profile.__dict__,
                       "generation": generation.__dict__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def setup_policy(cfg: TrainPolicyConfig, profile: Profile, acc: Accelerator) -> FillPolicy:
    policy = FillPolicy.load(profile.policy_model, acc.device, DTYPES[profile.dtype], prompt_cache_size=cfg.prompt_cache_size)
    if cfg.offload_text_encoders:
        policy.offload_text_encoders()
    tr = policy.transformer
    if cfg.finetune == "lora":
        from peft import LoraConfig

        torch.manual_seed(cfg.seed)  # LoRA init is part of the run's determinism
        tr.add_adapter(LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, init_lora_weights="gaussian",
                                  target_modules=list(cfg.lora.target_modules)))
    else:
        tr.requires_grad_(True)
    for p in tr.parameters():  # fp32 master weights for what is trained, even in a bf16 model
        if p.requires_grad:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        tr.enable_gradient_checkpointing()
        policy.vae.enable_gradient_checkpointing()
    tr.train()
    return policy


def snapshots(cfg: TrainPolicyConfig, tr, device, dtype: torch.dtype):
    """(frozen base, EMA), each holding only trained tensors, where ``cfg.ema_device`` says.

    The base keeps the model's dtype (its exact weights, e.g. bf16); the EMA is fp32.
    """
    where = device if cfg.ema_device == "accelerator" else torch.device("cpu")
    return (base_reference(tr, cfg.finetune == "lora", where, dtype),  # Alg. 1's reference, validation's baseline
            Snapshot(tr, cfg.ema_decay, where))


def step_metrics(acc: Accelerator, loss: torch.Tensor, rewards, batch: int) -> dict[str, float]:
    """One step's loss and rewards over all processes (each draws its own conditions and task):
    ``train/loss``, ``train/reward``, ``train/reward_std`` and ``reward/<task>/<dim>``, means over
    every sample (or pair) of every process. A collective: all processes call it."""
    from accelerate.utils import gather_object

    per_sample = acc.gather(rewards.per_sample(batch).detach().float())
    out = {"train/loss": float(acc.reduce(loss.detach().reshape(1), "mean")),
           "train/reward": float(per_sample.mean()),
           "train/reward_std": float(per_sample.std()) if len(per_sample) > 1 else 0.0}
    pairs: dict[str, list[torch.Tensor]] = {}
    local = rewards.p_yes.detach().cpu()
    for task, dims, p in gather_object([(rewards.task, rewards.dims, local)]):
        for dim in dict.fromkeys(dims):
            pairs.setdefault(f"reward/{task}/{dim}", []).append(p[[i for i, x in enumerate(dims) if x == dim]])
    out.update({k: float(torch.cat(v).mean()) for k, v in pairs.items()})
    return out


def _open_live(paths: Paths, resume_from: Path | None):
    from dvclive import Live

    if resume_from is not None and resume_from.exists():
        shutil.rmtree(paths.live, ignore_errors=True)
        shutil.copytree(resume_from, paths.live)
    # dvcyaml=False: the pipeline's dvc.yaml is written by hand; DVCLive must not edit it.
    return Live(str(paths.live), resume=resume_from is not None, save_dvc_exp=False, dvcyaml=False)


def train(cfg: TrainPolicyConfig, profile: Profile, paths: Paths = Paths(), judge_loader=None,
          generation: GenerationConfig = GenerationConfig()) -> dict:
    """Run (or resume) training; returns the final metrics. ``judge_loader(device, dtype)`` overrides Judge.load."""
    train_conds = load_conditions(cfg.shards, "train", cfg.max_conditions)
    val_conds = validation_subset(load_conditions(cfg.shards, "val", with_truth=True), cfg.val_size, cfg.seed)
    on_gpu = profile.device.startswith("cuda")
    acc = Accelerator(cpu=not on_gpu, mixed_precision="bf16" if on_gpu and profile.dtype == "bfloat16" else "no")
    rank, main = acc.process_index, acc.is_main_process
    if acc.distributed_type == DistributedType.FSDP:
        raise ValueError("train_policy shards the transformer itself (train_policy.parallel: fsdp, the same code on "
                         "CPU and GPU): launch with configs/accelerate/fsdp.yaml or ddp.yaml, not an accelerate "
                         "config of distributed_type FSDP")
    sharded = cfg.parallel == "fsdp" and acc.num_processes > 1
    torch.manual_seed(cfg.seed)
    # Same commit and params, same weights: CPU reductions otherwise vary in the last digits run to run.
    torch.use_deterministic_algorithms(True, warn_only=True)
    dtype = DTYPES[profile.dtype]

    policy = setup_policy(cfg, profile, acc)
    if judge_loader is None:
        from onereward.judge.model import Judge

        judge = Judge.load(cfg.judge, device=acc.device, dtype=dtype, gradient_checkpointing=cfg.gradient_checkpointing,
                           attn_implementation=profile.attn_implementation)
    else:
        judge = judge_loader(acc.device, dtype)
    judge.requires_grad_(False).eval()
    if cfg.gradient_checkpointing:  # transformers' own checkpointing is off in eval mode
        checkpoint_layers(judge.model)

    tr = policy.transformer
    if sharded:
        shard_transformer(tr, dtype)
    initial, ema = snapshots(cfg, tr, acc.device, dtype)
    params = [p for p in tr.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if sharded:  # FSDP's hooks do DDP's work: the module is used as it is
        model, opt = tr, acc.prepare(opt)
    else:
        model, opt = acc.prepare(tr, opt)
    rollouts = Rollouts(policy, cfg, generation)
    frozen_reference = cfg.algorithm == "reference_ema"
    refcache: dict[str, torch.Tensor] = {}

    ckpt = ckpt_mod.Checkpointer(paths.checkpoints, fingerprint(cfg, profile, generation), acc, cfg.keep_checkpoints)
    ckpt.clear_stale()
    start, val_rows, live_snapshot = 0, [], None
    latest = ckpt.latest()
    if latest is not None:
        state = ckpt.load(latest)
        load_trainable(tr, state["trainable"])
        ema.load_whole(tr, state["ema"])
        load_optimizer_state(tr, opt, state["optimizer"])
        refcache = dict(state["refcache"])
        start, val_rows, live_snapshot = state["step"], state["extra"].get("val", []), state["dvclive"]
        acc.print(f"train_policy: resumed from {latest} (step {start})")

    live = _open_live(paths, live_snapshot) if main else None
    validator = None
    # the processes that validate and gather state: every one when sharded (each is a collective)
    joins = main or sharded
    if joins:
        with acc.autocast():
            validator = Validator(val_conds, rollouts, judge, initial.bind(tr), cfg.batch_size, acc.device, cfg.reward_weights)
    if not frozen_reference:
        initial = None  # Alg. 2 needs the base only for validation's baseline images, made above

    def validate(step: int) -> None:
        if joins:
            with acc.autocast():
                row = {"step": step, **validator(tr)}
        if main:
            signs = hacking_signs(val_rows[0], row) if val_rows else []
            row["hacking"] = len(signs)
            val_rows.append(row)
            live.log_metric("val/reward", row["reward"], plot=True)
            for k, v in row.items():
                if k not in ("step", "reward"):
                    live.log_metric(f"val/{k}" if k.startswith("rater") or k == "hacking" else f"val/reward_{k}", v, plot=True)
            rater = f", rater {row['rater']:.4f}" if "rater" in row else ""
            acc.print(f"train_policy: step {step} validation reward {row['reward']:.4f}{rater}")
            if signs:
                acc.print(f"train_policy: WARNING step {step}: judge reward rose while the rater's score fell "
                          f"since step 0 ({', '.join(signs)}): reward hacking")
        acc.wait_for_everyone()

    def reference_model():
        """Alg. 1: the frozen base; Alg. 2: the EMA model (the rollout reference and the anchor)."""
        return initial.bind(tr) if frozen_reference else ema.bind(tr)

    def reference(d, images, masks, prompts) -> torch.Tensor:
        """Alg. 1: frozen base, cached by (condition, seed). Alg. 2: the EMA model, recomputed."""
        keys = [f"{train_conds.keys[i]}|{s}" for i, s in zip(d.index, d.ref_seeds)]
        missing = [j for j, k in enumerate(keys) if not (frozen_reference and k in refcache)]
        todo = missing
        if sharded:  # the same transformer calls on every process: all sample when any misses
            anyone = acc.reduce(torch.tensor([float(len(missing))], device=acc.device), "sum")
            todo = list(range(len(keys))) if float(anyone) > 0 else []
        out = [refcache.get(k) for k in keys]
        if todo:
            runner = reference_model()
            fresh = rollouts.sample(images[todo], masks[todo], [prompts[j] for j in todo], [d.ref_seeds[j] for j in todo], runner)
            for j, img in zip(todo, fresh):
                if j in missing:
                    out[j] = img
                    if frozen_reference:
                        refcache[keys[j]] = img.detach().cpu()
        return torch.stack([o.to(acc.device) for o in out])

    if main:
        live.step = start
    if start == 0:
        validate(0)
    bar = tqdm(range(start, cfg.steps), desc=f"train_policy {cfg.algorithm}", unit="step", disable=not main,
               initial=start, total=cfg.steps)
    for step in bar:
        d = draw(train_conds, cfg.seed, step, rank, cfg.batch_size, cfg.reference_seeds, cfg.t_range,
                 cfg.sampling_weights(), same_t=sharded)
        images, masks = train_conds.tensors(d.index, acc.device)
        prompts = train_conds.generation_prompts(d.index)
        raw_prompts = [train_conds.prompts[i] for i in d.index]
        with acc.autocast():
            ref = reference(d, images, masks, prompts)
            anchor = reference_model() if cfg.anchor_weight else None
            img, drift = rollouts.one_step_x0(images, masks, prompts, d.policy_seeds, d.t, tr, model, anchor)
            rewards = judge_rewards(judge, img, ref, d.task, raw_prompts, cfg.reward_orders, cfg.reward_weights(d.task))
            loss = capped_loss(rewards, len(d.index), cfg.reward_cap)
            if drift is not None:
                loss = loss + cfg.anchor_weight * drift.mean()
        acc.backward(loss)
        grad_norm = float(full(acc.clip_grad_norm_(params, cfg.max_grad_norm)))  # a DTensor when sharded
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(tr)

        logged = step_metrics(acc, loss, rewards, len(d.index))  # every process takes part
        if main:
            live.step = step + 1
            for k in ("train/loss", "train/reward", "train/reward_std"):
                live.log_metric(k, logged.pop(k))
            live.log_metric("train/grad_norm", grad_norm)
            live.log_metric("train/t", d.t)
            if drift is not None:
                live.log_metric("train/anchor_drift", float(drift.detach().mean()))
            for k, v in logged.items():
                live.log_metric(k, v)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", reward=f"{float(rewards.per_sample(len(d.index)).mean()):.3f}",
                            task=d.task)
        done = step + 1
        if done % cfg.val_every == 0 or done == cfg.steps:
            validate(done)
        if main:
            live.next_step()
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            state = (whole_trainable(tr), ema.whole(tr), optimizer_state(tr, opt)) if joins else ({}, {}, {})
            ckpt.save(done, *state, refcache, paths.live if main else None, extra={"val": val_rows})

    if sharded:  # one copy of the weights, in shards
        run = {"world_size": acc.num_processes, "parallel": cfg.parallel}
        whole = whole_state_dict(tr)
        whole = (whole, {**whole, **ema.whole(tr)})
    else:  # DDP replicas must hold the same weights: compare a checksum across processes.
        checksum = torch.stack([p.detach().double().sum() for p in params]).sum().reshape(1).to(acc.device)
        sums = acc.gather(checksum)
        run, whole = {"world_size": acc.num_processes, "weights_in_sync": bool((sums == sums[0]).all())}, None
    if joins and validator.last is None:  # resumed at the very end: no validation ran here
        with acc.autocast():
            validator(tr)
    metrics = {}
    if main:
        live.end()
        save_grid(val_conds, validator, paths.reports / "val_samples.png")
        metrics = save_outputs(cfg, policy, ema, val_rows, paths, run, whole)
    settle_collectives()  # every process is done; the group can be destroyed safely
    if main:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)  # finished: nothing left to resume
    acc.end_training()
    return metrics


def _write_curve(rows: list[dict], path: Path) -> None:
    cols = ["step", "reward"] + sorted({k for r in rows for k in r} - {"step", "reward"})
    lines = [",".join(cols)] + [",".join(f"{r[c]:.6f}" if c != "step" else str(r[c]) for c in cols) for r in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def save_outputs(cfg: TrainPolicyConfig, policy: FillPolicy, ema: Snapshot, val_rows: list[dict], paths: Paths,
                 run: dict, whole: tuple[dict, dict] | None = None) -> dict:
    """Policy and EMA weights in diffusers layout (or LoRA files), the reward curve and metrics.

    ``whole``: the (policy, EMA) state dicts gathered from a sharded run's processes."""
    tr = policy.transformer
    with atomic_path(paths.out) as tmp:
        tmp.mkdir()
        if cfg.finetune == "lora":
            from diffusers import FluxFillPipeline
            from peft.utils import get_peft_model_state_dict

            # LoraConfig as safetensors metadata: stock load_lora_weights then scales it right
            meta = {"r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha, "target_modules": sorted(cfg.lora.target_modules)}
            full = {**tr.state_dict(), **ema.state_dict()}
            for name, state in (("lora", None), ("lora_ema", full)):
                FluxFillPipeline.save_lora_weights(tmp / name, transformer_lora_layers=get_peft_model_state_dict(tr, state_dict=state),
                                                   transformer_lora_adapter_metadata=meta)
                canonical_safetensors(tmp / name / "pytorch_lora_weights.safetensors")  # same bytes in every process
        elif whole is not None:
            save_pretrained_whole(tr, whole[0], tmp / "transformer")
            save_pretrained_whole(tr, whole[1], tmp / "transformer_ema")
        else:
            tr.save_pretrained(tmp / "transformer", safe_serialization=True)
            live = {n: p.detach().clone() for n, p in trainable_state(tr).items()}
            with torch.no_grad():
                for n, p in trainable_state(tr).items():
                    p.copy_(ema.tensors[n])
                tr.save_pretrained(tmp / "transformer_ema", safe_serialization=True)
                for n, p in trainable_state(tr).items():
                    p.copy_(live[n])
        metrics = {
            "algorithm": cfg.algorithm,
            "steps": cfg.steps,
            "val_reward_start": round(val_rows[0]["reward"], 6) if val_rows else None,
            "val_reward_end": round(val_rows[-1]["reward"], 6) if val_rows else None,
            "skipped_samples": len(SKIPPED),  # conditions the reader could not decode
        }
        if val_rows and "rater" in val_rows[0]:
            metrics.update({
                "val_rater_start": round(val_rows[0]["rater"], 6),
                "val_rater_end": round(val_rows[-1]["rater"], 6),
                "hacking_warnings": sum(r.get("hacking", 0) > 0 for r in val_rows),
            })
        (tmp / "train_policy.json").write_text(dumps_json({"config": cfg.to_dict(), "metrics": metrics, **run}))
    _write_curve(val_rows, paths.reports / "val_reward.csv")
    with atomic_path(paths.reports / "metrics.json") as tmp:
        tmp.write_text(dumps_json(metrics))
    return metrics
