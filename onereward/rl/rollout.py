"""One OneReward iteration's forward pass: reference image, policy x0 image, judge rewards, loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onereward import tasks as registry
from onereward.judge.queries import render_query
from onereward.policy.adapter import Condition, FillPolicy
from onereward.policy.known import GenerationConfig, finish
from onereward.rl.config import REWARD_ORDERS, TrainPolicyConfig
from onereward.rl.judging import pair_p_yes, vision_features


def generators(seeds: list[int], device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


class Rollouts:
    """Sampling with the knobs of the config (schedule length, guidance, true CFG); images
    finished by the ``generation`` rule (known pixels), as the judge's training data were."""

    def __init__(self, policy: FillPolicy, cfg: TrainPolicyConfig, generation: GenerationConfig = GenerationConfig()):
        self.policy, self.cfg, self.generation = policy, cfg, generation
        self._neg: dict[int, tuple] = {}

    def velocity_kwargs(self, cond: Condition, transformer) -> dict:
        kw = {"guidance_scale": self.cfg.guidance_scale, "transformer": transformer}
        if self.cfg.true_cfg != 1.0:
            embeds, pooled, _ = self.policy.encode_prompts([self.cfg.negative_prompt] * len(cond))
            neg = Condition(embeds, pooled, cond.text_ids, cond.masked, cond.img_ids, cond.height, cond.width)
            kw.update(neg=neg, true_cfg=self.cfg.true_cfg)
        return kw

    @torch.no_grad()
    def sample(self, images, masks, prompts, seeds, transformer) -> torch.Tensor:
        """Full denoise from the seeds' noise with ``transformer``; images in [0, 1]."""
        cond, noise = self.policy.prepare(images, masks, prompts, generators(seeds, images.device))
        out = self.policy.sample(cond, noise, self.cfg.num_inference_steps, **self.velocity_kwargs(cond, transformer))
        return finish(out, images, masks, self.generation)

    def one_step_x0(self, images, masks, prompts, seeds, t: int, rollout_model, grad_model,
                    anchor_model=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Denoise to schedule index ``t`` without gradient, then x0 in one step with gradient, decoded.

        With ``anchor_model``: also the mean squared distance between that x0 latent and the one
        ``anchor_model`` predicts from the same x_t (no gradient through it), per sample; else None.
        """
        p, n = self.policy, self.cfg.num_inference_steps
        cond, noise = p.prepare(images, masks, prompts, generators(seeds, images.device))
        x_t = p.denoise(noise, cond, n, stop=t, **self.velocity_kwargs(cond, rollout_model))
        anchor_x0 = None
        if anchor_model is not None:
            with torch.no_grad():
                anchor_x0 = p.predict_x0(x_t, t, cond, n, **self.velocity_kwargs(cond, anchor_model))
        x0 = p.predict_x0(x_t, t, cond, n, **self.velocity_kwargs(cond, grad_model))
        image = finish(p.decode(x0, cond.height, cond.width), images, masks, self.generation)
        drift = None if anchor_x0 is None else (x0.float() - anchor_x0.float()).square().flatten(1).mean(1)
        return image, drift


@dataclass
class Rewards:
    """Judge rewards of one batch, one entry per (sample, dimension) pair."""

    p_yes: torch.Tensor
    sample: list[int]
    dims: list[str]
    task: str
    weights: dict[str, float] | None = None
    """Dimension -> weight in a sample's mean (``TrainPolicyConfig.reward_weights``); None: all 1."""

    def pair_weights(self) -> torch.Tensor:
        """Each (sample, dimension) pair's weight, as ``p_yes``'s dtype."""
        w = [1.0 if self.weights is None else self.weights[d] for d in self.dims]
        return torch.tensor(w, device=self.p_yes.device, dtype=self.p_yes.dtype)

    def _weighting(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(each pair's sample index, its weight, each sample's weight sum), as ``like``'s dtype."""
        idx = torch.tensor(self.sample, device=like.device)
        w = self.pair_weights().to(like.dtype)
        return idx, w, torch.zeros(batch, device=like.device, dtype=like.dtype).index_add(0, idx, w)

    def weighted(self, values: torch.Tensor, batch: int) -> torch.Tensor:
        """Per-pair ``values`` times the pair's weight over its sample's weight sum: summed over a
        sample's pairs, the weighted mean over its dimensions."""
        idx, w, sums = self._weighting(batch, values)
        return values * w / sums[idx]

    def per_sample(self, batch: int) -> torch.Tensor:
        """Each sample's reward: the (weighted) mean over its dimensions."""
        idx, w, sums = self._weighting(batch, self.p_yes)
        return torch.zeros(batch, device=w.device, dtype=w.dtype).index_add(0, idx, self.p_yes * w) / sums

    def by_dimension(self) -> dict[str, float]:
        out = {}
        for d in dict.fromkeys(self.dims):
            out[d] = float(self.p_yes.detach()[[i for i, x in enumerate(self.dims) if x == d]].mean())
        return out


def judge_rewards(judge, first, second, task: str, prompts: list[str | None], orders: str = "first",
                  weights: dict[str, float] | None = None) -> Rewards:
    """r_d = P(Yes | first, second, q(task, d, prompt)) for every dimension of every sample
    (``orders="first"``, the paper's Alg. 1), or with ``orders="both"`` the order-symmetric
    1/2 [P(Yes | first, second, q) + P(No | second, first, q)], the score the judge is trained
    (Eq. 3 on both orders) and evaluated with.

    Each image enters the judge's vision tower once; ``second`` (the reference) without gradient.
    """
    if orders not in REWARD_ORDERS:
        raise ValueError(f"reward orders must be one of {REWARD_ORDERS}, got {orders!r}")
    sample, dims, queries = [], [], []
    for i, prompt in enumerate(prompts):
        for d in registry.dimensions_for(task, prompt):
            sample.append(i)
            dims.append(d)
            queries.append(render_query(task, d, prompt))
    with torch.no_grad():
        reference = vision_features(judge, second)
    policy = vision_features(judge, first)
    p = pair_p_yes(judge, policy, reference, sample, queries)
    if orders == "both":
        p = 0.5 * (p + 1 - pair_p_yes(judge, reference, policy, sample, queries))
    return Rewards(p, sample, dims, task, weights)


def capped_loss(rewards: Rewards, batch: int, cap: float) -> torch.Tensor:
    """Mean over samples of the (weighted) mean over the task's dimensions of max(0, lambda - r_d)."""
    return rewards.weighted(torch.relu(cap - rewards.p_yes), batch).sum() / batch
