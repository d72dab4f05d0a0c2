"""Measures that neither the annotator nor the rater uses: a check on the rater itself.

Both compare the generated region with the ground truth over ``R\\C``: the region's pixels
(mask > 0.5) outside the prompted content's box (the box's target is not in the ground truth).
They apply to every task.

- ``masked_psnr``: ``10 log10(1 / MSE)`` in dB over those pixels and the three channels,
  capped at ``max_db`` (a perfect region).
- ``masked_ssim``: SSIM (Wang et al. 2004: 11-tap Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, per channel) computed on the whole images, its map averaged over those pixels.
  Windows near the mask edge also see known pixels, as in the usual masked SSIM; the content
  box is replaced by the ground truth first, so its drawing does not leak into nearby windows.

Both take (and ignore) the rater's other sample fields, so one sample dict feeds every
pointwise scorer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onereward.scoring.base import PointwiseScorer, ScoreOutput, register_scorer
from onereward.scoring.content import check_content, content_box
from onereward.scoring.pixels import box_mask, masked_mean


def _prepare(images, ground_truth, mask, content) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images with the content box replaced by the ground truth, ground truth, ``R\\C`` weights)."""
    b, _, h, w = images.shape
    for name, t, ch in (("ground_truth", ground_truth, 3), ("mask", mask, 1)):
        if tuple(t.shape) != (b, ch, h, w):
            raise ValueError(f"{name} must be [{b}, {ch}, {h}, {w}], got {list(t.shape)}")
    contents = [check_content(c, i) for i, c in enumerate(content if content is not None else [None] * b)]
    boxes = box_mask([content_box(c, (h, w)) if c else None for c in contents], (h, w), 1, images.device)
    img, gt = images.float(), ground_truth.float()
    # the box's target is not in the ground truth: hide it from SSIM's windows too
    img = img * (1 - boxes) + gt * boxes
    return img, gt, (mask.float() > 0.5).float() * (1 - boxes)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_map(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel, per-channel SSIM of ``[B, C, H, W]`` images in [0, 1] (reflect padding keeps the size)."""
    c = a.shape[1]
    win = gaussian_window(size, sigma, a.dtype, a.device).expand(c, 1, size, size)
    pad = size // 2

    def filt(x):
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), win, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


@register_scorer("masked_psnr")
class MaskedPSNR(PointwiseScorer):
    """PSNR of the generated region against the ground truth, dB (higher is better)."""

    required_fields = ("ground_truth", "mask")
    optional_fields = ("content", "source", "task")

    def __init__(self, max_db: float = 100.0):
        self.max_db = max_db

    @torch.no_grad()
    def score(self, images, *, ground_truth, mask, content=None, **_) -> ScoreOutput:
        img, gt, w = _prepare(images, ground_truth, mask, content)
        mse = masked_mean((img - gt) ** 2, w)
        floor = 10 ** (-self.max_db / 10)
        psnr = torch.where(mse.isnan(), mse, -10 * torch.log10(mse.clamp_min(floor)))
        return ScoreOutput({self.name: psnr}, scorer=self.name, info={"mse": mse})


@register_scorer("masked_ssim")
class MaskedSSIM(PointwiseScorer):
    """Mean SSIM of the generated region against the ground truth, in [-1, 1] (higher is better)."""

    required_fields = ("ground_truth", "mask")
    optional_fields = ("content", "source", "task")

    @torch.no_grad()
    def score(self, images, *, ground_truth, mask, content=None, **_) -> ScoreOutput:
        img, gt, w = _prepare(images, ground_truth, mask, content)
        s = masked_mean(ssim_map(img, gt), w)
        return ScoreOutput({self.name: s}, scorer=self.name)

