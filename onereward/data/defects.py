"""Hand-made defect candidates: a generator candidate with its region spoiled one known way.

The paper's candidates all come from the base model. On the tiny profile the judge learns from
a few thousand pairs, and RL drives the policy to what those pairs never showed: a region that
loses its detail and drifts to a flat, greyish average of the scene (the judge rated that better
than the base while the rater rated it worse). A share of inputs therefore gets one candidate
that is another candidate of the same input with one of these defects in its region; the
annotator (the rater) labels it like any other candidate, so the labels stay the rater's.

Each defect maps (image, region) -> image, uint8 ``[H, W, 3]`` and bool ``[H, W]``; only region
pixels change. A new defect is one entry in :data:`DEFECTS`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

Defect = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _in_region(image: np.ndarray, region: np.ndarray, spoiled: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[region] = np.clip(np.rint(spoiled[region]), 0, 255).astype(np.uint8)
    return out


def flat(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The region's mean colour everywhere in it: all detail gone (a collapsed fill)."""
    mean = image[region].astype(np.float64).mean(axis=0)
    return _in_region(image, region, np.broadcast_to(mean, image.shape))


def hazy(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pulled 40-80% toward the whole image's mean grey: washed out, low contrast, desaturated."""
    x = image.astype(np.float64)
    grey = x.mean()
    k = rng.uniform(0.4, 0.8)
    return _in_region(image, region, (1 - k) * x + k * grey)


def blur(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of 1.5-3 px: soft, detail-less texture."""
    radius = float(rng.uniform(1.5, 3.0))
    soft = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), np.float64)
    return _in_region(image, region, soft)


def color_cast(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tint of 25-50/255 on one or two channels: a colour that does not belong to the scene."""
    shift = np.zeros(3)
    channels = rng.choice(3, size=int(rng.integers(1, 3)), replace=False)
    shift[channels] = rng.uniform(25, 50, size=len(channels)) * rng.choice([-1, 1], size=len(channels))
    return _in_region(image, region, image.astype(np.float64) + shift)


DEFECTS: dict[str, Defect] = {"flat": flat, "hazy": hazy, "blur": blur, "color_cast": color_cast}
"""Name -> defect; ``synthesize.defects.kinds`` picks from these."""


def spoil(kind: str, image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind not in DEFECTS:
        raise ValueError(f"unknown defect {kind!r}; known: {sorted(DEFECTS)}")
    if not region.any():
        return image.copy()
    return DEFECTS[kind](image, region, rng)
