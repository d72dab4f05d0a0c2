"""The ground-truth rater: per dimension, a score from pixels and the input's ground truth.

It stands in for the paper's human raters (base vs tuned, Figure 7 and Table 2) and is never an
RL reward. Every score is in [0, 1], higher is better, NaN where the dimension does not apply
(the task's registry dimensions; ``text_alignment`` only with prompted content). Notation: ``R``
the generated region (mask > 0.5), ``K`` the known pixels (the rest), ``C`` the prompted
content's box; ``R\\C`` the region's background, whose target is the ground truth. The
ground truth may show the prompted content in its box or not: no measure compares the box
with it directly.

- **consistency**: does the region's background carry the colours of the scene? Mean absolute
  difference of block means (``block`` px blocks, over ``R\\C`` pixels only, so nothing leaks in
  from the content or the known pixels) between the result and the ground truth. Block means
  forgive texture detail and small misplacements and keep what a viewer sees at a glance:
  a colour cast, a white or grey blob, haze. ``exp(-err / consistency_scale)``.
- **structure**: do lines and edges continue across the mask edge? Sobel gradients of luma
  (smoothed by ``edge_sigma``), result vs ground truth, in a band ``band`` px deep inside the
  region along the known pixels (plus the one-pixel seam outside it), content box left out:
  ``err = sum |g - g_gt| / sum (|g| + |g_gt|)`` (0 equal, about 0.7 unrelated, 1 opposite or a
  flat region against texture). ``exp(-err / structure_scale)``: content misaligned by 1 px
  scores about 0.3-0.45, by 3 px or more about 0.1-0.3 (texture no longer lines up at all).
- **aesthetics**: is the region as sharp, contrasty and colourful as the photo would be? Three
  features over ``R\\C``: mean |Laplacian| of luma (sharpness), standard deviation of luma
  (contrast), mean ``max(rgb) - min(rgb)`` (saturation); each compared as ``|log ratio|`` to the
  ground truth's (with a small floor so flat photos compare as equal).
  ``exp(-mean |log ratio| / aesthetics_scale)``: blur, a washed-out or a flat bright region
  score low; noise (too sharp) also costs.
- **text_alignment** (inputs with prompted content; :mod:`onereward.scoring.content`): is the
  asked-for content in its box? Objects: the pixels of the prompted colour (soft membership:
  full within ``color_inner``, none beyond ``color_outer``, RGB distance) against the prompted
  shape drawn in the box as the data draws it, a soft intersection over union over the region's
  part of the box (outside the prompted shape, pixels the ground truth has in that colour too
  are left out). Text: dark strokes against the prompted word drawn there (IoU), times the share
  of the rest of the box that is the light patch the data draws. Each at its best position
  within ``position_tolerance`` px, and counted only as far as the prompted shape (word) beats
  every other shape (word) of the data's vocabulary, a linear ramp over ``+-recognition_margin``
  of IoU lead (IoU alone barely tells a square from a circle: 0.79). The score is that gated
  IoU, linear: a wrong shape, colour or word and a missing object score near 0; JPEG or a slight
  blur of the right object costs 0.05-0.3; text blurred by 1 px is mostly lost, as it is to a
  reader at 64 px. NaN when the region leaves under 4 pixels of the content to tell.
- **removal_quality**: is the object gone and the background restored? The consistency error
  against the clean background, times ``1 - leftover``: ``leftover`` is the share of the
  object's difference from the background (``source - ground_truth`` where they differ) that
  the result still carries (projection, clipped to [0, 1]); an object left in place gives 1.

Every score is multiplied by ``exp(-e_K / keep_scale)``, ``e_K`` the mean absolute error on the
known pixels against ``source`` (what the user handed in there): a regenerated (changed) known
region costs on every dimension; results that paste the known pixels back pay nothing. Sizes
in pixels are for 64 px images and scale with the image side. Raw errors: ``ScoreOutput.info``.

What it cannot see: a plausible fill that differs from the ground truth scores lower than the
ground truth itself (one photo is the only reference), and text legibility beyond stroke
overlap at the resolution given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from onereward import tasks as registry
from onereward.numerics import exact_sqrt
from onereward.scoring.base import PointwiseScorer, ScoreOutput, register_scorer
from onereward.scoring.content import ContentScorer, check_content, content_box
from onereward.scoring.pixels import (
    block_error, box_mask, dilate, erode, gaussian_blur, laplacian, luma, masked_mean, sobel,
)

REFERENCE_SIDE = 64
"""Image side at which the pixel sizes of :class:`RaterConfig` apply; they scale with the side."""


@dataclass(frozen=True)
class RaterConfig:
    """Scales and sizes of the rater's measures (defaults: 64 px images)."""

    keep_scale: float = 0.05
    """Known-region mean absolute error (0-1 pixels) that multiplies every score by 1/e."""
    consistency_scale: float = 0.08
    """Block-mean colour error that gives consistency (and removal) 1/e: about 20/255 per channel."""
    structure_scale: float = 0.25
    """Gradient disagreement (0 equal, ~0.7 unrelated) that gives structure 1/e."""
    aesthetics_scale: float = 0.5
    """Mean |log ratio| of sharpness/contrast/saturation that gives aesthetics 1/e (0.69 = a factor 2)."""
    block: int = 4
    """Side of the blocks whose means consistency compares, pixels."""
    band: int = 3
    """Depth of the band along the mask edge where structure compares gradients, pixels."""
    edge_sigma: float = 1.0
    """Gaussian (pixels) that smooths luma before structure's gradients: edges at the scale of
    the scene's lines, not texture grain or compression noise."""
    color_inner: float = 0.2
    """RGB distance (0-1 units) up to which a pixel fully counts as the prompted colour
    (JPEG and blur shift a small object's colour by about this much)."""
    color_outer: float = 0.45
    """RGB distance beyond which a pixel does not count (palette colours are at least 0.66 apart)."""
    position_tolerance: int = 2
    """Pixels the prompted content may sit off its box and still count as where asked."""
    recognition_margin: float = 0.1
    """IoU lead over the best other shape (or word) at which the prompted one counts as fully
    recognised; the same deficit counts as not recognised at all (a linear ramp between)."""
    box_margin: int = 1
    """Pixels around the content box also left out of the background measures (its outline)."""

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if v < 0 or (v == 0 and f.name not in ("position_tolerance", "box_margin")):
                raise ValueError(f"rater.{f.name} must be positive, got {v}")
        if self.color_inner >= self.color_outer:
            raise ValueError(f"rater.color_inner ({self.color_inner}) must be below color_outer ({self.color_outer})")


# ----------------------------------------------------------------------------- the rater


def _check_inputs(images, ground_truth, mask, source, task, content) -> list[dict | None]:
    b, _, h, w = images.shape
    for name, t, ch in (("images", images, 3), ("ground_truth", ground_truth, 3), ("source", source, 3), ("mask", mask, 1)):
        if tuple(t.shape) != (b, ch, h, w):
            raise ValueError(f"rater: {name} must be [{b}, {ch}, {h}, {w}], got {list(t.shape)}")
    for i, t in enumerate(task):
        if t not in registry.TASKS:
            raise ValueError(f"rater: task[{i}] is {t!r}; known: {sorted(registry.TASKS)}")
    content = list(content) if content is not None else [None] * b
    return [check_content(c, i) for i, c in enumerate(content)]


@register_scorer("rater")
class Rater(PointwiseScorer):
    """Ground-truth rater; see the module docstring for each dimension's measure."""

    required_fields = ("ground_truth", "mask", "source", "task")
    optional_fields = ("content",)

    def __init__(self, **config):
        self.config = RaterConfig(**config)

    @torch.no_grad()
    def score(self, images, *, ground_truth, mask, source, task, content=None) -> ScoreOutput:
        """Scores per registry dimension, ``[B]`` each; see the module docstring."""
        cfg = self.config
        contents = _check_inputs(images, ground_truth, mask, source, task, content)
        img, gt, src = (t.float().clamp(0, 1) for t in (images, ground_truth, source))
        b, _, h, w = img.shape
        px = lambda n: max(1, round(n * min(h, w) / REFERENCE_SIDE))  # noqa: E731
        region = (mask.float() > 0.5).float()
        known = 1 - region
        boxes = box_mask([content_box(c, (h, w)) if c else None for c in contents], (h, w), px(cfg.box_margin), img.device)
        background = region * (1 - boxes)

        known_error = masked_mean((img - src).abs(), known).nan_to_num(0.0)
        keep = torch.exp(-known_error / cfg.keep_scale)

        consistency_error = block_error(img, gt, background, px(cfg.block))

        band = region * dilate(known, px(cfg.band))
        sigma = cfg.edge_sigma * min(h, w) / REFERENCE_SIDE
        band = torch.maximum(band, known * dilate(region, 1)) * (1 - dilate(boxes, 1 + math.ceil(2 * sigma)))
        g, g_gt = (sobel(gaussian_blur(luma(x), sigma)) for x in (img, gt))
        num = ((g - g_gt).abs() * band).sum((1, 2, 3))
        den = ((g.abs() + g_gt.abs()) * band).sum((1, 2, 3))
        floor = 0.01 * band.sum((1, 2, 3))  # smooth photos: gradients too faint to disagree about
        structure_error = torch.where(band.sum((1, 2, 3)) > 0, num / (den + floor).clamp_min(1e-12), torch.nan)

        inner = background * erode(region, 1) * (1 - dilate(boxes, 1))
        ratios = []
        for feat, eps in ((_sharpness, 0.01), (_contrast, 0.01), (_saturation, 0.02)):
            ratios.append(torch.log((feat(img, inner) + eps) / (feat(gt, inner) + eps)).abs())
        aesthetics_error = torch.stack(ratios).mean(0)

        diff = src - gt
        obj = region * (diff.abs().sum(1, keepdim=True) > 0.1).float()
        leftover = ((img - gt) * diff * obj).sum((1, 2, 3)) / ((diff * diff * obj).sum((1, 2, 3))).clamp_min(1e-6)
        leftover = torch.where(obj.sum((1, 2, 3)) > 0, leftover.clamp(0, 1), torch.zeros_like(leftover))

        tolerance = round(cfg.position_tolerance * min(h, w) / REFERENCE_SIDE)
        align = ContentScorer(cfg.color_inner, cfg.color_outer, cfg.recognition_margin, tolerance)
        alignment = torch.full((b,), math.nan, device=img.device)
        for i, c in enumerate(contents):
            if c is not None:
                alignment[i] = align(img[i], gt[i], region[i], c)

        measured = {
            "text_alignment": alignment,
            "consistency": torch.exp(-consistency_error / cfg.consistency_scale),
            "structure": torch.exp(-structure_error / cfg.structure_scale),
            "aesthetics": torch.exp(-aesthetics_error / cfg.aesthetics_scale),
            "removal_quality": torch.exp(-consistency_error / cfg.consistency_scale) * (1 - leftover),
        }
        applies = {d: torch.zeros(b, dtype=torch.bool, device=img.device) for d in registry.DIMENSIONS}
        for i, (t, c) in enumerate(zip(task, contents)):
            for d in registry.get_task(t).dimensions:
                applies[d][i] = c is not None or not registry.DIMENSIONS[d].uses_prompt
        scores = {d: torch.where(applies[d], measured[d] * keep, torch.nan) for d in registry.DIMENSIONS}
        info = {
            "known_error": known_error,
            "consistency_error": consistency_error,
            "structure_error": structure_error,
            "aesthetics_error": aesthetics_error,
            "removal_leftover": leftover,
        }
        return ScoreOutput(scores, scorer=self.name, info=info)


def _sharpness(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return masked_mean(laplacian(luma(x)).abs(), w)


def _contrast(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = luma(x)
    mean = masked_mean(y, w).view(-1, 1, 1, 1)
    return exact_sqrt(masked_mean((y - mean) ** 2, w).clamp_min(0))


def _saturation(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return masked_mean((x.amax(1, keepdim=True) - x.amin(1, keepdim=True)), w)
