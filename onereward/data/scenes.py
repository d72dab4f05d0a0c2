"""Scenes of the embedded default: real photos, masks per task, prompted content, ground truth.

One scene is what a user hands in (the source image with its mask and prompt) plus what the
result should show (the ground truth: the photo, the prompted object drawn where it belongs,
the clean background under a removed object). The base generator's pre-training, the
preference data and the base's quality bar all draw their scenes here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from onereward import tasks
from onereward.data.photos import load_photos

COLORS = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220),
    "yellow": (240, 220, 30), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "stripes")
WORDS = ("CAT", "SUN", "OPEN", "SALE", "TAXI", "BAR", "MILK", "STOP", "EXIT", "TEA", "HOT", "ZOO")

def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def draw_object(img: Image.Image, box: tuple[int, int, int, int], shape: str, color: tuple) -> None:
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse(box, fill=color)
    elif shape == "square":
        d.rectangle(box, fill=color)
    elif shape == "triangle":
        d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:  # stripes: a texture, three bars
        step = max(2, (x1 - x0) // 5)
        for x in range(x0, x1, 2 * step):
            d.rectangle((x, y0, min(x + step - 1, x1), y1), fill=color)


def draw_text(img: Image.Image, box: tuple[int, int, int, int], word: str) -> None:
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    font = _font(int((y1 - y0) * 0.7))
    d.rectangle(box, fill=(250, 250, 245))
    d.text(((x0 + x1) / 2, (y0 + y1) / 2), word, fill=(10, 10, 10), font=font, anchor="mm")


def box_in(mask: np.ndarray, frac: float, rng) -> tuple[int, int, int, int]:
    """A box of ``frac`` of the mask's bounding box, placed at random inside it."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = max(4, int((y1 - y0) * frac)), max(4, int((x1 - x0) * frac))
    top = int(rng.integers(y0, max(y0 + 1, y1 - h + 1)))
    left = int(rng.integers(x0, max(x0 + 1, x1 - w + 1)))
    return left, top, left + w, top + h


def fill_mask(size: int, rng) -> np.ndarray:
    """A rectangle, ellipse or brush stroke covering roughly 15-35% of the image."""
    img = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(img)
    kind = rng.choice(["rect", "ellipse", "brush"])
    side = int(size * rng.uniform(0.4, 0.6))
    x0, y0 = (int(v) for v in rng.integers(2, size - side - 2, size=2))
    if kind == "rect":
        d.rectangle((x0, y0, x0 + side, y0 + int(side * rng.uniform(0.7, 1.0))), fill=255)
    elif kind == "ellipse":
        d.ellipse((x0, y0, x0 + side, y0 + int(side * rng.uniform(0.7, 1.0))), fill=255)
    else:
        points = [(int(x), int(y)) for x, y in rng.integers(x0, x0 + side, size=(4, 2))]
        d.line(points, fill=255, width=max(3, size // 5), joint="curve")
        d.rectangle((x0 + side // 4, y0 + side // 4, x0 + 3 * side // 4, y0 + 3 * side // 4), fill=255)
    return np.asarray(img) > 127


def border_mask(size: int, rng) -> np.ndarray:
    """Outer borders on one to four sides: the region an extend task generates."""
    mask = np.zeros((size, size), bool)
    sides = [s for s in ("top", "bottom", "left", "right") if rng.random() < 0.6] or ["left", "right"]
    for s in sides:
        mask |= side_strip(mask.shape, s, int(size * rng.uniform(0.15, 0.25)))
    return mask


def side_strip(shape: tuple[int, int], side: str, width: int) -> np.ndarray:
    """A boolean strip ``width`` pixels deep along one image border."""
    strip = np.zeros(shape, bool)
    if side == "top":
        strip[:width] = True
    elif side == "bottom":
        strip[-width:] = True
    elif side == "left":
        strip[:, :width] = True
    else:
        strip[:, -width:] = True
    return strip


def widest_strip(mask: np.ndarray) -> np.ndarray:
    """The widest single border strip of an extend mask: prompted content belongs in one strip."""
    widths = {
        "top": int(mask.all(axis=1).cumprod().sum()), "bottom": int(mask.all(axis=1)[::-1].cumprod().sum()),
        "left": int(mask.all(axis=0).cumprod().sum()), "right": int(mask.all(axis=0)[::-1].cumprod().sum()),
    }
    side = max(widths, key=lambda k: widths[k])
    return side_strip(mask.shape, side, widths[side])


def crop_photo(rng, size: int) -> np.ndarray:
    photos = load_photos()
    _, photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 0.9))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop).astype(np.float32) / 255.0


def _to_img(a: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))


def _to_arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(np.float32) / 255.0


@dataclass
class Content:
    """What the prompt asks for in the region, and where the ground truth has it."""

    kind: str  # "object" or "text"
    color: str = ""
    shape: str = ""
    word: str = ""

    def prompt(self) -> str:
        return f'the text "{self.word}"' if self.kind == "text" else f"a {self.color} {self.shape}"

    def draw(self, base: np.ndarray, box) -> np.ndarray:
        img = _to_img(base)
        if self.kind == "text":
            draw_text(img, box, self.word)
        else:
            draw_object(img, box, self.shape, COLORS[self.color])
        return _to_arr(img)

    def record(self, box) -> dict:
        """The record's ``content`` field: kind, what, and the ground truth's box."""
        what = {"word": self.word} if self.kind == "text" else {"color": self.color, "shape": self.shape}
        return {"kind": self.kind, **what, "box": [int(v) for v in box]}


@dataclass
class Scene:
    """One input as a user hands it in, and its ground truth."""

    id: str
    task: str
    prompt: str | None
    tags: list[str]
    content: dict | None
    source: np.ndarray  # HxWx3 float in [0, 1]: what the user hands in
    mask: np.ndarray  # HxW bool, True = generate
    ground_truth: np.ndarray  # HxWx3: what the region should show


def make_scene(index: int, task: str, seed: int, size: int, text_rendering_fraction: float = 0.25,
               extend_prompt_fraction: float = 0.5) -> Scene:
    """Scene ``index`` of ``task``, drawn from its own generator seeded by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    clean = crop_photo(rng, size)
    tags: list[str] = []
    content, box = None, None
    if task == "removal":
        other = crop_photo(rng, size)
        mask = np.zeros((size, size), bool)
        h, w = (int(v) for v in rng.integers(size // 4, size // 2, size=2))
        top, left = int(rng.integers(2, size - h - 2)), int(rng.integers(2, size - w - 2))
        obj = _to_img(clean)
        if rng.random() < 0.5:  # a pasted sticker cut from another photo
            obj.paste(_to_img(other[:h, :w]), (left, top))
        else:
            draw_object(obj, (left, top, left + w, top + h), str(rng.choice(SHAPES[:3])), COLORS[str(rng.choice(list(COLORS)))])
        mask[max(0, top - 2) : top + h + 2, max(0, left - 2) : left + w + 2] = True
        source, truth, prompt = _to_arr(obj), clean, None
    else:
        mask = fill_mask(size, rng) if task == "fill" else border_mask(size, rng)
        if task == "fill" or rng.random() < extend_prompt_fraction:
            if task == "fill" and rng.random() < text_rendering_fraction:
                content = Content("text", word=str(rng.choice(WORDS)))
                tags.append(tasks.TEXT_RENDERING)
            else:
                content = Content("object", color=str(rng.choice(list(COLORS))), shape=str(rng.choice(SHAPES)))
            region = widest_strip(mask) if task == "extend" else mask
            box = box_in(region, 0.75 if content.kind == "text" else 0.6, rng)
        prompt = content.prompt() if content else None
        # the content as the region can hold it: where its box pokes out of the mask the photo is known
        truth = np.where(mask[..., None], content.draw(clean, box), clean).astype(np.float32) if content else clean
        source = np.where(mask[..., None], 0.5, clean).astype(np.float32)
    return Scene(input_id(task, index), task, prompt, tags, content.record(box) if content else None,
                 source, mask, truth)


def input_id(task: str, index: int) -> str:
    return f"{task}-{index:06d}"
