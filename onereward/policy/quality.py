"""The bar the tiny base generator must meet before its outputs become preference data and RL starts.

Measured on held-out synthetic inputs (seeds the pre-training never drew) at RL's sampling
settings, against their ground truth:

- ``kept_error``: mean absolute error on the known pixels of the decoded image, before they are
  pasted back: how faithfully the VAE and the model reproduce what was given.
- ``sharpness_ratio``: mean |Laplacian| of the generated region over the ground truth's there:
  a generator that paints flat or blurry blobs is far below 1, one that paints noise above it.
- ``region_error`` against ``flat_fill_error``: mean absolute error of 4x4 block means of the
  region against the ground truth, for the generator and for the trivial fill (the region
  painted in the mean colour of the known pixels). A generator worth training beats it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from onereward.data.scenes import make_scene


@dataclass(frozen=True)
class BaseBar:
    """params.yaml `base_model.bar`."""

    max_kept_error: float = 0.1
    """Largest mean absolute error (0-1) on the known pixels before they are pasted back (the
    untrained generator: 0.24)."""
    min_sharpness_ratio: float = 0.05
    """Smallest ratio of the generated region's sharpness to the ground truth's (0: a flat fill)."""
    max_sharpness_ratio: float = 2.0
    """Largest ratio (noise, which an untrained generator paints, is sharp: 0.93 and up)."""
    inputs: int = 64
    """Held-out inputs measured."""


HELD_OUT_SEED = 10_000
"""Seed of the held-out inputs: the synthesize stage and pre-training use seeds 0..few."""


@torch.no_grad()
def base_quality(policy, bar: BaseBar, size: int, steps: int = 8) -> dict:
    from onereward.policy.inference import InferenceConfig, generate
    from onereward.scoring.pixels import block_error, laplacian, luma, masked_mean

    plan = ["fill", "fill", "extend", "removal"] * (bar.inputs // 4)  # the paper's task mix
    inputs = [make_scene(i, t, HELD_OUT_SEED, size) for i, t in enumerate(plan)]
    t = lambda key: torch.from_numpy(np.stack([getattr(x, key) for x in inputs])).permute(0, 3, 1, 2).float()  # noqa: E731
    source, truth = t("source"), t("ground_truth")
    mask = torch.from_numpy(np.stack([x.mask for x in inputs])[:, None].astype(np.float32))
    out = generate(policy, source, mask, [x.prompt for x in inputs], [x.task for x in inputs],
                   InferenceConfig(true_cfg=1.0, num_inference_steps=steps, seed=HELD_OUT_SEED))
    known = 1 - mask
    kept = float(((out - source).abs() * known).sum() / (known.sum() * 3))
    sharpness = lambda x: masked_mean(laplacian(luma(x)).abs(), mask).sum() / len(inputs)  # noqa: E731
    flat = (source * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1)
    region_error = lambda x: float(block_error(x, truth, mask, 4).mean())  # noqa: E731
    result = {"kept_error": round(kept, 5), "sharpness_ratio": round(float(sharpness(out) / sharpness(truth)), 5),
              "region_error": round(region_error(out), 5),
              "flat_fill_error": round(region_error(flat.expand_as(source)), 5)}
    result["bar_met"] = bool(result["kept_error"] <= bar.max_kept_error
                             and bar.min_sharpness_ratio <= result["sharpness_ratio"] <= bar.max_sharpness_ratio
                             and result["region_error"] < result["flat_fill_error"])
    return result
