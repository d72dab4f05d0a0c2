"""How the known pixels (mask 0) of a generated image are treated: one rule for every stage.

The preference data's candidates, RL rollouts (policy and reference), validation and evaluation
all finish their images with :func:`finish`, so the judge never rates a kind of image it was
not trained on. params.yaml ``generation``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GenerationConfig:
    """params.yaml `generation`: read by synthesize, train_policy and evaluate."""

    paste_known: bool = True
    """Paste the known pixels back from the input after decoding, as inpainting front-ends do:
    only the region is the model's work. False keeps the decoded image as it is (the VAE's
    round trip changes the known pixels a little)."""


def finish(images: torch.Tensor, source: torch.Tensor, masks: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """``images`` [B,3,H,W] in [0,1] with the known pixels of ``source`` pasted back if ``cfg`` says so.

    Differentiable in ``images`` (RL's x0 image keeps its gradient inside the region).
    """
    if not cfg.paste_known:
        return images
    m = masks.to(images.dtype)
    return images * m + source.to(images.dtype) * (1 - m)
