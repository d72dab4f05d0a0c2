"""Validation of train_policy: the judge's reward beside the ground-truth rater's score, on fixed
conditions and noises, a reward-hacking flag, and an image grid of base against policy."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from onereward.io import atomic_path
from onereward.rl.conditions import ConditionSet, key_seed
from onereward.rl.rollout import Rollouts, judge_rewards


HACKING_MARGIN = 0.01
"""Reward up and rater down by more than this (against step 0) is flagged as reward hacking."""


class Validator:
    """On fixed validation conditions and noises: the judge's reward P(Yes | policy, frozen base)
    (what RL optimises) and, beside it, the ground-truth rater's score of the policy's images
    (onereward.scoring.rater; never a training signal), per task and dimension. Conditions of
    different sizes are sampled and scored in groups of one size; images are kept per condition."""

    def __init__(self, conds: ConditionSet, rollouts: Rollouts, judge, base_model, batch: int, device,
                 reward_weights: Callable[[str], dict[str, float]] | None = None):
        from onereward.scoring import build_scorer

        self.conds, self.rollouts, self.judge, self.batch, self.device = conds, rollouts, judge, batch, device
        self.reward_weights = reward_weights or (lambda task: None)  # the reward RL optimises: the same weights
        self.rater = build_scorer("rater") if conds.has_truth else None
        self.base = self._images([key_seed(k) * 16 + 15 for k in conds.keys], base_model)
        self.base_rating = self.rate(self.base)
        self.last: list[torch.Tensor] | None = None

    def _images(self, seeds, model) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self.conds)
        for group in self.conds.by_size():
            for s in range(0, len(group), self.batch):
                idx = group[s : s + self.batch]
                images, masks = self.conds.tensors(idx, self.device)
                made = self.rollouts.sample(images, masks, self.conds.generation_prompts(idx), [seeds[i] for i in idx], model)
                for i, img in zip(idx, made):
                    out[i] = img
        return out

    @torch.no_grad()
    def rate(self, images: list[torch.Tensor]) -> dict[str, float]:
        """Mean rater score per task and dimension (``rater_<task>_<dim>``), per task and overall."""
        if self.rater is None:
            return {}
        n = len(self.conds)
        scores: dict[str, torch.Tensor] = {}
        overall = torch.full((n,), float("nan"))
        for group in self.conds.by_size():
            out = self.rater(torch.stack([images[i] for i in group]).float().cpu(), **self.conds.rater_fields(group, "cpu"))
            for dim, v in out.scores.items():  # the rater's own dtype: the means are its numbers
                scores.setdefault(dim, torch.full((n,), float("nan"), dtype=v.dtype))[group] = v
            overall[group] = out.overall()
        rows = {}
        for task in sorted(set(self.conds.tasks)):
            sel = [i for i, t in enumerate(self.conds.tasks) if t == task]
            for dim, v in scores.items():
                vals = v[sel]
                if not torch.isnan(vals).all():
                    rows[f"rater_{task}_{dim}"] = float(vals.nanmean())
            rows[f"rater_{task}"] = float(overall[sel].nanmean())
        rows["rater"] = float(overall.nanmean())
        return rows

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        images = self._images([key_seed(k) * 16 + 14 for k in self.conds.keys], model)
        self.last = images
        per_sample = torch.zeros(len(self.conds))
        for task in sorted(set(self.conds.tasks)):
            for idx in self.conds.by_size([i for i, t in enumerate(self.conds.tasks) if t == task]):
                r = judge_rewards(self.judge, torch.stack([images[i] for i in idx]), torch.stack([self.base[i] for i in idx]),
                                  task, [self.conds.prompts[i] for i in idx], weights=self.reward_weights(task))
                per_sample[idx] = r.per_sample(len(idx)).float().cpu()
        out = {"reward": float(per_sample.mean())}
        for task in sorted(set(self.conds.tasks)):
            out[task] = float(per_sample[[i for i, t in enumerate(self.conds.tasks) if t == task]].mean())
        return {**out, **self.rate(images)}


def hacking_signs(first: dict, row: dict) -> list[str]:
    """Tasks (and "all") whose judge reward rose while the rater's score fell since ``first``."""
    signs = []
    for task in ["all"] + sorted(k[len("rater_"):] for k in row if k.startswith("rater_") and k.count("_") == 1):
        reward, rater = ("reward", "rater") if task == "all" else (task, f"rater_{task}")
        if rater in row and reward in row and rater in first:
            if row[reward] - first[reward] > HACKING_MARGIN and first[rater] - row[rater] > HACKING_MARGIN:
                signs.append(task)
    return signs


def save_grid(conds: ConditionSet, validator: Validator, path: Path, n: int = 8) -> None:
    """Rows: input, frozen base, trained policy for the first ``n`` validation conditions of the
    first size (PNG).

    Reward hacking shows here first: a rising curve with images drifting away from the base.
    """
    import numpy as np
    from PIL import Image

    idx = conds.by_size()[0][:n]  # the first n of the first size: one grid shape
    rows = [conds.tensors(idx, "cpu")[0], torch.stack([validator.base[i] for i in idx]).float().cpu(),
            torch.stack([validator.last[i] for i in idx]).float().cpu()]
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    with atomic_path(path) as tmp:
        Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp, format="PNG")
