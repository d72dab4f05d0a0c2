"""Inference with the official OneReward defaults: true classifier-free guidance on FLUX.1-Fill.

pred = neg + true_cfg * (pos - neg) with negative prompt "nsfw", true_cfg 4.0 (both passes in
one batch), FLUX guidance embedding 1.0, 50 steps, seed 0, output size = input size. Task
presets come from the registry: removal and prompt-less extend use the task's fixed prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onereward.policy.adapter import FillPolicy
from onereward.tasks import generation_prompt


@dataclass(frozen=True)
class InferenceConfig:
    """The official repo's defaults (bytedance/OneReward)."""

    negative_prompt: str = "nsfw"
    """Prompt of the unconditional pass of true CFG."""
    true_cfg: float = 4.0
    """Real CFG scale; 1.0 switches the negative pass off."""
    guidance_scale: float = 1.0
    """FLUX guidance-embedding value (FLUX.1-Fill-dev's own default is 30)."""
    num_inference_steps: int = 50
    """Euler steps of the flow-matching schedule."""
    seed: int = 0
    """Seed of the CPU torch.Generator that draws all noise (on any device)."""


def task_prompts(tasks: list[str] | str | None, prompts: list[str | None]) -> list[str]:
    """Generation prompts with task presets (fixed prompts for removal / prompt-less extend)."""
    if tasks is None:
        return [p or "" for p in prompts]
    tasks = [tasks] * len(prompts) if isinstance(tasks, str) else tasks
    return [generation_prompt(t, p) for t, p in zip(tasks, prompts)]


@torch.no_grad()
def generate(
    policy: FillPolicy,
    images: torch.Tensor,
    masks: torch.Tensor,
    prompts: list[str | None],
    tasks: list[str] | str | None = None,
    cfg: InferenceConfig = InferenceConfig(),
    latents: torch.Tensor | None = None,
    decode: bool = True,
    seeds: list[int] | None = None,
) -> torch.Tensor:
    """Fill ``images`` [B,3,H,W] in [0,1] where ``masks`` [B,1,H,W] is 1; returns [B,3,H,W] in [0,1].

    The generator is consumed in FluxFillPipeline's order, so with ``true_cfg=1`` the result equals
    a stock ``FluxFillPipeline`` call with the same seed. ``latents`` (packed) replaces the
    initial noise; ``decode=False`` returns the final packed latents instead of images. ``seeds``
    (one per image) replace ``cfg.seed`` with a generator per image: each image's noise then
    does not depend on the batch it is made in.

    Noise is drawn from CPU generators whatever the device, as the official demo does
    (``torch.Generator("cpu")``): a seed gives the same noise on CPU and GPU.
    """
    if seeds is None:
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    else:
        gen = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    texts = task_prompts(tasks, list(prompts))
    cond, noise = policy.prepare(images.to(policy.device), masks.to(policy.device), texts, gen, latents)
    neg = None
    if cfg.true_cfg != 1.0:
        embeds, pooled, _ = policy.encode_prompts([cfg.negative_prompt] * len(texts))
        neg = type(cond)(embeds, pooled, cond.text_ids, cond.masked, cond.img_ids, cond.height, cond.width)
    out = policy.denoise(
        noise, cond, cfg.num_inference_steps, guidance_scale=cfg.guidance_scale, neg=neg, true_cfg=cfg.true_cfg
    )
    return policy.decode(out, cond.height, cond.width) if decode else out
