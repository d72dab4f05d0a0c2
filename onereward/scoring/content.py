"""The prompted content of an input and how well a result shows it (the rater's text alignment).

A content dict names what the prompt asks for and where the input's data put it:
``{"kind": "object", "color": <COLORS name>, "shape": <SHAPES name>, "box": [x0, y0, x1, y1]}`` or
``{"kind": "text", "word": "CAT", "box": [...]}`` (PIL's inclusive box). The expectation is the
content drawn as the data draws it (``onereward.data.scenes.draw_object``/``draw_text``).

Both measures compare the result with the prompted content and with every alternative of the
data's vocabulary (other shapes, other words) drawn in the same box, each at its best position
within ``tolerance`` pixels ("roughly where asked"), and count the prompted one's overlap only
as far as it beats the best alternative (:func:`recognised`): IoU alone barely tells a square
from a circle (0.79).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch
from PIL import Image

from onereward.data.scenes import COLORS, SHAPES, WORDS, draw_object, draw_text
from onereward.scoring.pixels import luma, shift_stack

CANVAS = (140, 140, 140)
"""Background an expectation is drawn on when none is given: neither dark nor light for text."""
MIN_PIXELS = 4
"""Fewer expected content pixels than this inside the region: too little to tell (NaN)."""


def check_content(c, index: int) -> dict | None:
    """Validate one sample's content dict; a one-line ``ValueError`` naming the sample otherwise."""
    if c is None:
        return None
    if not isinstance(c, dict):
        raise ValueError(f"content[{index}]: expected a dict or None, got {type(c).__name__}")
    box = c.get("box")
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and box[0] <= box[2] and box[1] <= box[3]):
        raise ValueError(f"content[{index}]: 'box' must be [x0, y0, x1, y1] with x0 <= x1, y0 <= y1, got {box!r}")
    kind = c.get("kind")
    if kind == "object":
        if c.get("color") not in COLORS:
            raise ValueError(f"content[{index}]: unknown colour {c.get('color')!r}; known: {sorted(COLORS)}")
        if c.get("shape") not in SHAPES:
            raise ValueError(f"content[{index}]: unknown shape {c.get('shape')!r}; known: {list(SHAPES)}")
    elif kind == "text":
        if not isinstance(c.get("word"), str) or not c["word"]:
            raise ValueError(f"content[{index}]: text content needs a non-empty 'word'")
    else:
        raise ValueError(f"content[{index}]: 'kind' must be 'object' or 'text', got {kind!r}")
    return c


def render(c: dict, shape: tuple[int, int], base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``c`` drawn as the data draws it (objects in white) on ``base`` ``[H, W, 3]`` uint8
    (default :data:`CANVAS`): the drawing and the ``[H, W]`` bool map of the pixels it changed."""
    h, w = shape
    base = np.full((h, w, 3), CANVAS, np.uint8) if base is None else base
    img = Image.fromarray(base)
    box = tuple(int(v) for v in c["box"])
    if c["kind"] == "text":
        draw_text(img, box, c["word"])
    else:
        draw_object(img, box, c["shape"], (255, 255, 255))
    arr = np.asarray(img).copy()
    return arr, (arr != base).any(axis=2)


def content_box(c: dict, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The declared box grown to everything the content draws (a long word overflows its box)."""
    x0, y0, x1, y1 = (int(v) for v in c["box"])
    ys, xs = np.nonzero(render(c, shape)[1])
    if len(xs):
        x0, y0, x1, y1 = min(x0, int(xs.min())), min(y0, int(ys.min())), max(x1, int(xs.max())), max(y1, int(ys.max()))
    return x0, y0, x1, y1


def soft_iou(m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``[N]`` soft intersection over union of memberships ``[N, 1, H, W]`` (0 outside what counts)."""
    union = torch.maximum(m, e).sum((1, 2, 3))
    return torch.minimum(m, e).sum((1, 2, 3)) / union.clamp_min(1e-12)


def recognised(prompted: torch.Tensor, others: torch.Tensor, margin: float) -> torch.Tensor:
    """``prompted`` IoU times a ramp of its lead over the best alternative: 0 at ``-margin``, 1 at ``+margin``."""
    best = others.nan_to_num(0.0).max() if others.numel() else torch.tensor(0.0)
    return prompted * ((prompted - best + margin) / (2 * margin)).clamp(0, 1)


def _best_over_shifts(iou: torch.Tensor, valid: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n * K]`` -> per candidate the best IoU over its K shifts (NaN if none valid), and the shift index."""
    iou = torch.where(valid, iou, torch.full_like(iou, -1.0)).view(n, -1)
    best, at = iou.max(dim=1)
    return torch.where(best < 0, torch.full_like(best, math.nan), best), at


class ContentScorer:
    """Text alignment of results against their content; renders are cached per content (and
    ground truth), so an input's candidates share them."""

    def __init__(self, color_inner: float, color_outer: float, margin: float, tolerance: int):
        self.color_inner, self.color_outer, self.margin, self.tolerance = color_inner, color_outer, margin, tolerance
        self._cache: dict = {}

    def __call__(self, img: torch.Tensor, gt: torch.Tensor, region: torch.Tensor, c: dict) -> torch.Tensor:
        """Scalar in [0, 1] (NaN: too little of the content inside the region); ``[3, H, W]``/``[1, H, W]``."""
        fn = self.text if c["kind"] == "text" else self.object
        return fn(img.float(), gt.float(), region.float(), c)

    def _window(self, c: dict, shape) -> tuple[slice, slice]:
        """Where evidence counts: the content's box grown by the position tolerance (a crop)."""
        x0, y0, x1, y1 = content_box(c, shape)
        t = self.tolerance
        return slice(max(0, y0 - t), min(shape[0], y1 + 1 + t)), slice(max(0, x0 - t), min(shape[1], x1 + 1 + t))

    # ------------------------------------------------------------------ objects

    def _member(self, x: torch.Tensor, color: str) -> torch.Tensor:
        rgb = torch.tensor(COLORS[color], dtype=x.dtype, device=x.device).view(3, 1, 1) / 255
        d = (x - rgb).norm(dim=0, keepdim=True)
        return ((self.color_outer - d) / (self.color_outer - self.color_inner)).clamp(0, 1)

    def object(self, img, gt, region, c) -> torch.Tensor:
        """Prompted colour's pixels against each shape: IoU over the region's part of the box.

        Outside the prompted shape, pixels the ground truth has in that colour too are left out:
        a background that already had it neither helps nor hurts.
        """
        shape = img.shape[-2:]
        key = ("object", json.dumps(c, sort_keys=True), tuple(shape))
        if key not in self._cache:
            ys, xs = self._window(c, shape)
            shapes = [c["shape"]] + [s for s in SHAPES if s != c["shape"]]
            drawn = torch.stack([torch.from_numpy(render({**c, "shape": s}, shape)[1][ys, xs]) for s in shapes])
            self._cache[key] = ((ys, xs), drawn.float()[:, None].to(img.device))
        (ys, xs), drawn = self._cache[key]
        img, gt, region = img[:, ys, xs], gt[:, ys, xs], region[:, ys, xs]
        have = self._member(img, c["color"])
        background = (self._member(gt, c["color"]) > 0).float() * (1 - drawn[0])
        e = shift_stack(drawn, self.tolerance)
        w = region * (e + (1 - e) * (1 - background))
        iou = soft_iou(have * w, e * w)
        best, _ = _best_over_shifts(iou, (e * w).sum((1, 2, 3)) >= MIN_PIXELS, len(drawn))
        return recognised(best[0], best[1:], self.margin)

    # ------------------------------------------------------------------ text

    @staticmethod
    def _dark(y: torch.Tensor) -> torch.Tensor:
        return ((0.5 - y) / 0.3).clamp(0, 1)

    @staticmethod
    def _light(y: torch.Tensor) -> torch.Tensor:
        return ((y - 0.6) / 0.25).clamp(0, 1)

    def _text_maps(self, gt: torch.Tensor, c: dict):
        """Per word (prompted first): dark-stroke membership and where the drawing counts; and the
        prompted word's light patch. Drawn on the ground truth, so anti-aliased glyph edges blend
        as they do in a result; an exact rendering scores 1."""
        shape = gt.shape[-2:]
        base = (gt.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        key = ("text", json.dumps(c, sort_keys=True), hashlib.sha1(base.tobytes()).hexdigest())
        if key not in self._cache:
            ys, xs = self._window(c, shape)
            strokes, touched, patch = [], [], None
            for word in [c["word"]] + [w for w in WORDS if w != c["word"]]:
                arr, changed = render({**c, "word": word}, shape, base)
                # the patch and the glyphs (which may overflow it); the photo around an overflow is no evidence
                t = torch.from_numpy((changed | render({**c, "word": word}, shape)[1])[ys, xs]).float()[None]
                y = luma(torch.from_numpy(arr[ys, xs]).float().permute(2, 0, 1)[None] / 255)[0]
                strokes.append(self._dark(y) * t)
                touched.append(t)
                if patch is None:
                    patch = self._light(y) * t
            maps = tuple(x.to(gt.device) for x in (torch.stack(strokes), torch.stack(touched), patch[None]))
            self._cache[key] = ((ys, xs), *maps)
        return self._cache[key]

    def text(self, img, gt, region, c) -> torch.Tensor:
        """Dark strokes where the word's strokes are (IoU, gated against the other words) times
        the share of the rest of the box that is the light patch."""
        (ys, xs), strokes, touched, patch = self._text_maps(gt, c)
        img, region = img[:, ys, xs], region[:, ys, xs]
        if (strokes[0] * region).sum() < MIN_PIXELS:
            return torch.tensor(math.nan)
        y = luma(img[None])[0]
        s, w = shift_stack(strokes, self.tolerance), region * shift_stack(touched, self.tolerance)
        iou = soft_iou(self._dark(y) * w, s * w)
        best, at = _best_over_shifts(iou, (s * w).sum((1, 2, 3)) >= MIN_PIXELS, len(strokes))
        p = shift_stack(patch, self.tolerance)[int(at[0])] * region
        share = torch.minimum(self._light(y), p).sum() / p.sum().clamp_min(1)
        return recognised(best[0], best[1:], self.margin) * share
