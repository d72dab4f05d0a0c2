"""The synthesized labels follow from the pixels: a simple measurement agrees with them."""

import numpy as np
import pytest

from onereward import tasks
from onereward.data.synthetic import (
    VISIBLE_MIN,
    Content,
    Defects,
    SynthesizeConfig,
    crop_photo,
    degrade_consistency,
    labels_from,
    make_input,
    task_plan,
    visible_difference,
    widest_strip,
)


def _arr(img):
    return np.asarray(img).astype(np.float32) / 255


@pytest.fixture(scope="module")
def inputs():
    cfg = SynthesizeConfig(num_inputs=80, tie_probability=0.0)
    return [(task, *make_input(i, task, cfg)) for i, task in enumerate(task_plan(cfg))]


def test_task_plan_has_exact_counts():
    plan = task_plan(SynthesizeConfig(num_inputs=10))
    assert len(plan) == 10 and plan.count("fill") == 5 and plan.count("extend") + plan.count("removal") == 5


def test_without_ties_only_invisible_differences_go_unlabelled(inputs):
    judged = labelled = 0
    for task, record, images in inputs:
        dims = set(tasks.dimensions_for(task, record["prompt"]))
        assert set(record["labels"]) <= dims
        assert "aesthetics" not in dims or "aesthetics" in record["labels"]  # global: always visible
        judged += len(dims)
        labelled += len(record["labels"])
        assert set(images) == {"source", "mask", "cand_0", "cand_1", "cand_2", "cand_3"}
    assert 0.8 < labelled / judged < 1.0


def test_labelled_regional_pairs_differ_visibly_in_the_region(inputs):
    for task, record, images in inputs:
        m = _arr(images["mask"]) > 0.5
        for dim, lab in record["labels"].items():
            if dim != "aesthetics":
                w, l = images[f"cand_{lab['best']}"], images[f"cand_{lab['worst']}"]
                assert visible_difference(_arr(w), _arr(l), m) > VISIBLE_MIN / 2, (record, dim)


def test_visible_difference_ignores_a_shifted_texture_but_not_a_cast():
    rng = np.random.default_rng(0)
    texture = rng.uniform(0.3, 0.7, (64, 64, 3)).astype(np.float32)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    assert visible_difference(texture, np.roll(texture, 3, axis=1), mask) < VISIBLE_MIN
    assert visible_difference(texture, texture + 0.2, mask) > VISIBLE_MIN


@pytest.mark.parametrize("mode", ["color", "blur", "noise"])
def test_every_consistency_defect_survives_the_judges_coarse_view(mode):
    """At full severity the region differs from the clean photo in 8x8-pixel block means too.

    The judge sees an image as a few patch tokens; a defect that only lives in pixel-level
    texture (fine grain, a slight blur) is invisible to it, and its labels unlearnable.
    """
    rng = np.random.default_rng(1)
    clean = crop_photo(rng, 64)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    defects = Defects.draw(64, rng)
    defects = Defects(defects.shift, defects.period, mode, defects.direction, defects.noise)
    blocks = lambda a: a.reshape(8, 8, 8, 8, 3).mean(axis=(1, 3))  # noqa: E731
    changed = np.abs(blocks(degrade_consistency(clean, mask, 1.0, defects)) - blocks(clean))[2:6, 2:6]
    assert changed.mean() > 0.08
    assert np.array_equal(degrade_consistency(clean, mask, 1.0, defects)[~mask], clean[~mask])


def test_extend_prompt_content_sits_in_one_border_strip():
    mask = np.zeros((64, 64), bool)
    mask[:, :12] = True
    mask[:, -16:] = True
    strip = widest_strip(mask)
    assert strip[:, -16:].all() and not strip[:, :-16].any()


def test_aesthetics_winner_has_more_contrast_and_colour(inputs):
    agree = total = 0
    for _, record, images in inputs:
        if "aesthetics" in record["labels"]:
            lab = record["labels"]["aesthetics"]
            w, l = _arr(images[f"cand_{lab['best']}"]), _arr(images[f"cand_{lab['worst']}"])
            score = lambda a: a.std() + np.abs(a - a.mean(axis=2, keepdims=True)).mean()  # noqa: E731
            agree += score(w) > score(l)
            total += 1
    assert total > 20 and agree / total > 0.9


def test_removal_winner_departs_most_from_the_object(inputs):
    agree = total = 0
    for _, record, images in inputs:
        if "removal_quality" in record["labels"]:
            lab, m = record["labels"]["removal_quality"], _arr(images["mask"]) > 0.5
            src = _arr(images["source"])
            dist = lambda c: np.abs(_arr(images[f"cand_{c}"]) - src)[m].mean()  # noqa: E731
            agree += dist(lab["best"]) > dist(lab["worst"])
            total += 1
    assert total >= 10 and agree == total


def test_candidates_keep_known_pixels_up_to_global_aesthetics(inputs):
    for task, record, images in inputs:
        if task == "removal" or "aesthetics" not in record["labels"]:
            continue
        keep = _arr(images["mask"]) < 0.5
        best = _arr(images[f"cand_{record['labels']['aesthetics']['best']}"])
        # The aesthetics-best candidate has no global change: its known pixels are the source's.
        assert np.abs(best - _arr(images["source"]))[keep].mean() < 0.02


def test_near_ties_are_left_out():
    assert labels_from({"structure": np.array([0.5, 0.52, 0.49, 0.51])}) == {}
    assert labels_from({"structure": np.array([0.0, 1.0, 0.3, 0.6])}) == {"structure": {"best": 0, "worst": 1}}


def test_worst_text_alignment_contradicts_or_leaves_out_the_prompted_content():
    rng = np.random.default_rng(0)
    asked = Content("object", color="red", shape="circle")
    assert asked.variant(0.0, True, rng) == asked
    contradicted = asked.variant(1.0, False, rng)
    assert contradicted.kind == "object" and contradicted.color != "red" and contradicted.shape != "circle"
    ignored = asked.variant(1.0, True, rng)
    base = rng.uniform(0, 1, (32, 32, 3)).astype(np.float32)
    assert ignored.kind == "none" and np.array_equal(ignored.draw(base, (8, 8, 24, 24)), base)
    assert not np.array_equal(asked.draw(base, (8, 8, 24, 24)), base)
