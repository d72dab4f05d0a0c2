"""The judge behind the scorer interface: pairwise, one P(Yes) per registry dimension.

Two definitions, both the project's own functions:

- ``symmetric=False``: the RL reward, ``P(Yes | first, second, q(task, d, prompt))`` from
  :func:`onereward.rl.rollout.judge_rewards`; differentiable with respect to ``first`` when the
  caller has gradients on.
- ``symmetric=True`` (default): the evaluation's order-free preference
  ``1/2 [P(Yes | a, b, q) + P(No | b, a, q)]`` from :meth:`Judge.symmetric_score`, no gradient.

Dimensions come from :func:`onereward.tasks.dimensions_for`; the others are NaN.
"""

from __future__ import annotations

import math

import torch

from onereward import tasks as registry
from onereward.scoring.base import PairwiseScorer, ScoreOutput, register_scorer


@register_scorer("judge")
class JudgeScorer(PairwiseScorer):
    """OneReward's judge as a pairwise scorer; ``judge`` is a loaded Judge or a path for ``Judge.load``."""

    required_fields = ("task", "prompt")

    def __init__(self, judge, symmetric: bool = True, batch_size: int = 16, device: str = "cpu",
                 dtype: str = "float32"):
        if isinstance(judge, (str, bytes)) or hasattr(judge, "__fspath__"):
            from onereward.judge.model import Judge

            judge = Judge.load(judge, device=device, dtype=dtype)
        self.judge, self.symmetric, self.batch_size = judge, symmetric, batch_size

    def score(self, first, second, *, task, prompt) -> ScoreOutput:
        b = first.shape[0]
        for i, t in enumerate(task):
            if t not in registry.TASKS:
                raise ValueError(f"judge scorer: task[{i}] is {t!r}; known: {sorted(registry.TASKS)}")
        rows: dict[str, list[int]] = {d: [] for d in registry.DIMENSIONS}
        values: dict[str, list[torch.Tensor]] = {d: [] for d in registry.DIMENSIONS}
        for t in sorted(set(task)):
            idx = [i for i, x in enumerate(task) if x == t]
            sample, dims, p = self._group(first[idx], second[idx], t, [prompt[i] for i in idx])
            for s, d, v in zip(sample, dims, p.to(first.device).unbind(0)):
                rows[d].append(idx[s])
                values[d].append(v)
        out = {}
        for d in registry.DIMENSIONS:
            col = torch.full((b,), math.nan, device=first.device)
            # index_put, not in-place assignment: in reward mode the gradient reaches ``first``
            if rows[d]:
                col = col.index_put((torch.tensor(rows[d], device=first.device),), torch.stack(values[d]).float())
            out[d] = col
        return ScoreOutput(out, scorer=self.name, info={"symmetric": self.symmetric})

    def _group(self, first, second, task: str, prompts: list):
        """(sample index, dimension, preference) for every dimension of every sample of one task."""
        if not self.symmetric:
            from onereward.rl.rollout import judge_rewards

            r = judge_rewards(self.judge, first, second, task, prompts)
            return r.sample, r.dims, r.p_yes
        from onereward.judge.queries import render_query

        pairs = [(i, d) for i, p in enumerate(prompts) for d in registry.dimensions_for(task, p)]
        queries = [render_query(task, d, prompts[i]) for i, d in pairs]
        sample = [i for i, _ in pairs]
        p = self.judge.symmetric_score(first[sample], second[sample], queries, batch_size=self.batch_size)
        return sample, [d for _, d in pairs], p
