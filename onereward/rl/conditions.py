"""RL conditions (image, mask, prompt, task) from the shards, drawn per step.

The train split is not held in memory: ``onereward.data.index.ShardIndex`` keeps where each
input lies and its size, and a step reads the inputs it draws. Inputs of several sizes are
grouped by size (buckets) so that one batch shares a shape. What a step draws is a pure
function of (seed, step, rank): a resumed run draws exactly what the uninterrupted run drew,
without saving any data-loader state.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from onereward import tasks as registry
from onereward.data.index import Condition, ShardIndex


@contextlib.contextmanager
def _whole_split():
    """Read every shard in every process (each draws from the whole split)."""
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
    """Inputs of one split, sorted by key: metadata in memory, pixels from ``fetch``."""

    keys: list[str]
    tasks: list[str]
    prompts: list[str | None]
    sizes: list[tuple[int, int]]
    """(height, width) of each input."""
    fetch: Callable[[int], Condition]
    """Input ``i``'s pixels (uint8)."""
    has_truth: bool = False
    """Whether every input has a ground truth for the rater (validation)."""
    contents: list[dict | None] | None = None
    """Prompted content per input for the rater, or None."""

    @classmethod
    def in_memory(cls, keys, tasks, prompts, images: torch.Tensor, masks: torch.Tensor,
                  truths: torch.Tensor | None = None, contents=None) -> "ConditionSet":
        """From uint8 tensors ``[N, 3, H, W]``, ``[N, 1, H, W]`` (and ground truths)."""
        return cls(list(keys), list(tasks), list(prompts), [tuple(images.shape[-2:])] * len(keys),
                   lambda i: Condition(images[i], masks[i], None if truths is None else truths[i]),
                   truths is not None, contents)

    def __len__(self) -> int:
        return len(self.keys)

    def indices_of(self, task: str) -> np.ndarray:
        return np.array([i for i, t in enumerate(self.tasks) if t == task], dtype=np.int64)

    def subset(self, idx) -> "ConditionSet":
        """The inputs ``idx``, their pixels read now and kept (for small sets: validation)."""
        idx = [int(i) for i in idx]
        held = [self.fetch(i) for i in idx]
        return ConditionSet([self.keys[i] for i in idx], [self.tasks[i] for i in idx],
                            [self.prompts[i] for i in idx], [self.sizes[i] for i in idx], held.__getitem__,
                            self.has_truth, None if self.contents is None else [self.contents[i] for i in idx])

    def by_size(self, idx=None) -> list[list[int]]:
        """``idx`` (default: all) grouped by input size, groups in order of first appearance."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(len(self)) if idx is None else idx:
            groups.setdefault(self.sizes[int(i)], []).append(int(i))
        return list(groups.values())

    def _stack(self, idx, part: str) -> torch.Tensor:
        sizes = {self.sizes[i] for i in idx}
        if len(sizes) > 1:
            raise ValueError(f"inputs of one batch must share a size, got {sorted(sizes)} (draw by bucket)")
        return torch.stack([getattr(self.fetch(i), part) for i in idx])

    def rater_fields(self, idx, device) -> dict | None:
        """The rater's sample fields for ``idx`` (see onereward.scoring.rater), or None without ground truth."""
        if not self.has_truth:
            return None
        idx = [int(i) for i in idx]
        images, masks = self.tensors(idx, device)
        return {"ground_truth": self._stack(idx, "truth").to(device).float() / 255.0, "mask": masks, "source": images,
                "task": [self.tasks[i] for i in idx], "content": [self.contents[i] for i in idx]}

    def tensors(self, idx, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] and binary masks as float tensors (the inputs must share a size)."""
        idx = [int(i) for i in idx]
        return (self._stack(idx, "image").to(device).float() / 255.0, self._stack(idx, "mask").to(device).float())

    def generation_prompts(self, idx) -> list[str]:
        return [registry.generation_prompt(self.tasks[i], self.prompts[i]) for i in idx]


def load_conditions(shards_dir: str, split: str, limit: int = 0, with_truth: bool = False) -> ConditionSet:
    """Inputs of ``split`` (the first ``limit`` by key, 0: all); ``with_truth`` also reads their
    ground truth (validation's rater). Every process indexes the whole split."""
    with _whole_split():
        index = ShardIndex(shards_dir, split, with_truth=with_truth, limit=limit)
    if not len(index):
        raise ValueError(f"no inputs in split {split!r} under {shards_dir}")
    return ConditionSet(index.keys, index.tasks, index.prompts, index.sizes, index.fetch, index.has_truth,
                        index.contents if index.has_truth else None)


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
    bucket = conds.sizes[index[0]]
    if any(conds.sizes[i] != bucket for i in index):  # one shape per batch: the first draw's size
        same = pool[[conds.sizes[i] == bucket for i in pool]]
        rest = np.random.default_rng([seed, step, rank, 1]).choice(same, size=batch_size - 1,
                                                                   replace=len(same) < batch_size - 1)
        index = index[:1] + rest.tolist()
    ref = [key_seed(conds.keys[i]) * 16 + int(rng.integers(reference_seeds)) for i in index]
    pol = [int(s) for s in rng.integers(0, 2**31 - 1, size=batch_size)]
    t = int((np.random.default_rng([seed, step]) if same_t else rng).integers(t_range[0], t_range[1] + 1))
    return Draw(task, index, ref, pol, t)
