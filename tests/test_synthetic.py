"""The synthesized labels follow from the pixels: a simple measurement agrees with them."""

import numpy as np
import pytest

from onereward import tasks
from onereward.data.synthetic import SynthesizeConfig, labels_from, make_input, task_plan


def _arr(img):
    return np.asarray(img).astype(np.float32) / 255


@pytest.fixture(scope="module")
def inputs():
    cfg = SynthesizeConfig(num_inputs=80, tie_probability=0.0)
    return [(task, *make_input(i, task, cfg)) for i, task in enumerate(task_plan(cfg))]


def test_task_plan_has_exact_counts():
    plan = task_plan(SynthesizeConfig(num_inputs=10))
    assert len(plan) == 10 and plan.count("fill") == 5 and plan.count("extend") + plan.count("removal") == 5


def test_every_judged_dimension_is_labelled_without_ties(inputs):
    for task, record, images in inputs:
        assert set(record["labels"]) == set(tasks.dimensions_for(task, record["prompt"]))
        assert set(images) == {"source", "mask", "cand_0", "cand_1", "cand_2", "cand_3"}


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
