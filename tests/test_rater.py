"""The scorers: the ground-truth rater ranks a good result above each failure, on real photos;
the checks (masked PSNR/SSIM) rank the ground truth first; the registry; the judge adapter."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from onereward import tasks as registry
from onereward.data import scenes
from onereward.scoring import PointwiseScorer, ScoreOutput, available_scorers, build_scorer, register_scorer
from onereward.scoring.base import scorer_class

SIZE = 64
MARGIN = 0.1
"""How far above a failure the good result must score on the dimension the failure hurts."""


def tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)


def to_img(a: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8))


def to_arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB")).astype(np.float32) / 255.0


def blur(a: np.ndarray, radius: float) -> np.ndarray:
    return to_arr(to_img(a).filter(ImageFilter.GaussianBlur(radius)))


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    to_img(a).save(buf, format="JPEG", quality=quality)
    return to_arr(Image.open(buf))


def ghost(clean: np.ndarray, with_object: np.ndarray, s: float) -> np.ndarray:
    """A removal that leaves the object behind at opacity ``s``."""
    return clean + (with_object - clean) * s


def textured_photos(n: int) -> list[np.ndarray]:
    """The first ``n`` crops (as ``crop_photo`` makes them) with visible texture: a blur or a
    shift must change a photo for a rater to see it."""
    out, seed = [], 0
    while len(out) < n:
        crop = scenes.crop_photo(np.random.default_rng([7, seed]), SIZE)
        y = crop.mean(axis=2)
        if y.std() > 0.1 and np.abs(np.diff(y, axis=1)).mean() > 0.03:
            out.append(crop)
        seed += 1
    return out


PHOTOS = textured_photos(4)
CONTENTS = [
    scenes.Content("object", color="red", shape="circle"),
    scenes.Content("object", color="blue", shape="square"),
    scenes.Content("object", color="yellow", shape="triangle"),
    scenes.Content("text", word="CAT"),
]


def make_input(i: int, task: str, with_content: bool = True, content_in_truth: bool = False) -> dict:
    """One input: photo, ground truth, mask, source, content dict, and the good result.

    ``content_in_truth``: the ground truth shows the prompted content in its box (as the
    embedded default writes it) rather than the plain photo; the rater must work either way.
    """
    rng = np.random.default_rng([11, i, len(task)])
    photo = PHOTOS[i % len(PHOTOS)]
    content, gt, good = None, photo, photo
    if task == "removal":
        mask = np.zeros((SIZE, SIZE), bool)
        mask[18:44, 20:46] = True
        source = scenes.Content("object", color="green", shape="square").draw(photo, (22, 20, 43, 41))
    else:
        mask = scenes.fill_mask(SIZE, rng) if task == "fill" else scenes.border_mask(SIZE, rng)
        source = np.where(mask[..., None], 0.5, photo)
        if with_content:
            c = CONTENTS[i % len(CONTENTS)]
            box = scenes.box_in(scenes.widest_strip(mask) if task == "extend" else mask, 0.75 if c.kind == "text" else 0.6, rng)
            content = {"kind": c.kind, "color": c.color, "shape": c.shape, "word": c.word, "box": list(box)}
            good = in_region(c.draw(photo, box), photo, mask)
            gt = c.draw(photo, box) if content_in_truth else photo
    return {"photo": photo, "gt": gt, "mask": mask, "source": source, "content": content, "good": good, "task": task}


def in_region(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``a`` in the generated region, ``b`` on the known pixels, as a fill composites."""
    return np.where(mask[..., None], a, b).astype(np.float32)


def failures(inp: dict) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """name -> (image, dimensions it must score lower on than the good result)."""
    photo, good, mask, task = inp["photo"], inp["good"], inp["mask"], inp["task"]
    region = ("removal_quality",) if task == "removal" else ("consistency",)
    out = {
        "flat near-white region": (in_region(np.full_like(good, 0.93), good, mask),
                                   ("removal_quality",) if task == "removal" else ("consistency", "structure", "aesthetics")),
        "colour-shifted region": (in_region(np.clip(good + np.array([0.15, -0.1, 0.12]), 0, 1), good, mask), region),
        "regenerated known region": (in_region(good, blur(good, 1.5), mask), tuple(registry.dimensions_for(task, "p" if inp["content"] else None))),
        "shifted region (broken structure)": (in_region(np.roll(good, (5, 6), axis=(0, 1)), good, mask),
                                              ("removal_quality",) if task == "removal" else ("structure",)),
    }
    if task != "removal":
        out["blurred region"] = (in_region(blur(good, 2.0), good, mask), ("aesthetics",))
    else:
        out["object left in place"] = (inp["source"], ("removal_quality",))
        out["object half removed"] = (ghost(photo, inp["source"], 0.5), ("removal_quality",))
    c = inp["content"]
    if c is not None:
        out["prompted content missing"] = (photo, ("text_alignment",))
        if c["kind"] == "object":
            other_color = "black" if c["color"] != "black" else "white"
            other_shape = scenes.SHAPES[(scenes.SHAPES.index(c["shape"]) + 1) % len(scenes.SHAPES)]
            wrong = {"wrong colour": scenes.Content("object", color=other_color, shape=c["shape"]),
                     "wrong shape": scenes.Content("object", color=c["color"], shape=other_shape)}
        else:
            wrong = {"wrong word": scenes.Content("text", word="SUN")}
        for name, w in wrong.items():
            out[name] = (in_region(w.draw(photo, c["box"]), photo, mask), ("text_alignment",))
    return out


def fields(inp: dict, n: int) -> dict:
    rep = lambda a: tensor(a)[None].expand(n, -1, -1, -1)  # noqa: E731
    return {
        "ground_truth": rep(inp["gt"]),
        "mask": torch.from_numpy(inp["mask"]).float()[None, None].expand(n, -1, -1, -1),
        "source": rep(inp["source"]),
        "task": [inp["task"]] * n,
        "content": [inp["content"]] * n,
    }


INPUTS = [make_input(i, t) for i in range(4) for t in ("fill", "extend", "removal")] + [
    make_input(i, "extend", with_content=False) for i in range(2)
] + [make_input(i, t, content_in_truth=True) for i in range(4) for t in ("fill", "extend")]


@pytest.fixture(scope="module")
def rater():
    return build_scorer("rater")


@pytest.mark.parametrize("good", ["exact", "jpeg75"])
def test_good_result_ranks_above_every_failure_on_the_dimension_it_hurts(rater, good):
    """``exact``: the ground truth (with the prompted content drawn); ``jpeg75``: the same through
    JPEG at quality 75 in the region, a good result that is not pixel-exact."""
    problems, seen = [], set()
    for k, inp in enumerate(INPUTS):
        fails = failures(inp)
        ok = inp["good"] if good == "exact" else in_region(jpeg(inp["good"], 75), inp["photo"], inp["mask"])
        images = torch.stack([tensor(ok)] + [tensor(a) for a, _ in fails.values()])
        out = rater(images, **fields(inp, len(images)))
        for j, (name, (_, dims)) in enumerate(fails.items(), start=1):
            for d in dims:
                g, bad = float(out.scores[d][0]), float(out.scores[d][j])
                seen.add((name, d))
                if not g >= bad + MARGIN:
                    problems.append(f"input {k} ({inp['task']}): {name}: {d} good {g:.3f} vs {bad:.3f}")
    assert not problems, "\n".join(problems)
    # every failure kind of the issue was exercised on the dimension it hurts
    for name, d in [("flat near-white region", "aesthetics"), ("blurred region", "aesthetics"),
                    ("colour-shifted region", "consistency"), ("regenerated known region", "consistency"),
                    ("object left in place", "removal_quality"), ("wrong colour", "text_alignment"),
                    ("wrong shape", "text_alignment"), ("prompted content missing", "text_alignment"),
                    ("wrong word", "text_alignment"), ("shifted region (broken structure)", "structure")]:
        assert (name, d) in seen


@pytest.mark.parametrize("dimension,make", [
    ("aesthetics", lambda inp, s: in_region(blur(inp["good"], 3 * s), inp["good"], inp["mask"])),
    ("consistency", lambda inp, s: in_region(np.clip(inp["good"] + 0.3 * s, 0, 1), inp["good"], inp["mask"])),
    ("structure", lambda inp, s: in_region(np.roll(inp["good"], (round(3 * s), round(3 * s)), axis=(0, 1)), inp["good"], inp["mask"])),
    ("removal_quality", lambda inp, s: ghost(inp["gt"], inp["source"], s)),
])
def test_scores_fall_as_a_failure_grows(rater, dimension, make):
    """A graded failure (severity 1/3, 2/3, 1) scores lower at each step: near-ties mean near-equal."""
    for inp in INPUTS:
        if dimension not in registry.dimensions_for(inp["task"], "p" if inp["content"] else None):
            continue
        images = torch.stack([tensor(make(inp, s)) for s in (1 / 3, 2 / 3, 1.0)])
        v = rater(images, **fields(inp, 3)).scores[dimension]
        assert (v[:-1] > v[1:]).all(), (inp["task"], dimension, v.tolist())


def test_good_result_scores_near_one_and_scores_lie_in_unit_interval(rater):
    for inp in INPUTS:
        fails = failures(inp)
        images = torch.stack([tensor(inp["good"])] + [tensor(a) for a, _ in fails.values()])
        out = rater(images, **fields(inp, len(images)))
        for d in registry.get_task(inp["task"]).dimensions:
            v = out.scores[d]
            if d == "text_alignment" and inp["content"] is None:
                continue
            assert float(v[0]) > 0.95, (inp["task"], d, float(v[0]))
            assert ((v >= 0) & (v <= 1)).all()


def test_dimensions_outside_the_task_are_nan(rater):
    for inp in (INPUTS[0], INPUTS[2], INPUTS[-1]):  # fill with content, removal, extend without prompt
        out = rater(tensor(inp["good"])[None], **fields(inp, 1))
        applies = set(registry.dimensions_for(inp["task"], "a prompt" if inp["content"] else None))
        assert set(out.scores) == set(registry.DIMENSIONS)
        for d, v in out.scores.items():
            assert math.isnan(float(v[0])) == (d not in applies), (inp["task"], d)
        assert set(out.rows()[0]) == applies
        assert out.scorer == "rater"


def test_batch_of_mixed_inputs_scores_as_each_alone(rater):
    picks = [INPUTS[0], INPUTS[4], INPUTS[5], INPUTS[-1]]
    batch = {k: [] for k in ("images", "ground_truth", "mask", "source", "task", "content")}
    for inp in picks:
        f = fields(inp, 1)
        batch["images"].append(tensor(failures(inp)["colour-shifted region"][0]))
        for k in ("ground_truth", "mask", "source"):
            batch[k].append(f[k][0])
        batch["task"].append(inp["task"])
        batch["content"].append(inp["content"])
    stacked = {k: torch.stack(v) if k not in ("task", "content") else v for k, v in batch.items()}
    together = rater(stacked.pop("images"), **stacked)
    for i, inp in enumerate(picks):
        alone = rater(batch["images"][i][None], **fields(inp, 1))
        for d in registry.DIMENSIONS:
            torch.testing.assert_close(together.scores[d][i : i + 1], alone.scores[d], equal_nan=True)


def test_pasted_back_known_pixels_cost_nothing_and_regeneration_costs_every_dimension(rater):
    inp = INPUTS[0]
    regen = failures(inp)["regenerated known region"][0]
    out = rater(torch.stack([tensor(inp["good"]), tensor(regen)]), **fields(inp, 2))
    assert float(out.info["known_error"][0]) == 0.0
    assert float(out.info["known_error"][1]) > 0.01
    for d in registry.dimensions_for("fill", "a prompt"):
        assert float(out.scores[d][1]) < float(out.scores[d][0]) - MARGIN


def test_checks_rank_the_ground_truth_first():
    psnr, ssim = build_scorer("masked_psnr"), build_scorer("masked_ssim")
    for inp in INPUTS:
        fails = {k: v for k, v in failures(inp).items() if k != "regenerated known region"}  # region-only measures
        images = torch.stack([tensor(inp["good"])] + [tensor(a) for a, _ in fails.values()])
        f = fields(inp, len(images))
        for scorer in (psnr, ssim):
            v = scorer(images, **f).scores[scorer.name]
            assert torch.isfinite(v).all()
            for j, name in enumerate(fails, start=1):
                if "content" in name or name.startswith("wrong"):  # only the content box differs: not measured
                    torch.testing.assert_close(v[j], v[0])
                else:
                    assert float(v[0]) > float(v[j]), (scorer.name, inp["task"], name)
    inp = INPUTS[2]
    assert float(psnr(tensor(inp["good"])[None], **fields(inp, 1)).scores["masked_psnr"][0]) == 100.0
    assert float(ssim(tensor(inp["good"])[None], **fields(inp, 1)).scores["masked_ssim"][0]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- interface and registry


def test_registry_lists_builtins_and_names_them_on_unknown():
    assert available_scorers() == {"judge": "pairwise", "masked_psnr": "pointwise", "masked_ssim": "pointwise",
                                   "rater": "pointwise"}
    with pytest.raises(KeyError, match=r"unknown scorer 'ratr'; available: \['judge', 'masked_psnr', 'masked_ssim', 'rater'\]"):
        build_scorer("ratr")
    with pytest.raises(KeyError, match="could not be imported"):
        build_scorer("onereward.scoring.nothing.Here")
    assert scorer_class("onereward.scoring.rater.Rater") is scorer_class("rater")


def test_a_new_scorer_is_one_registry_entry():
    @register_scorer("test_mean_brightness")
    class MeanBrightness(PointwiseScorer):
        required_fields = ("mask",)

        def score(self, images, *, mask):
            return ScoreOutput({"brightness": images.mean((1, 2, 3))}, scorer=self.name)

    try:
        out = build_scorer("test_mean_brightness")(torch.ones(2, 3, 8, 8), mask=torch.ones(2, 1, 8, 8))
        assert out.scorer == "test_mean_brightness" and out.scores["brightness"].tolist() == [1.0, 1.0]
        assert available_scorers()["test_mean_brightness"] == "pointwise"
        with pytest.raises(ValueError, match="taken by"):
            register_scorer("rater")(MeanBrightness)
        with pytest.raises(TypeError, match="not a PointwiseScorer or PairwiseScorer"):
            register_scorer("not_a_scorer")(dict)
    finally:
        from onereward.scoring import base

        base._REGISTRY.pop("test_mean_brightness", None)


def test_bad_input_gives_one_line_errors(rater):
    inp = INPUTS[0]
    f = fields(inp, 1)
    img = tensor(inp["good"])[None]
    with pytest.raises(ValueError, match=r"scorer 'rater' needs fields \['mask'\]"):
        rater(img, **{k: v for k, v in f.items() if k != "mask"})
    with pytest.raises(ValueError, match=r"does not take fields \['prompt'\]"):
        rater(img, prompt=["x"], **f)
    with pytest.raises(ValueError, match=r"field 'task' has 2 entries for 1 images"):
        rater(img, **{**f, "task": ["fill", "fill"]})
    with pytest.raises(ValueError, match=r"mask must be \[1, 1, 64, 64\]"):
        rater(img, **{**f, "mask": f["mask"][:, :, :32]})
    with pytest.raises(ValueError, match=r"task\[0\] is 'paint'"):
        rater(img, **{**f, "task": ["paint"]})
    with pytest.raises(ValueError, match=r"content\[0\]: unknown colour 'mauve'"):
        rater(img, **{**f, "content": [{**inp["content"], "color": "mauve"}]})
    with pytest.raises(ValueError, match=r"rater.keep_scale must be positive"):
        build_scorer("rater", keep_scale=0)
    assert "\n" not in str(pytest.raises(ValueError, rater, img).value)


# ----------------------------------------------------------------------------- the judge adapter


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    from onereward.judge.model import Judge, JudgeMeta
    from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge

    path = tmp_path_factory.mktemp("judge")
    save_tiny_judge(TinyJudgeConfig(seed=0), path)
    JudgeMeta(resolution=56).write(path)
    return Judge.load(path)


def test_judge_adapter_wraps_the_reward_and_the_evaluation_definitions(judge):
    from onereward.judge.queries import render_query
    from onereward.rl.rollout import judge_rewards

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    task, prompt = ["fill", "removal", "fill"], ["a red circle", None, "a blue square"]
    reward = build_scorer("judge", judge=judge, symmetric=False)(a, b, task=task, prompt=prompt)
    sym = build_scorer("judge", judge=judge)(a, b, task=task, prompt=prompt)
    assert reward.scorer == sym.scorer == "judge"

    fills = judge_rewards(judge, a[[0, 2]], b[[0, 2]], "fill", [prompt[0], prompt[2]])
    for s, d, p in zip(fills.sample, fills.dims, fills.p_yes.tolist()):
        assert float(reward.scores[d][[0, 2][s]].detach()) == pytest.approx(p, abs=1e-6)
    q = render_query("removal", "removal_quality")
    expected = judge.symmetric_score(a[1:2], b[1:2], [q])
    assert float(sym.scores["removal_quality"][1]) == pytest.approx(float(expected[0]), abs=1e-6)
    for out in (reward, sym):
        assert math.isnan(float(out.scores["removal_quality"][0].detach()))
        assert all(math.isnan(float(out.scores[d][1].detach())) for d in registry.TASKS["fill"].dimensions)


def test_judge_adapter_reward_mode_keeps_the_gradient(judge):
    a = torch.rand(1, 3, 64, 64, requires_grad=True)
    out = build_scorer("judge", judge=judge, symmetric=False)(a, torch.rand(1, 3, 64, 64), task=["extend"], prompt=[None])
    out.scores["aesthetics"].sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert math.isnan(float(out.scores["text_alignment"][0].detach()))
