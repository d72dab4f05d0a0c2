"""The embedded default preference set, made the way the paper makes its own.

Inputs are crops of real photos (scikit-image, scikit-learn) with a mask per task and, for
prompted inputs, an asked-for object or word. Each input's ``num_candidates`` candidates come
from the base generator (stage ``base_model``) with varied sampling settings: steps, true-CFG
scale and negative prompt, with seeded noise. An annotator marks the best
and the worst candidate per dimension, and leaves a dimension out when the candidates hardly
differ on it. The annotator is the ground-truth rater (``onereward.scoring.rater``), which sees
what human annotators would know: the original photo, the clean background under a removed
object and the prompted content.

Written in the raw annotation format of docs/data-format.md, with each input's ground truth
(``ground_truth``, ``content``) for evaluation.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from onereward import tasks
from onereward.data.defects import DEFECTS, spoil
from onereward.data.records import RECORDS_FILE
from onereward.data.scenes import Scene, _to_img, make_scene
from onereward.numerics import worker_pool



@dataclass(frozen=True)
class CandidateSampling:
    """How one input's candidates vary (the paper: steps, negative prompt, CFG scale, noise strength).

    Each candidate draws one value of each field independently. Noise strength is not varied:
    every candidate starts from pure noise, as RL rollouts and evaluation do."""

    steps: tuple[int, ...] = (4, 8, 16)
    """Euler steps of the flow-matching schedule."""
    true_cfg: tuple[float, ...] = (1.0, 2.0, 4.0)
    """True classifier-free guidance scales (1.0: no negative pass)."""
    negative_prompts: tuple[str, ...] = ("nsfw", "blurry, low quality, distorted")
    """Prompts of the negative pass when the scale is above 1."""


@dataclass(frozen=True)
class DefectCandidates:
    """Hand-made defect candidates in the mix (``onereward.data.defects``)."""

    share: float = 0.0
    """Share of inputs whose last candidate is another of its candidates with a defect in the
    region instead of a further generator sample (0: every candidate from the generator)."""
    kinds: tuple[str, ...] = ("flat", "hazy", "blur", "color_cast")
    """Defects drawn from, uniformly (names in ``onereward.data.defects.DEFECTS``)."""


@dataclass(frozen=True)
class Setting:
    """The sampling settings of one candidate."""

    steps: int
    true_cfg: float
    negative_prompt: str


@dataclass(frozen=True)
class SynthesizeConfig:
    """params.yaml `synthesize`."""

    seed: int = 0
    """Every input draws from its own generator seeded by (seed, index): order- and worker-independent."""
    num_inputs: int = 600
    """Inputs over all tasks."""
    task_mix: dict[str, float] = field(default_factory=lambda: {"fill": 0.5, "extend": 0.25, "removal": 0.25})
    """Share of inputs per task."""
    resolution: int = 64
    """Square image side in pixels; a multiple of 16 for FLUX packing."""
    num_candidates: int = 4
    """Candidates per input (the paper uses four)."""
    text_rendering_fraction: float = 0.25
    """Share of fill inputs whose prompt asks for text."""
    extend_prompt_fraction: float = 0.5
    """Share of extend inputs with a user prompt."""
    sampling: CandidateSampling = field(default_factory=CandidateSampling)
    """How the candidates' sampling settings vary."""
    defects: DefectCandidates = field(default_factory=DefectCandidates)
    """Hand-made defect candidates mixed in."""
    tie_margin: float = 0.05
    """A dimension whose best and worst candidate differ by less than this rater score is left
    out for the input ("no clear difference"), as annotators skip near-ties."""
    batch_size: int = 64
    """Candidates generated per batch (candidates of one sampling setting)."""
    bad_records: int = 0
    """Deliberately broken records appended (one per reason, cycling) to exercise quarantine."""
    workers: int = 1
    """Processes generating candidates and inputs; the output bytes do not depend on it."""

    def __post_init__(self):
        if self.resolution % 16:
            raise ValueError(f"synthesize.resolution must be a multiple of 16, got {self.resolution}")
        if set(self.task_mix) - set(tasks.TASKS):
            raise ValueError(f"synthesize.task_mix names unknown tasks: {sorted(set(self.task_mix) - set(tasks.TASKS))}")
        if self.num_candidates < 2:
            raise ValueError("synthesize.num_candidates must be at least 2")
        if not (self.sampling.steps and self.sampling.true_cfg and self.sampling.negative_prompts):
            raise ValueError("synthesize.sampling: every list needs at least one value")
        unknown = sorted(set(self.defects.kinds) - set(DEFECTS))
        if unknown or not self.defects.kinds or not 0 <= self.defects.share <= 1:
            raise ValueError(f"synthesize.defects: share must be in [0, 1] and kinds among {sorted(DEFECTS)}, "
                             f"got share {self.defects.share}, kinds {list(self.defects.kinds)}")


def task_plan(cfg: SynthesizeConfig) -> list[str]:
    """The task of every input index: exact counts per task (largest remainder)."""
    total = sum(cfg.task_mix.values())
    shares = {t: cfg.task_mix[t] / total * cfg.num_inputs for t in cfg.task_mix}
    counts = {t: int(s) for t, s in shares.items()}
    for t in sorted(shares, key=lambda t: counts[t] - shares[t])[: cfg.num_inputs - sum(counts.values())]:
        counts[t] += 1
    return [t for t in cfg.task_mix for _ in range(counts[t])]


# ----------------------------------------------------------------------------- candidates


@dataclass
class Input(Scene):
    """A scene with the sampling settings of its candidates."""

    settings: list[Setting] = field(default_factory=list)
    defect: tuple[str, int] | None = None
    """(defect, candidate it spoils): the last candidate is made by hand, not sampled."""

    def sampled(self) -> int:
        """How many of the candidates the generator makes."""
        return len(self.settings) - (self.defect is not None)


def make_input(index: int, task: str, cfg: SynthesizeConfig) -> Input:
    scene = make_scene(index, task, cfg.seed, cfg.resolution, cfg.text_rendering_fraction, cfg.extend_prompt_fraction)
    rng = np.random.default_rng([cfg.seed, index, 1])
    s = cfg.sampling
    settings = [
        Setting(int(rng.choice(s.steps)), float(rng.choice(s.true_cfg)), str(rng.choice(s.negative_prompts)))
        for _ in range(cfg.num_candidates)
    ]
    d = cfg.defects
    defect = None
    if rng.random() < d.share:
        defect = (str(rng.choice(d.kinds)), int(rng.integers(cfg.num_candidates - 1)))
    return Input(**scene.__dict__, settings=settings, defect=defect)


def _batches(inputs: list[Input], batch_size: int) -> list[list[tuple[int, int]]]:
    """(input, candidate) pairs grouped by sampling setting, in a fixed order, cut into batches."""
    by_setting: dict[Setting, list[tuple[int, int]]] = {}
    for i, inp in enumerate(inputs):
        for c, st in enumerate(inp.settings[: inp.sampled()]):
            by_setting.setdefault(st, []).append((i, c))
    out = []
    for st in sorted(by_setting, key=lambda x: (x.steps, x.true_cfg, x.negative_prompt)):
        pairs = by_setting[st]
        out += [pairs[k : k + batch_size] for k in range(0, len(pairs), batch_size)]
    return out


_WORKER: dict = {}


def _init_worker(generator_path: str, paste_known: bool) -> None:
    from onereward.policy.adapter import FillPolicy
    from onereward.policy.known import GenerationConfig

    _WORKER["policy"] = FillPolicy.load(generator_path)
    _WORKER["generation"] = GenerationConfig(paste_known=paste_known)


def _generate_batch(job) -> np.ndarray:
    """One batch of candidates as uint8 HxWx3 images (what the PNG files hold)."""
    import torch

    from onereward.policy.inference import InferenceConfig, generate
    from onereward.policy.known import finish

    task, source, mask, prompts, seed, st = job
    images = torch.from_numpy(source).permute(0, 3, 1, 2).float()
    masks = torch.from_numpy(mask[:, None].astype(np.float32))
    cfg = InferenceConfig(negative_prompt=st.negative_prompt, true_cfg=st.true_cfg, num_inference_steps=st.steps,
                          seed=seed)
    # one generator per batch: the VAE then encodes the batch at once (a third faster than per image)
    out = generate(_WORKER["policy"], images, masks, prompts, task, cfg)
    out = finish(out.clamp(0, 1), images, masks, _WORKER["generation"])
    return (out.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def generate_candidates(inputs: list[Input], cfg: SynthesizeConfig, generator_path: str, paste_known: bool) -> np.ndarray:
    """``[N, C, H, W, 3]`` uint8: every candidate of every input, from the base generator."""
    batches = _batches(inputs, cfg.batch_size)
    jobs = []
    for b, pairs in enumerate(batches):  # the batches are fixed by the plan, so their noise is too
        ins = [inputs[i] for i, _ in pairs]
        jobs.append((
            [x.task for x in ins], np.stack([x.source for x in ins]), np.stack([x.mask for x in ins]),
            [x.prompt for x in ins], int(np.random.default_rng([cfg.seed, 7, b]).integers(2**31 - 1)),
            ins[0].settings[pairs[0][1]],
        ))
    size = cfg.resolution
    out = np.zeros((len(inputs), cfg.num_candidates, size, size, 3), np.uint8)
    total = sum(len(p) for p in batches)
    with tqdm(total=total, desc="synthesize: candidates", unit="image") as bar:
        # Always in fresh worker processes, even with one worker, pinned as this process is
        # (params.numerics), so the bits never depend on the caller's torch.
        with worker_pool(cfg.workers, _init_worker, (generator_path, paste_known)) as pool:
            for pairs, imgs in zip(batches, pool.imap(_generate_batch, jobs)):
                for (i, c), img in zip(pairs, imgs):
                    out[i, c] = img
                bar.update(len(pairs))
    for i, inp in enumerate(inputs):
        if inp.defect is not None:
            kind, of = inp.defect
            rng = np.random.default_rng([cfg.seed, i, 2])
            out[i, -1] = spoil(kind, out[i, of], inp.mask > 0.5, rng)
    return out


# ----------------------------------------------------------------------------- annotation


def rater_scores(inputs: list[Input], candidates: np.ndarray, batch_size: int = 256) -> list[dict[str, np.ndarray]]:
    """Per input, per judged dimension, the rater's score of every candidate."""
    import torch

    from onereward.scoring import build_scorer

    rater = build_scorer("rater")
    n, c = candidates.shape[:2]
    flat = [(i, k) for i in range(n) for k in range(c)]
    scores: list[dict[str, np.ndarray]] = [
        {d: np.zeros(c, np.float64) for d in tasks.dimensions_for(x.task, x.prompt)} for x in inputs
    ]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()  # noqa: E731
    for s in range(0, len(flat), batch_size):
        part = flat[s : s + batch_size]
        ins = [inputs[i] for i, _ in part]
        out = rater(
            torch.from_numpy(np.stack([candidates[i, k] for i, k in part])).permute(0, 3, 1, 2).float() / 255.0,
            ground_truth=t(np.stack([x.ground_truth for x in ins])),
            mask=torch.from_numpy(np.stack([x.mask for x in ins])[:, None].astype(np.float32)),
            source=t(np.stack([x.source for x in ins])),
            task=[x.task for x in ins],
            content=[x.content for x in ins],
        )
        for j, (i, k) in enumerate(part):
            for d in scores[i]:
                scores[i][d][k] = float(out.scores[d][j])
    return scores


def labels_from(scores: dict[str, np.ndarray], tie_margin: float) -> dict[str, dict[str, int]]:
    """Best and worst candidate per dimension; near-ties (spread below ``tie_margin``) left out."""
    labels = {}
    for d, s in scores.items():
        if np.isfinite(s).all() and s.max() - s.min() >= tie_margin:
            labels[d] = {"best": int(s.argmax()), "worst": int(s.argmin())}
    return labels


# ----------------------------------------------------------------------------- writing


IMAGES_ARCHIVE = "images.zip"
"""Every good input's images, as members of one zip archive (docs/data-format.md): DVC checks
one file where it would stat and look up 17,000, which made a no-op `dvc repro` take seconds."""


def _write_input(inp: Input, candidates: np.ndarray, labels: dict, archive: zipfile.ZipFile) -> str:
    """Write one input's images into ``archive`` (stored: PNG is compressed already; fixed
    timestamps, so the archive's bytes depend on the images alone) and return its record line."""
    images = {"source": _to_img(inp.source), "mask": Image.fromarray(inp.mask.astype(np.uint8) * 255, "L"),
              "ground_truth": _to_img(inp.ground_truth)}
    images.update({f"cand_{k}": Image.fromarray(img) for k, img in enumerate(candidates)})
    paths = {}
    for name, img in images.items():
        member = f"{inp.id}_{name}.png"
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        entry = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
        entry.external_attr = 0o644 << 16
        archive.writestr(entry, buf.getvalue(), compress_type=zipfile.ZIP_STORED)
        paths[name] = f"{IMAGES_ARCHIVE}/{member}"
    record = {
        "id": inp.id, "task": inp.task, "prompt": inp.prompt, "tags": inp.tags, "labels": labels,
        "source": paths["source"], "mask": paths["mask"], "ground_truth": paths["ground_truth"],
        "candidates": [paths[f"cand_{k}"] for k in range(len(candidates))],
    }
    if inp.content is not None:
        record["content"] = inp.content
    return json.dumps(record, sort_keys=True)


def _make(args) -> Input:
    return make_input(*args)


def synthesize(root: Path, cfg: SynthesizeConfig, generator_path: str, paste_known: bool = True) -> int:
    """Write ``records.jsonl`` and images under ``root`` with candidates from the generator at
    ``generator_path`` (a FLUX.1-Fill pipeline folder); return the number of records."""
    from onereward.data.corruptions import append_bad_records

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = [(i, task, cfg) for i, task in enumerate(task_plan(cfg))]
    inputs = [_make(job) for job in tqdm(plan, desc="synthesize: inputs", unit="input")]
    candidates = generate_candidates(inputs, cfg, generator_path, paste_known)
    scores = rater_scores(inputs, candidates)
    with open(root / RECORDS_FILE, "w") as out, zipfile.ZipFile(root / IMAGES_ARCHIVE, "w") as archive:
        for i, x in enumerate(tqdm(inputs, desc="synthesize: write", unit="input")):
            out.write(_write_input(x, candidates[i], labels_from(scores[i], cfg.tie_margin), archive) + "\n")
    return len(inputs) + append_bad_records(root, cfg.bad_records)
