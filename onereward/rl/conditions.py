"""RL conditions (image, mask, prompt, task) from the shards, held in memory, drawn per step.

What a step draws is a pure function of (seed, step, rank): a resumed run draws exactly what
the uninterrupted run drew, without saving any data-loader state.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from onereward import tasks as registry
from onereward.data.reader import input_dataset


@contextlib.contextmanager
def _whole_split():
    """Read every shard in every process (the reader splits by RANK/WORLD_SIZE otherwise)."""
    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def key_seed(key: str) -> int:
    """A stable 31-bit seed per input key (crc32: the same in every process and run)."""
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


@dataclass
class ConditionSet:
    """Inputs of one split, sorted by key."""

    keys: list[str]
    tasks: list[str]
    prompts: list[str | None]
    images: torch.Tensor
    """uint8 ``[N, 3, H, W]``: the user's input (region to generate greyed out)."""
    masks: torch.Tensor
    """uint8 ``[N, 1, H, W]``, 1 = region to generate."""
    truths: torch.Tensor | None = None
    """uint8 ``[N, 3, H, W]`` ground truth for the rater (validation only), or None when the data has none."""
    contents: list[dict | None] | None = None
    """Prompted content per input for the rater, or None."""

    def __len__(self) -> int:
        return len(self.keys)

    def indices_of(self, task: str) -> np.ndarray:
        return np.array([i for i, t in enumerate(self.tasks) if t == task], dtype=np.int64)

    def subset(self, idx) -> "ConditionSet":
        idx = [int(i) for i in idx]
        return ConditionSet([self.keys[i] for i in idx], [self.tasks[i] for i in idx],
                            [self.prompts[i] for i in idx], self.images[idx], self.masks[idx],
                            None if self.truths is None else self.truths[idx],
                            None if self.contents is None else [self.contents[i] for i in idx])

    def rater_fields(self, idx, device) -> dict | None:
        """The rater's sample fields for ``idx`` (see onereward.scoring.rater), or None without ground truth."""
        if self.truths is None:
            return None
        idx = [int(i) for i in idx]
        images, masks = self.tensors(idx, device)
        return {"ground_truth": self.truths[idx].to(device).float() / 255.0, "mask": masks, "source": images,
                "task": [self.tasks[i] for i in idx], "content": [self.contents[i] for i in idx]}

    def tensors(self, idx, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] and binary masks as float tensors."""
        idx = [int(i) for i in idx]
        return (self.images[idx].to(device).float() / 255.0, self.masks[idx].to(device).float())

    def generation_prompts(self, idx) -> list[str]:
        return [registry.generation_prompt(self.tasks[i], self.prompts[i]) for i in idx]


def _chw(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()


def load_conditions(shards_dir: str, split: str, limit: int = 0, with_truth: bool = False) -> ConditionSet:
    """Inputs of ``split``; ``with_truth`` also keeps their ground truth (validation's rater)."""
    rows = []
    with _whole_split():
        for item in input_dataset(shards_dir, split):
            mask = torch.from_numpy((np.asarray(item["mask"].convert("L")) > 127).astype(np.uint8))[None]
            truth = _chw(item["ground_truth"]) if with_truth and item.get("ground_truth") is not None else None
            rows.append((item["key"], item["task"], item["prompt"], _chw(item["source"]), mask, truth, item.get("content")))
    if not rows:
        raise ValueError(f"no inputs in split {split!r} under {shards_dir}")
    rows.sort(key=lambda r: r[0])
    if limit:
        rows = rows[:limit]
    truths = torch.stack([r[5] for r in rows]) if all(r[5] is not None for r in rows) else None
    return ConditionSet([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                        torch.stack([r[3] for r in rows]), torch.stack([r[4] for r in rows]),
                        truths, [r[6] for r in rows] if truths is not None else None)


def validation_subset(conds: ConditionSet, size: int, seed: int) -> ConditionSet:
    """A fixed, seeded subset with the tasks interleaved (keys sort by task otherwise)."""
    order = np.random.default_rng([seed, 999]).permutation(len(conds))[:size]
    return conds.subset(sorted(order.tolist(), key=lambda i: conds.keys[i]))


@dataclass(frozen=True)
class Draw:
    """What one process uses in one step."""

    task: str
    index: list[int]
    ref_seeds: list[int]
    """Seeds of the reference noise e1, one per condition (few per key: cacheable)."""
    policy_seeds: list[int]
    """Seeds of the policy noise e2 (fresh every step)."""
    t: int
    """Schedule index where the policy predicts x0 with gradient."""


def draw(conds: ConditionSet, seed: int, step: int, rank: int, batch_size: int,
         reference_seeds: int, t_range: tuple[int, int], task_weights: dict[str, float],
         same_t: bool = False) -> Draw:
    """Step ``step``'s draw for process ``rank``; ``same_t``: t is the same on every process
    (sharded runs, where every process must make the same number of transformer calls)."""
    rng = np.random.default_rng([seed, step, rank])
    weights = {t: w for t, w in task_weights.items() if w > 0 and len(conds.indices_of(t))}
    if not weights:
        raise ValueError(f"no train conditions for any task with a positive sampling weight {task_weights}")
    names = sorted(weights)
    p = np.array([weights[n] for n in names])
    task = names[int(rng.choice(len(names), p=p / p.sum()))]
    pool = conds.indices_of(task)
    index = rng.choice(pool, size=batch_size, replace=len(pool) < batch_size).tolist()
    ref = [key_seed(conds.keys[i]) * 16 + int(rng.integers(reference_seeds)) for i in index]
    pol = [int(s) for s in rng.integers(0, 2**31 - 1, size=batch_size)]
    t = int((np.random.default_rng([seed, step]) if same_t else rng).integers(t_range[0], t_range[1] + 1))
    return Draw(task, index, ref, pol, t)
