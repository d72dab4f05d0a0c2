"""The embedded default preference set: real photos, masks, prompts and graded candidates.

Each input gets ``num_candidates`` candidates. Per judged dimension every candidate has a
severity in [0, 1] of a degradation that targets only that dimension (a permutation of evenly
spaced levels, so the best is clean and the worst is strongly degraded):

- text alignment: the region's object/text matches the prompt, contradicts it in colour,
  shape or letters, or (most severe, half of the inputs) is missing: the prompt was ignored;
- structure: the region's content is shifted and warped, so lines break at the mask edge;
- consistency: the region's colour, sharpness or evenness departs from its surroundings;
- aesthetics: global loss of contrast and saturation plus JPEG damage;
- removal quality: a ghost of the removed object is left behind.

Labels follow from the severities (best = least, worst = most). With ``tie_probability`` a
dimension gets near-equal severities and is left out, as annotators do when candidates hardly
differ. Written in the raw annotation format of docs/data-format.md.
"""

from __future__ import annotations

import io
import json
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from onereward import tasks
from onereward.data.photos import load_photos
from onereward.data.records import RECORDS_FILE

COLORS = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220),
    "yellow": (240, 220, 30), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "stripes")
WORDS = ("CAT", "SUN", "OPEN", "SALE", "TAXI", "BAR", "MILK", "STOP", "EXIT", "TEA", "HOT", "ZOO")
TIE_MARGIN = 0.1
"""Severities closer than this count as "no clear difference" and drop the dimension."""
VISIBLE_MIN = 0.03
"""A labelled pair whose defects differ less than this (``visible_difference``) is dropped."""
IGNORED_PROMPT_FRACTION = 0.5
"""Share of prompted inputs whose worst candidate leaves the asked-for content out entirely."""


@dataclass(frozen=True)
class SynthesizeConfig:
    """params.yaml `synthesize`."""

    seed: int = 0
    """Every input draws from its own generator seeded by (seed, index): order- and worker-independent."""
    num_inputs: int = 600
    """Inputs over all tasks (100000 for the scale benchmark)."""
    task_mix: dict[str, float] = field(default_factory=lambda: {"fill": 0.5, "extend": 0.25, "removal": 0.25})
    """Share of inputs per task."""
    resolution: int = 64
    """Square image side in pixels; a multiple of 16 for FLUX packing."""
    num_candidates: int = 4
    """Candidates per input (the paper uses four)."""
    text_rendering_fraction: float = 0.25
    """Share of fill inputs whose prompt asks for rendered text."""
    extend_prompt_fraction: float = 0.5
    """Share of extend inputs with a user prompt."""
    tie_probability: float = 0.5
    """Chance that one dimension of one input has no clear winner and is left unlabelled.

    Tied dimensions are equally degraded in every candidate, so a labelled pair differs mostly
    on its own dimension and few others: what a small judge can learn to tell apart."""
    bad_records: int = 0
    """Deliberately broken records appended (one per reason, cycling) to exercise quarantine."""
    workers: int = 1
    """Processes generating inputs; the output bytes do not depend on it."""

    def __post_init__(self):
        if self.resolution % 16:
            raise ValueError(f"synthesize.resolution must be a multiple of 16, got {self.resolution}")
        if set(self.task_mix) - set(tasks.TASKS):
            raise ValueError(f"synthesize.task_mix names unknown tasks: {sorted(set(self.task_mix) - set(tasks.TASKS))}")
        if self.num_candidates < 2:
            raise ValueError("synthesize.num_candidates must be at least 2")


def task_plan(cfg: SynthesizeConfig) -> list[str]:
    """The task of every input index: exact counts per task (largest remainder)."""
    total = sum(cfg.task_mix.values())
    shares = {t: cfg.task_mix[t] / total * cfg.num_inputs for t in cfg.task_mix}
    counts = {t: int(s) for t, s in shares.items()}
    for t in sorted(shares, key=lambda t: counts[t] - shares[t])[: cfg.num_inputs - sum(counts.values())]:
        counts[t] += 1
    return [t for t in cfg.task_mix for _ in range(counts[t])]


# ----------------------------------------------------------------------------- drawing


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


# ----------------------------------------------------------------------------- degradations


def _to_img(a: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))


def _to_arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(np.float32) / 255.0


@dataclass(frozen=True)
class Defects:
    """One input's defect kinds; candidates differ only in how strongly they show them.

    Real candidates of one input come from one model and fail in the same way to different
    degrees, which is what makes "better on this dimension" a comparison of one property.
    """

    shift: tuple[int, int]  # structure: direction of the region's displacement
    period: float  # structure: wavelength of the warp, pixels
    mode: str  # consistency: "color", "blur" or "noise"
    direction: np.ndarray  # consistency: sign of the colour cast per channel
    noise: np.ndarray  # consistency: unit blotch field (smooth, a few pixels across), scaled by severity

    @classmethod
    def draw(cls, size: int, rng) -> "Defects":
        return cls(
            shift=(int(rng.choice([-1, 1])), int(rng.choice([-1, 1]))),
            period=float(rng.uniform(6, 12)),
            mode=str(rng.choice(["color", "blur", "noise"])),
            direction=rng.choice([-1.0, 1.0], size=3).astype(np.float32),
            noise=blotches(size, rng),
        )


def blotches(size: int, rng, cell: int = 8) -> np.ndarray:
    """Unit-variance noise that varies over ``cell`` pixels: mottling a viewer sees at a glance.

    Per-pixel noise of the same strength is averaged away by a downscaled view (the judge's
    image patches), much as a viewer at arm's length does not see film grain.
    """
    coarse = rng.normal(0, 1, (3, size // cell + 1, size // cell + 1)).astype(np.float32)
    smooth = np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in coarse], axis=-1)
    return smooth / smooth.std()


def degrade_structure(a: np.ndarray, mask: np.ndarray, s: float, defects: Defects) -> np.ndarray:
    """Shift and warp the region's content so lines break where they cross the mask edge."""
    if s <= 0:
        return a
    size = a.shape[0]
    shift = np.array(defects.shift) * int(round(s * size * 0.18))
    warped = np.roll(a, tuple(shift), axis=(0, 1))
    amp = s * size * 0.08
    for y in range(size):
        warped[y] = np.roll(warped[y], int(round(amp * np.sin(2 * np.pi * y / defects.period))), axis=0)
    out = a.copy()
    out[mask] = warped[mask]
    return out


def degrade_consistency(a: np.ndarray, mask: np.ndarray, s: float, defects: Defects) -> np.ndarray:
    """Make the region disagree with its surroundings: a colour cast, blur or noise."""
    if s <= 0:
        return a
    if defects.mode == "color":
        region = a + defects.direction * 0.45 * s
    elif defects.mode == "blur":  # soft and hazy, as weak fills often are: detail and contrast both go
        region = _to_arr(_to_img(a).filter(ImageFilter.GaussianBlur(radius=float(1.0 + 3.0 * s))))
        region = region + (0.85 - region) * 0.6 * s  # texture loss alone is lost at a glance; the haze is not
    else:  # blotchy: mottled colour over the region
        region = a + defects.noise * 0.2 * s
    out = a.copy()
    out[mask] = region[mask]
    return np.clip(out, 0, 1)


def degrade_aesthetics(a: np.ndarray, s: float) -> np.ndarray:
    """Global loss of contrast and saturation, then JPEG compression damage.

    Milder than the regional defects: a global change is easy to see, and a strong one would
    wash out the regional differences the other dimensions are judged on.
    """
    if s <= 0:
        return a
    gray = a.mean(axis=2, keepdims=True)
    a = a + (gray - a) * 0.5 * s  # desaturate
    a = a.mean() + (a - a.mean()) * (1 - 0.3 * s)  # flatten contrast
    buf = io.BytesIO()
    _to_img(a).save(buf, format="JPEG", quality=int(round(90 - 45 * s)))
    return _to_arr(Image.open(buf))


def visible_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference of two images over the mask after a slight blur.

    The blur discounts changes a viewer does not see, such as a stationary texture (gravel,
    grass) shifted by a few pixels.
    """
    blur = lambda x: _to_arr(_to_img(x).filter(ImageFilter.GaussianBlur(radius=1.5)))  # noqa: E731
    return float(np.abs(blur(a) - blur(b))[mask].mean())


def ghost(clean: np.ndarray, with_object: np.ndarray, s: float) -> np.ndarray:
    """Removal leftovers: blend the object back in with opacity growing with severity."""
    return clean + (with_object - clean) * 0.85 * s


def severities(dims: tuple[str, ...], n: int, tie_probability: float, rng) -> dict[str, np.ndarray]:
    """Per dimension, one severity per candidate: evenly spaced levels, or a near-tie."""
    out = {}
    for d in dims:
        if rng.random() < tie_probability:
            out[d] = np.clip(rng.uniform(0.0, 0.7) + rng.uniform(-0.03, 0.03, n), 0, 1)
        else:
            out[d] = rng.permutation(np.linspace(0.0, 1.0, n))
    return out


def labels_from(sev: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    labels = {}
    for d, s in sev.items():
        if s.max() - s.min() >= TIE_MARGIN:
            labels[d] = {"best": int(s.argmin()), "worst": int(s.argmax())}
    return labels


# ----------------------------------------------------------------------------- inputs


@dataclass
class Content:
    """What the prompt asks for in the region, and how to contradict it by degree."""

    kind: str  # "object", "text", or "none" (the prompt was ignored)
    color: str = ""
    shape: str = ""
    word: str = ""

    def prompt(self) -> str:
        return f'the text "{self.word}"' if self.kind == "text" else f"a {self.color} {self.shape}"

    def variant(self, s: float, ignored_at_worst: bool, rng) -> "Content":
        """Severity 0: as prompted; higher severities contradict more of it.

        At the top level the content is either fully contradicted or, with
        ``ignored_at_worst``, left out: a fill model's most common text-alignment failure.
        """
        level = int(round(s * 3))
        if level == 3 and ignored_at_worst:
            return Content("none")
        if self.kind == "text":
            word = list(self.word)
            if level == 3:
                return Content("text", word=str(rng.choice([w for w in WORDS if w != self.word])))
            for i in rng.choice(len(word), size=min(level, len(word)), replace=False):
                word[i] = chr(ord("A") + (ord(word[i]) - ord("A") + int(rng.integers(1, 26))) % 26)
            return Content("text", word="".join(word))
        other_color = str(rng.choice([c for c in COLORS if c != self.color]))
        other_shape = str(rng.choice([x for x in SHAPES if x != self.shape]))
        color = self.color if level in (0, 1) else other_color
        shape = self.shape if level in (0, 2) else other_shape
        return Content("object", color=color, shape=shape)

    def draw(self, base: np.ndarray, box) -> np.ndarray:
        if self.kind == "none":
            return base
        img = _to_img(base)
        if self.kind == "text":
            draw_text(img, box, self.word)
        else:
            draw_object(img, box, self.shape, COLORS[self.color])
        return _to_arr(img)


def make_input(index: int, task: str, cfg: SynthesizeConfig):
    """One input: (record without paths, {name: PIL image})."""
    rng = np.random.default_rng([cfg.seed, index])
    size = cfg.resolution
    clean = crop_photo(rng, size)
    tags: list[str] = []
    content: Content | None = None
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
        with_object = _to_arr(obj)
        mask[max(0, top - 2) : top + h + 2, max(0, left - 2) : left + w + 2] = True
        source, prompt = with_object, None
    else:
        mask = fill_mask(size, rng) if task == "fill" else border_mask(size, rng)
        wants_prompt = task == "fill" or rng.random() < cfg.extend_prompt_fraction
        if wants_prompt:
            if task == "fill" and rng.random() < cfg.text_rendering_fraction:
                content = Content("text", word=str(rng.choice(WORDS)))
                tags.append(tasks.TEXT_RENDERING)
            else:
                content = Content("object", color=str(rng.choice(list(COLORS))), shape=str(rng.choice(SHAPES)))
        prompt = content.prompt() if content else None
        source = np.where(mask[..., None], 0.5, clean).astype(np.float32)  # what a user hands in
    dims = tasks.dimensions_for(task, prompt)
    sev = severities(dims, cfg.num_candidates, cfg.tie_probability, rng)
    box = box_in(widest_strip(mask) if task == "extend" else mask, 0.75 if content and content.kind == "text" else 0.6, rng) if content else None
    defects = Defects.draw(size, rng)
    ignored_at_worst = bool(rng.random() < IGNORED_PROMPT_FRACTION)
    variants = [content.variant(s, ignored_at_worst, rng) for s in sev["text_alignment"]] if content else []

    def alone(dim: str, c: int) -> np.ndarray:
        """Candidate c's defect on one dimension only, on the clean photo."""
        s = sev[dim][c]
        if dim == "structure":
            return degrade_structure(clean, mask, s, defects)
        if dim == "consistency":
            return degrade_consistency(clean, mask, s, defects)
        if dim == "text_alignment":
            return variants[c].draw(clean, box)
        if dim == "removal_quality":
            return ghost(clean, with_object, s)
        return degrade_aesthetics(clean, s)

    candidates = []
    for c in range(cfg.num_candidates):
        a = clean.copy()
        if "consistency" in sev:  # the fill's background disagrees with the surroundings
            a = degrade_consistency(a, mask, sev["consistency"][c], defects)
        if content is not None:  # the asked-for content keeps its colour: text alignment stays legible
            a = variants[c].draw(a, box)
        if "structure" in sev:  # broken structure deforms everything in the region, content included
            a = degrade_structure(a, mask, sev["structure"][c], defects)
        if "removal_quality" in sev:
            a = ghost(clean, with_object, sev["removal_quality"][c])
        a = np.where(mask[..., None], a, clean)  # a fill keeps the known pixels
        if "aesthetics" in sev:
            a = degrade_aesthetics(a, sev["aesthetics"][c])
        candidates.append(_to_img(a))
    labels = labels_from(sev)
    for dim, pair in list(labels.items()):  # annotators skip regional differences nobody can see
        if dim != "aesthetics" and visible_difference(alone(dim, pair["best"]), alone(dim, pair["worst"]), mask) < VISIBLE_MIN:
            del labels[dim]
    record = {"task": task, "prompt": prompt, "tags": tags, "labels": labels}
    images = {"source": _to_img(source), "mask": Image.fromarray(mask.astype(np.uint8) * 255, "L")}
    images.update({f"cand_{i}": im for i, im in enumerate(candidates)})
    return record, images


def input_id(task: str, index: int) -> str:
    return f"{task}-{index:06d}"


def _write_input(args) -> str:
    index, task, cfg, root = args
    record, images = make_input(index, task, cfg)
    rid = input_id(task, index)
    folder = Path(root) / "images" / rid
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, img in images.items():
        img.save(folder / f"{name}.png", compress_level=1)
        paths[name] = f"images/{rid}/{name}.png"
    record = {
        "id": rid,
        **record,
        "source": paths["source"],
        "mask": paths["mask"],
        "candidates": [paths[f"cand_{i}"] for i in range(cfg.num_candidates)],
    }
    return json.dumps(record, sort_keys=True)


def synthesize(root: Path, cfg: SynthesizeConfig) -> int:
    """Write ``records.jsonl`` and images under ``root``; return the number of records."""
    from onereward.data.corruptions import append_bad_records

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(i, task, cfg, str(root)) for i, task in enumerate(task_plan(cfg))]
    with open(root / RECORDS_FILE, "w") as out:
        if cfg.workers > 1:
            with multiprocessing.get_context("fork").Pool(cfg.workers) as pool:
                lines = pool.imap(_write_input, jobs, chunksize=8)
                for line in tqdm(lines, total=len(jobs), desc="synthesize", unit="input"):
                    out.write(line + "\n")
        else:
            for job in tqdm(jobs, desc="synthesize", unit="input"):
                out.write(_write_input(job) + "\n")
    return len(jobs) + append_bad_records(root, cfg.bad_records)
