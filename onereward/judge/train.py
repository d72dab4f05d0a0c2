"""Judge fine-tuning with OneReward's Eq. 3 on both orders of every pair.

    L = -1/2 [ log P(Yes | winner, loser, q) + log P(No | loser, winner, q) ]

Every query-table row is one order of one pair, so the batch mean of the binary cross-entropy
between ``sigmoid(logit_Yes - logit_No)`` and the row's label is exactly Eq. 3 averaged over
pairs. PEFT LoRA or full fine-tuning, AdamW, warmup + cosine, gradient clipping, periodic
checkpoints (safetensors and JSON, no pickle) and resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from onereward import train_state
from onereward.data.reader import SKIPPED
from onereward.io import atomic_path, dumps_json
from onereward.judge.data import Example, batched, examples, shuffled, stack
from onereward.judge.metrics import pair_results, summarize
from onereward.judge.model import DistinctImagesForward, Judge, JudgeMeta
from onereward.launch import mean_over_processes
from onereward.numerics import adamw
from onereward.tasks import DIMENSIONS

InputsFn = Callable[[str, bool, int], Iterable[dict]]
"""(split, shuffle, seed) -> input samples as ``onereward.data.reader.input_dataset`` yields them."""


@dataclass(frozen=True)
class TrainJudgeConfig:
    """params.yaml `train_judge` (after the active profile's overrides are applied)."""

    finetune: str = "lora"
    """'lora' (PEFT LoRA on ``lora_targets``) or 'full' (every weight)."""
    lora_rank: int = 16
    """LoRA rank r."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch input."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module name suffixes that get LoRA adapters (PEFT ``target_modules``). Qwen2.5-VL: the
    language model's ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``; the vision
    blocks' ``attn.qkv attn.proj`` (their MLPs are also named ``gate_proj up_proj down_proj``);
    the patch merger's ``merger.mlp.0 merger.mlp.2``."""
    lr: float = 1.0e-6
    """Peak AdamW learning rate (paper: 1e-6 for full fine-tuning of the 7B judge)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    batch_size: int = 16
    """Query rows per optimizer step (paper: 16); both orders of a pair share a batch."""
    steps: int = 1000
    """Optimizer steps."""
    warmup_steps: int = 50
    """Linear warmup steps before the cosine decay (to 10% of ``lr``)."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    eval_every: int = 100
    """Validation accuracy every this many steps (and at the end)."""
    checkpoint_every: int = 100
    """Checkpoint (weights, optimizer, RNG) every this many steps; a rerun resumes from it."""
    seed: int = 0
    """Seed of data order, LoRA init and dropout."""
    shuffle_buffer: int = 256
    """Pairs in the shuffle buffer that spreads one input's pairs over batches."""
    dimension_repeats: dict[str, int] = field(default_factory=dict)
    """Dimension -> times each of its pairs is drawn per epoch (unlisted: 1). A dimension the
    others' shared signal does not cover, learned late or never in a short run (the tiny
    judge's aesthetics), gets more of the steps."""
    flip: bool = True
    """Mirror both images of a pair left-right with probability 1/2 (augmentation)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory (GPU, large judges)."""
    eval_batch_size: int = 64
    """Rows per forward pass when scoring the validation split."""
    loader_workers: int = 0
    """DataLoader worker processes that decode the shards (0: in the training process; another
    count reads the inputs in another order, so the run differs from 0's)."""
    keep_inputs: bool = False
    """Keep every input decoded and resized after its first epoch instead of decoding it again
    (the same bits; memory grows with the split: about 0.75 GB a process for the embedded
    default's 1,885 training inputs, BENCHMARKS.md, so off for a real annotation set)."""
    processes: int = 1
    """Data-parallel processes on this machine when no launcher started the stage (``accelerate
    launch`` or ``torchrun`` decide themselves): each takes an equal share of every batch's pairs
    and the gradients are averaged, so a step is the one-process step up to summation order."""

    def __post_init__(self):
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"train_judge.finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.loader_workers < 0:
            raise ValueError(f"train_judge.loader_workers must be >= 0, got {self.loader_workers}")
        if self.keep_inputs and self.loader_workers:
            raise ValueError("train_judge: keep_inputs keeps inputs decoded in the trainer; set loader_workers: 0")
        if self.processes < 1:
            raise ValueError(f"train_judge.processes must be at least 1, got {self.processes}")
        unknown = sorted(set(self.dimension_repeats) - set(DIMENSIONS))
        if unknown:
            raise ValueError(f"train_judge.dimension_repeats: unknown dimension(s) {unknown}; known: {sorted(DIMENSIONS)}")
        for d, n in self.dimension_repeats.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"train_judge.dimension_repeats.{d} must be a whole number >= 1, got {n!r}")

    def fingerprint(self, **extra) -> str:
        """Identifies a run, so a checkpoint resumes only the run that wrote it."""
        blob = json.dumps({**asdict(self), **extra}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_trainable(judge: Judge, cfg: TrainJudgeConfig) -> list[torch.nn.Parameter]:
    """Wrap the judge's model with LoRA (or unfreeze it) and return the trainable parameters."""
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets), bias="none",
        )
        judge.model = get_peft_model(judge.model, lora)
    else:
        judge.model.requires_grad_(True)
    if cfg.gradient_checkpointing:
        judge.enable_gradient_checkpointing()
    return [p for p in judge.model.parameters() if p.requires_grad]


def lr_at(step: int, cfg: TrainJudgeConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def eq3_loss(margin: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Eq. 3 over a batch of rows: -log P(Yes) where the winner is first, -log P(No) otherwise."""
    return F.binary_cross_entropy_with_logits(margin, label.to(margin.device))


def pairs_of(stream: Iterable[Example]) -> Iterator[tuple[Example, ...]]:
    """Group consecutive rows of one pair (both orders) into a tuple."""
    group: list[Example] = []
    for e in stream:
        if group and (e.key, e.dimension) != (group[0].key, group[0].dimension):
            yield tuple(group)
            group = []
        group.append(e)
    if group:
        yield tuple(group)


def repeated(pairs: Iterable[tuple[Example, ...]], repeats: dict[str, int]) -> Iterator[tuple[Example, ...]]:
    """Each pair as often as ``repeats`` says for its dimension (1 where it is silent)."""
    for pair in pairs:
        for _ in range(repeats.get(pair[0].dimension, 1)):
            yield pair


def flipped(pair: tuple[Example, ...]) -> tuple[Example, ...]:
    """The same pair mirrored left-right: every judged degradation is mirror-invariant."""
    return tuple(replace(e, first=e.first.flip(-1), second=e.second.flip(-1)) for e in pair)


def batch_stream(inputs_fn: InputsFn, rows: list[dict], cfg: TrainJudgeConfig, judge_size=None) -> Iterator[list]:
    """Endless, deterministic batches: epoch e shuffles inputs and pairs with seed (seed, e).

    Both orders of a pair stay in one batch, so the gradient of every pair is Eq. 3's
    antisymmetric signal, without the order-symmetric part that only adds noise.
    """
    epoch = 0
    pairs_per_batch = max(1, cfg.batch_size // 2)
    resized = {} if cfg.keep_inputs else None
    while True:
        rng = random.Random(cfg.seed * 100_003 + epoch)
        stream = repeated(pairs_of(examples(inputs_fn("train", True, cfg.seed * 100_003 + epoch), rows, judge_size, resized)),
                          cfg.dimension_repeats)
        for group in batched(shuffled(stream, cfg.shuffle_buffer, rng), pairs_per_batch):
            if len(group) == pairs_per_batch:  # drop the ragged tail: fixed batch statistics
                if cfg.flip:
                    group = [flipped(p) if rng.random() < 0.5 else p for p in group]
                yield [e for pair in group for e in pair]
        epoch += 1


@torch.no_grad()
def score_rows(judge: Judge, inputs: Iterable[dict], rows: list[dict], batch_size: int,
               desc: str = "score", acc=None) -> list[float | None]:
    """P(Yes) for every row (aligned with ``rows``), reading each input's images once; None for
    the rows of an input the reader skipped (it could not decode it, see ``reader.SKIPPED``).

    ``acc``: an ``accelerate.Accelerator`` of several processes, which then score every
    ``num_processes``-th batch each and exchange the results: the same batches as one process
    scores, so the same numbers, in a share of the time."""
    world, rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
    index = {(r["key"], r["dimension"], r["order"]): i for i, r in enumerate(rows)}
    out: list[float | None] = [None] * len(rows)
    was_training = judge.model.training
    judge.model.eval()
    with tqdm(total=len(rows), desc=desc, unit="row", leave=False, disable=rank > 0) as bar:
        for n, batch in enumerate(batched(examples(inputs, rows, judge.input_size), batch_size)):
            if n % world == rank:
                first, second, queries, _ = stack(batch)
                for e, p in zip(batch, judge.score(first, second, queries, batch_size=len(batch)).tolist()):
                    out[index[(e.key, e.dimension, e.order)]] = p
            bar.update(len(batch))
    judge.model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        for i, p in gather_object([(i, p) for i, p in enumerate(out) if p is not None]):
            out[i] = p
    missing = [rows[i]["key"] for i, p in enumerate(out) if p is None and rows[i]["key"] not in SKIPPED]
    if missing:
        raise ValueError(f"{len(missing)} query rows have no images in the shards, e.g. {missing[:3]}")
    return out


CHECKPOINT_FORMAT = 2
"""Layout version in ``state.json``; checkpoints of another version are not resumed."""


def save_checkpoint(path: Path, step: int, fingerprint: str, judge: Judge, opt: torch.optim.Optimizer) -> None:
    """Trainable weights, optimizer state and RNG states as safetensors + JSON (``onereward.train_state``)."""
    named = {n: p for n, p in judge.model.named_parameters() if p.requires_grad}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        train_state.save_tensors(named, tmp / "trainable.safetensors")
        train_state.save_optimizer(opt, tmp)
        train_state.save_rng(tmp)
        meta = {"step": step, "fingerprint": fingerprint, "format": CHECKPOINT_FORMAT}
        (tmp / "state.json").write_text(dumps_json(meta))


def load_checkpoint(path: Path, fingerprint: str, judge: Judge, opt: torch.optim.Optimizer) -> int:
    """Restore a checkpoint written by the same run; returns the step to continue from (0: none).

    Raises ``train_state.UnsafeCheckpoint`` if the folder holds a pickle file.
    """
    state_file = path / "state.json"
    if not state_file.is_file():
        return 0
    train_state.check_loadable(path)
    state = json.loads(state_file.read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        print(f"train_judge: ignoring checkpoint {path} of an older layout (format {state.get('format', 1)})")
        return 0
    if state["fingerprint"] != fingerprint:
        print(f"train_judge: ignoring checkpoint {path} from a different configuration")
        return 0
    named = dict(judge.model.named_parameters())
    with torch.no_grad():
        for n, t in train_state.load_tensors(path / "trainable.safetensors").items():
            named[n].copy_(t)
    train_state.load_optimizer(opt, path)
    train_state.load_rng(path)
    print(f"train_judge: resumed from step {state['step']}")
    return int(state["step"])


def save_judge(judge: Judge, cfg: TrainJudgeConfig, base: str, out: Path, template_version) -> None:
    """Adapter (LoRA) or full model, loadable by ``Judge.load(out)`` and by stock transformers/peft."""
    out.mkdir(parents=True, exist_ok=True)
    judge.model.save_pretrained(out, safe_serialization=True)
    if cfg.finetune == "lora":
        meta = JudgeMeta(**judge.size_rule(), base=base, adapter=True, template_version=template_version)
    else:
        judge.tokenizer.save_pretrained(out)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        Qwen2VLImageProcessorPil.from_pretrained(base).save_pretrained(out)
        meta = JudgeMeta(**judge.size_rule(), template_version=template_version)
    meta.write(out)


def train(
    judge: Judge,
    cfg: TrainJudgeConfig,
    inputs_fn: InputsFn,
    train_rows: list[dict],
    val_rows: list[dict],
    ckpt_dir: Path | None = None,
    log: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """Fine-tune ``judge`` in place; returns the per-step history of logged metrics.

    Under several processes (``onereward.launch``, ``accelerate launch``) every process reads the
    same batches and trains on its share of each batch's pairs through DDP; the logged loss is the
    mean over all processes, and the main process alone logs and writes checkpoints.
    """
    from accelerate import Accelerator

    seed_everything(cfg.seed)
    acc = Accelerator(cpu=judge.device.type == "cpu")
    world, rank = acc.num_processes, acc.process_index
    pairs_per_batch = max(1, cfg.batch_size // 2)
    if pairs_per_batch % world:
        raise ValueError(f"train_judge: {pairs_per_batch} pairs per batch do not split over {world} processes")
    params = make_trainable(judge, cfg)
    # fp32 masters for what is trained when the model is in bf16/fp16: AdamW's steps at the
    # paper's lr 1e-6 are far below bf16's resolution and would round to nothing
    weight_dtype = judge.model.dtype
    mixed = weight_dtype != torch.float32
    for p in params:
        p.data = p.data.float()
    amp = (lambda: torch.autocast(judge.device.type, dtype=weight_dtype)) if mixed else nullcontext  # noqa: E731
    # DDP over several processes, the module itself over one; each distinct image of a batch
    # goes through the vision tower once (both orders of a pair share their two images)
    runner = acc.prepare_model(DistinctImagesForward(judge.model))
    opt = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows_digest = hashlib.sha256(json.dumps(train_rows, sort_keys=True, default=str).encode()).hexdigest()
    fingerprint = cfg.fingerprint(**judge.size_rule(), rows=rows_digest, world=world)
    start = load_checkpoint(ckpt_dir / "latest", fingerprint, judge, opt) if ckpt_dir else 0
    judge.model.train()
    stream = batch_stream(inputs_fn, train_rows, cfg, judge.input_size)
    for _ in range(start):  # replay the data order up to the checkpoint (no compute)
        next(stream)
    history: list[dict] = []
    losses: list[float] = []
    bar = tqdm(range(start, cfg.steps), desc="train_judge", unit="step", initial=start, total=cfg.steps,
               disable=not acc.is_main_process)
    for step in bar:
        batch = next(stream)
        mine = [e for k in range(rank * 2, len(batch), world * 2) for e in batch[k : k + 2]]  # whole pairs
        first, second, queries, label = stack(mine)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        with amp():
            loss = eq3_loss(judge.margin(first, second, queries, model=runner), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the processes here
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        losses.append(mean_over_processes(loss, acc))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            metrics = {"loss": sum(losses) / len(losses), "lr": lr_at(step, cfg)}
            losses = []
            if val_rows:
                with amp():
                    p = score_rows(judge, inputs_fn("val", False, 0), val_rows, cfg.eval_batch_size, desc="val", acc=acc)
                s = summarize(pair_results(val_rows, p))
                metrics.update({"val_accuracy": s["pair_accuracy"], "val_mean_accuracy": s["mean_accuracy"]})
                for task, dims in s["cells"].items():
                    metrics.update({f"val_cell_accuracy/{task}/{dim}": c["accuracy"] for dim, c in dims.items()})
            history.append({"step": done, **metrics})
            if log and acc.is_main_process:
                log(done, metrics)
        if ckpt_dir and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            if acc.is_main_process:
                save_checkpoint(ckpt_dir / "latest", done, fingerprint, judge, opt)
            acc.wait_for_everyone()
    for p in params:  # the trained judge in the model's own dtype, as it was loaded
        p.data = p.data.to(weight_dtype)
    judge.model.eval()
    return history


def clear_checkpoints(ckpt_dir: Path) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)
