"""The embedded default's preference data: inputs with ground truth, candidates from the generator,
labels from the rater (the annotator)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from onereward import tasks
from onereward.data.synthetic import (
    SynthesizeConfig,
    _batches,
    generate_candidates,
    labels_from,
    make_input,
    rater_scores,
    synthesize,
    task_plan,
)
from onereward.data.records import DatasetRoot
from onereward.data.scenes import widest_strip

CFG = SynthesizeConfig(num_inputs=16, batch_size=8)


@pytest.fixture(scope="module")
def inputs():
    return [make_input(i, task, CFG) for i, task in enumerate(task_plan(CFG))]


@pytest.fixture(scope="module")
def candidates(inputs, tiny_generator):
    return generate_candidates(inputs, CFG, tiny_generator, paste_known=True)


def test_task_plan_has_exact_counts():
    plan = task_plan(SynthesizeConfig(num_inputs=10))
    assert len(plan) == 10 and plan.count("fill") == 5 and plan.count("extend") + plan.count("removal") == 5


def test_extend_prompt_content_sits_in_one_border_strip():
    mask = np.zeros((64, 64), bool)
    mask[:, :12] = True
    mask[:, -16:] = True
    strip = widest_strip(mask)
    assert strip[:, -16:].all() and not strip[:, :-16].any()


def test_ground_truth_shows_what_the_region_should_hold(inputs):
    for x in inputs:
        outside = ~x.mask
        if x.task == "removal":  # the source still shows the object; the ground truth is the clean photo
            assert np.abs(x.source - x.ground_truth)[x.mask].mean() > 0.02
            assert np.allclose(x.source[outside], x.ground_truth[outside], atol=1 / 255)
            assert x.content is None and x.prompt is None
        else:  # the user's input hides the region; the ground truth has the photo and the prompted content there
            assert np.allclose(x.source[x.mask], 0.5) and np.allclose(x.source[outside], x.ground_truth[outside])
            if x.prompt:
                x0, y0, x1, y1 = x.content["box"]
                assert x.mask[y0:y1, x0:x1].mean() > 0.5  # the content box lies mostly in the region
                word = x.content.get("word") or x.content["color"]
                assert word.lower() in x.prompt.lower()


def test_candidates_vary_their_sampling_settings_and_batch_by_setting(inputs):
    settings = {s for x in inputs for s in x.settings}
    assert len({s.steps for s in settings}) > 1 and len({s.true_cfg for s in settings}) > 1
    for batch in _batches(inputs, CFG.batch_size):
        assert len({inputs[i].settings[c] for i, c in batch}) == 1 and len(batch) <= CFG.batch_size


def test_candidates_come_from_the_generator_with_known_pixels_pasted(inputs, candidates):
    assert candidates.shape == (len(inputs), CFG.num_candidates, 64, 64, 3) and candidates.dtype == np.uint8
    for x, cands in zip(inputs, candidates):
        source = (x.source * 255 + 0.5).astype(np.uint8)
        for c in cands:
            assert (c[~x.mask] == source[~x.mask]).all()  # paste_known: only the region is generated
        region = cands[:, x.mask].astype(float)
        assert np.abs(region[0] - region[1:]).mean() > 1.0  # different settings and seeds, different fills


def test_labels_name_the_rater_best_and_worst_and_drop_near_ties(inputs, candidates):
    scores = rater_scores(inputs, candidates)
    for x, s in zip(inputs, scores):
        assert set(s) == set(tasks.dimensions_for(x.task, x.prompt))
        labels = labels_from(s, tie_margin=0.0)
        for d, pair in labels.items():
            assert s[d][pair["best"]] == s[d].max() and s[d][pair["worst"]] == s[d].min()
        assert labels_from(s, tie_margin=2.0) == {}  # rater scores lie in [0, 1]: nothing beats a margin of 2


def test_synthesize_writes_the_raw_format_with_ground_truth(tmp_path, tiny_generator):
    n = synthesize(tmp_path, SynthesizeConfig(num_inputs=4, batch_size=8), tiny_generator)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert n == len(records) == 4
    # every image a member of one archive: DVC then checks two files, not seven per input
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.zip", "records.jsonl"]
    files = DatasetRoot(tmp_path)
    for r in records:
        for rel in [r["source"], r["mask"], r["ground_truth"], *r["candidates"]]:
            assert rel.startswith("images.zip/")
            assert Image.open(io.BytesIO(files.read(rel, r["id"], 1))).size == (64, 64)
        assert ("content" in r) == bool(r["prompt"])
