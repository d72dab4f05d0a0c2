"""Model-side benchmarks on the default's own checkpoints: judge scoring and one RL iteration.

Both read what ``dvc repro`` leaves in ``data/`` (shards, the trained judge, the tiny policy),
so they measure the models the pipeline actually trains, with the active profile's params.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from onereward.bench.data import median_time
from onereward.config import active_profile, section
from onereward.judge.data import examples, read_query_table, stack
from onereward.judge.model import Judge
from onereward.judge.params import judge_section
from onereward.rl.conditions import draw, load_conditions
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.rollout import Rollouts, capped_loss, generators, judge_rewards

SHARDS = Path("data/shards")
QUERIES = Path("data/queries.parquet")


def _policy_config() -> TrainPolicyConfig:
    """train_policy's settings with the active profile's overrides, as the stage reads them."""
    return judge_section(TrainPolicyConfig, "train_policy")[0]


def _judge_path() -> Path:
    trained = Path(_policy_config().judge)
    return trained if trained.exists() else Path("data/models/judge_base")


def judge_throughput(rows: int, batch_size: int, repeats: int) -> dict:
    """Validation query rows scored one at a time against in batches of ``batch_size``."""
    from onereward.data.reader import input_dataset

    judge = Judge.load(_judge_path())
    judge.model.eval()
    table = read_query_table(QUERIES, "val")[:rows]
    first, second, queries, _ = stack(list(examples(input_dataset(SHARDS, "val"), table)))

    def one_at_a_time():
        for i in range(len(queries)):
            judge.score(first[i : i + 1], second[i : i + 1], queries[i : i + 1], batch_size=1)

    def batched():
        judge.score(first, second, queries, batch_size=batch_size)

    single = median_time(one_at_a_time, repeats)
    many = median_time(batched, repeats)
    return {
        "judge": str(_judge_path()), "rows": len(queries), "batch_size": batch_size,
        "rows_per_s_one_at_a_time": round(len(queries) / single, 1),
        "rows_per_s_batched": round(len(queries) / many, 1),
        "speedup": round(single / many, 2), "repeats": repeats,
    }


class _Timer:
    def __init__(self):
        self.seconds: dict[str, list[float]] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds.setdefault(name, []).append(time.perf_counter() - start)

    def medians(self) -> dict[str, float]:
        return {k: round(statistics.median(v), 4) for k, v in self.seconds.items()}


def rl_iteration(iterations: int) -> dict:
    """One OneReward iteration (train_policy's params) split into its parts, median over iterations.

    The parts run in the trainer's order: reference rollout (full denoise, no gradient), policy
    rollout to step t (no gradient), one-step x0 prediction and VAE decode (with gradient),
    judge forward, backward through judge, decoder and transformer, optimizer step. The Alg. 1
    reference cache removes the first part after the first visit of a (condition, seed).
    """
    from onereward.policy.adapter import DTYPES, FillPolicy

    cfg = _policy_config()
    profile = active_profile()
    device, dtype = profile.device, DTYPES[profile.dtype]
    policy = FillPolicy.load(profile.policy_model, device, dtype)
    tr = policy.transformer
    tr.requires_grad_(True).train()
    judge = Judge.load(_judge_path(), device=device, dtype=dtype)
    judge.requires_grad_(False).eval()
    opt = torch.optim.AdamW([p for p in tr.parameters() if p.requires_grad], lr=cfg.lr)
    rollouts = Rollouts(policy, cfg)
    conds = load_conditions(str(SHARDS), "train", cfg.max_conditions)
    timer = _Timer()
    for step in range(iterations + 1):  # the first iteration warms up and is not counted
        d = draw(conds, cfg.seed, step, 0, cfg.batch_size, cfg.reference_seeds, cfg.t_range,
                 cfg.sampling_weights())
        images, masks = conds.tensors(d.index, device)
        prompts = conds.generation_prompts(d.index)
        with timer("total"):
            with timer("reference_rollout"):
                ref = rollouts.sample(images, masks, prompts, d.ref_seeds, tr)
            with timer("policy_rollout_to_t"), torch.no_grad():
                cond, noise = policy.prepare(images, masks, prompts, generators(d.policy_seeds, device))
                x_t = policy.denoise(noise, cond, cfg.num_inference_steps, stop=d.t, **rollouts.velocity_kwargs(cond, tr))
            with timer("x0_prediction_and_decode"):
                x0 = policy.predict_x0(x_t, d.t, cond, cfg.num_inference_steps, **rollouts.velocity_kwargs(cond, tr))
                img = policy.decode(x0, cond.height, cond.width)
            with timer("judge_forward"):
                rewards = judge_rewards(judge, img, ref, d.task, [conds.prompts[i] for i in d.index])
                loss = capped_loss(rewards, len(d.index), cfg.reward_cap)
            with timer("backward"):
                loss.backward()
            with timer("optimizer_step"):
                torch.nn.utils.clip_grad_norm_(tr.parameters(), cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
        if step == 0:
            timer.seconds.clear()
    parts = timer.medians()
    total = parts.pop("total")
    cached_total = total - parts["reference_rollout"]
    return {
        "batch_size": cfg.batch_size, "num_inference_steps": cfg.num_inference_steps, "iterations": iterations,
        "seconds": parts, "iteration_s": total,
        "iteration_s_with_cached_reference": round(cached_total, 4),
        "alg1_cache_saving": round(1 - cached_total / total, 3),
    }


@torch.no_grad()
def defect_preference(inputs_per_task: int, split: str = "val") -> list[dict]:
    """Does the judge fall for a defect the rater sees? For each task and each hand-made defect
    (``onereward.data.defects``): the base policy's own outputs (validation's baseline images:
    RL's sampling settings and noise) against the same outputs with that defect in the region;
    per dimension, the judge's order-symmetric preference for the spoiled image (0.5: none, above:
    the judge prefers the defect) beside the rater's mean score change (below 0: the rater sees it
    as worse). A defect the judge prefers while the rater marks it down is a way for RL to raise
    the reward and lower the quality."""
    import numpy as np

    from onereward import tasks as registry
    from onereward.data.defects import DEFECTS, spoil
    from onereward.judge.image import to_tensor
    from onereward.judge.queries import render_query
    from onereward.policy.adapter import FillPolicy
    from onereward.policy.known import GenerationConfig
    from onereward.rl.validation import Validator
    from onereward.scoring import build_scorer

    cfg = _policy_config()
    policy = FillPolicy.load(active_profile().policy_model)
    judge = Judge.load(_judge_path()).requires_grad_(False).eval()
    rollouts = Rollouts(policy, cfg, section(GenerationConfig, "generation"))
    conds = load_conditions(str(SHARDS), split, with_truth=True)
    rater = build_scorer("rater")
    rng = np.random.default_rng(0)
    rows = []
    for task in registry.TASKS:
        sub = conds.subset(conds.indices_of(task)[:inputs_per_task])
        base = Validator(sub, rollouts, judge, policy.transformer, cfg.batch_size, "cpu").base
        for group in sub.by_size():
            images = torch.stack([base[i] for i in group])
            masks = sub.tensors(group, "cpu")[1][:, 0].numpy() > 0.5
            fields = sub.rater_fields(group, "cpu")
            base_scores = rater(images, **fields).scores
            prompts = [sub.prompts[i] for i in group]
            pairs = [(i, d) for i, p in enumerate(prompts) for d in registry.dimensions_for(task, p)]
            queries = [render_query(task, d, prompts[i]) for i, d in pairs]
            first = [i for i, _ in pairs]
            for kind in DEFECTS:
                spoiled = torch.stack([to_tensor(spoil(kind, (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), m, rng))
                                       for img, m in zip(images, masks)])
                scores = rater(spoiled, **fields).scores
                pref = judge.symmetric_score(spoiled[first], images[first], queries)
                for d in dict.fromkeys(d for _, d in pairs):
                    sel = [k for k, (_, dd) in enumerate(pairs) if dd == d]
                    rows.append({"task": task, "defect": kind, "dimension": d, "inputs": len(sel),
                                 "judge_preference": round(float(pref[sel].mean()), 3),
                                 "rater_change": round(float((scores[d] - base_scores[d]).nanmean()), 4)})
    return rows


def judge_by_spread(splits: tuple[str, ...], edges: tuple[float, ...] = (0.1, 0.15, 0.25)) -> list[dict]:
    """Is a pair the annotator calls clearer easier for the trained judge? Per split, task and
    dimension, the judge's Table 1 accuracy on the pairs whose rater scores (winner minus loser:
    the annotator's spread, since best and worst are its argmax and argmin) fall below each of
    ``edges`` and above the last. A dimension the judge has learned gains accuracy with the spread;
    one it has not stays near 50%, and one it has learned backwards falls below."""
    from collections import defaultdict

    import numpy as np

    from onereward.data.reader import input_dataset
    from onereward.eval.benchmark import Item
    from onereward.eval.rated import candidate_scores
    from onereward.judge.metrics import pair_results
    from onereward.judge.train import score_rows
    from onereward.scoring import build_scorer

    judge = Judge.load(_judge_path()).requires_grad_(False).eval()
    rater = build_scorer("rater")
    out = []
    for split in splits:
        rows = read_query_table(QUERIES, split=split)
        correct = {(p["key"], p["dimension"]): p["correct"]
                   for p in pair_results(rows, score_rows(judge, input_dataset(SHARDS, split), rows, 64, desc=split))}
        inputs = [x for x in input_dataset(SHARDS, split) if any((x["key"], d) in correct for d in x["labels"])]
        items = [Item(x["key"], x["task"], x["prompt"], list(x["tags"]), x["source"], x["mask"], x["candidates"],
                      ground_truth=x["ground_truth"], content=x.get("content")) for x in inputs]
        cells = defaultdict(list)
        for x, scores in zip(inputs, candidate_scores(items, rater)):
            for d, label in x["labels"].items():
                if (x["key"], d) in correct:
                    spread = scores[d][label["best"]] - scores[d][label["worst"]]
                    cells[(x["task"], d, int(np.searchsorted(edges, spread, side="right")))].append(correct[(x["key"], d)])
        bounds = (0.0, *edges, 1.0)
        for (task, d, b), hits in sorted(cells.items()):
            out.append({"split": split, "task": task, "dimension": d, "spread": f"[{bounds[b]:.2f}, {bounds[b + 1]:.2f})",
                        "pairs": len(hits), "judge_accuracy": round(100.0 * sum(hits) / len(hits), 1)})
    return out
