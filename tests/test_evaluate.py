"""Evaluation: benchmark selection, seeds, GSB orientation and margins, usability, aggregation.

The stage end to end (reports, grids, byte-identical reruns) is in test_reproducibility.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from onereward.data.sharding import ShardConfig, shard_dataset
from onereward.eval.benchmark import sample_seed, select
from onereward.eval.config import EvaluateConfig
from onereward.eval.scoring import InputScores, aggregate, score_input
from onereward.tasks import EVAL_SETTINGS, TEXT_RENDERING


@pytest.fixture(scope="module")
def shards(tmp_path_factory, micro_dataset):
    out = tmp_path_factory.mktemp("eval_shards")
    shard_dataset(micro_dataset, out / "shards", out / "manifest.parquet", out / "quarantine.jsonl", ShardConfig(workers=1))
    return out / "shards"


class BrightnessJudge:
    """Stub judge: prefers the brighter first image, for every query (order-symmetric by construction)."""

    def symmetric_score(self, a, b, queries, batch_size=16):
        mean = lambda ims: torch.tensor([np.asarray(im, dtype=np.float32).mean() / 255 for im in ims])  # noqa: E731
        assert len(a) == len(b) == len(queries)
        return (0.5 + 0.5 * (mean(a) - mean(b))).clamp(0, 1)


def _grey(v: int) -> Image.Image:
    return Image.new("RGB", (16, 16), (v, v, v))


def test_select_follows_the_registry_settings(shards):
    items, by_setting = select(str(shards), "train", 2)
    assert set(by_setting) == set(EVAL_SETTINGS)
    keys = [it.key for it in items]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    by_key = {it.key: it for it in items}
    for name, chosen in by_setting.items():
        assert len(chosen) <= 2 and chosen == sorted(chosen)
        for k in chosen:
            assert by_key[k].task == EVAL_SETTINGS[name].task and name in by_key[k].settings
    assert all(TEXT_RENDERING in by_key[k].tags for k in by_setting["fill_text"])
    assert all(not by_key[k].prompt for k in by_setting["extend_no_prompt"])
    assert all(by_key[k].prompt for k in by_setting["extend_prompt"])
    assert sample_seed(0, "a") == sample_seed(0, "a") != sample_seed(1, "a")


def test_gsb_is_tuned_over_base_and_usability_counts_candidates():
    cands = [_grey(60), _grey(120), _grey(180)]
    good = score_input(BrightnessJudge(), "k1", "fill", "a kite", ["fill"], {"base": _grey(100), "tuned": _grey(250)}, cands, 4)
    assert good.dimensions == ["text_alignment", "consistency", "structure", "aesthetics"]
    assert good.outcome(0.05) == "good" and all(v > 0.5 for v in good.preference.values())
    assert good.beaten["tuned"]["consistency"] == 1.0 and good.beaten["base"]["consistency"] == pytest.approx(1 / 3)
    assert good.usable("tuned", 0.5) and not good.usable("base", 0.5)
    bad = score_input(BrightnessJudge(), "k2", "removal", None, ["removal"], {"base": _grey(250), "tuned": _grey(100)}, cands, 4)
    assert bad.dimensions == ["removal_quality"] and bad.outcome(0.05) == "bad"
    same = score_input(BrightnessJudge(), "k3", "extend", None, ["extend_no_prompt"], {"base": _grey(120), "tuned": _grey(130)}, cands, 4)
    assert "text_alignment" not in same.dimensions and same.outcome(0.05) == "same" and same.outcome(0.0) == "good"


def test_aggregate_percentages():
    def s(key, settings, pref, tuned_beaten):
        return InputScores(key, "fill", settings, ["consistency"], {"consistency": pref},
                           {"tuned": {"consistency": tuned_beaten}, "base": {"consistency": 0.25}})

    scores = [s("a", ["fill"], 0.9, 1.0), s("b", ["fill", "fill_text"], 0.5, 0.5), s("c", ["fill"], 0.2, 0.0),
              s("d", ["fill"], 0.56, 0.75)]
    m = aggregate(scores, margin=0.05, usable_share=0.5)
    assert m["fill"]["n"] == 4 and m["fill"]["gsb"] == {"good": 50.0, "same": 25.0, "bad": 25.0}
    assert m["fill"]["tuned"]["usability"] == 75.0 and m["fill"]["base"]["usability"] == 0.0
    assert m["fill"]["tuned"]["win_rate"]["consistency"] == 56.25
    assert m["fill_text"]["n"] == 1 and m["removal"] == {"n": 0}
    assert m["fill"]["mean_preference"] == pytest.approx(0.54)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        EvaluateConfig(gsb_margin=0.6)
    with pytest.raises(ValueError):
        EvaluateConfig(usable_share=0)


def test_same_seed_per_input_whatever_the_order(shards, tmp_path):
    """Base and tuned see the same noise per input: the seed depends on the key, not on batch order."""
    from onereward.eval.run import generate_outputs
    from onereward.fill import load_policy
    from onereward.policy.tiny import build_tiny_pipeline, save_pipeline

    save_pipeline(build_tiny_pipeline(seed=0), tmp_path / "tiny")
    policy = load_policy(str(tmp_path / "tiny"))
    items, _ = select(str(shards), "test", 1)
    assert len(items) >= 2
    cfg = EvaluateConfig(num_inference_steps=1)
    forward = generate_outputs(policy, items, cfg, "a")
    backward = generate_outputs(policy, items[::-1], cfg, "b")
    for it in items:
        assert forward[it.key].size == it.source.size
        assert np.array_equal(np.asarray(forward[it.key]), np.asarray(backward[it.key]))
    other = generate_outputs(policy, items[:1], EvaluateConfig(num_inference_steps=1, seed=1), "c")
    assert not np.array_equal(np.asarray(other[items[0].key]), np.asarray(forward[items[0].key]))


def test_outputs_keep_the_known_pixels_by_the_generation_rule(shards, tmp_path):
    from onereward.eval.run import generate_outputs
    from onereward.fill import load_policy
    from onereward.policy.known import GenerationConfig
    from onereward.policy.tiny import build_tiny_pipeline, save_pipeline

    save_pipeline(build_tiny_pipeline(seed=0), tmp_path / "tiny")
    policy = load_policy(str(tmp_path / "tiny"))
    items, _ = select(str(shards), "test", 1)
    cfg = EvaluateConfig(num_inference_steps=1)
    pasted = generate_outputs(policy, items, cfg, "a", GenerationConfig(paste_known=True))
    raw = generate_outputs(policy, items, cfg, "b", GenerationConfig(paste_known=False))
    for it in items:
        known = np.asarray(it.mask.convert("L")) <= 127
        src = np.asarray(it.source.convert("RGB"))
        assert (np.asarray(pasted[it.key])[known] == src[known]).all()
        assert (np.asarray(raw[it.key])[known] != src[known]).any()
        region = ~known
        assert np.array_equal(np.asarray(pasted[it.key])[region], np.asarray(raw[it.key])[region])


def _rated(key, settings, base, tuned, cands=(0.1, 0.5, 0.9)):
    from onereward.eval.rated import RatedInput

    return RatedInput(key, "fill", settings, ["consistency"], {"base": {"consistency": base}, "tuned": {"consistency": tuned}},
                      {m: {"masked_psnr": 20.0, "masked_ssim": 0.5} for m in ("base", "tuned")},
                      {"consistency": list(cands)})


def test_rater_gsb_intervals_usability_and_agreement():
    from onereward.eval.rated import aggregate_rated

    rated = [_rated("a", ["fill"], 0.4, 0.6), _rated("b", ["fill"], 0.5, 0.51), _rated("c", ["fill"], 0.6, 0.3),
             _rated("d", ["fill"], 0.2, 0.8)]
    judged = [InputScores(k, "fill", ["fill"], ["consistency"], {"consistency": p}, {}) for k, p in
              (("a", 0.7), ("b", 0.9), ("c", 0.6), ("d", 0.8))]
    m = aggregate_rated(rated, judged, margin=0.02, usable_share=0.5)["fill"]
    assert m["n"] == 4 and m["gsb"] == {"good": 50.0, "same": 25.0, "bad": 25.0}
    for o, (lo, hi) in m["gsb_ci"].items():
        assert lo <= m["gsb"][o] <= hi and hi - lo > 20  # four inputs: wide intervals
    mean, lo, hi = m["good_minus_bad"]
    assert mean == 25.0 and lo < 0 < hi  # not a significant gain
    diff = m["score"]["consistency"]["diff"]
    assert diff[0] == pytest.approx((0.2 + 0.01 - 0.3 + 0.6) / 4, abs=1e-4) and diff[1] < diff[0] < diff[2]
    assert m["usability"] == {"base": 50.0, "tuned": 75.0}  # usable: at least half of (0.1, 0.5, 0.9) rated no better
    # judge prefers tuned everywhere: agrees on a and d, disagrees on c; b is within the rater margin
    assert m["agreement"]["pairs"] == 3 and m["agreement"]["agree"] == pytest.approx(66.67)


def test_wilson_interval():
    from onereward.eval.stats import mean_ci, wilson

    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.35
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    m, lo, hi = mean_ci([1.0, 1.0, 1.0])
    assert m == lo == hi == 1.0


def test_the_rater_verdict_follows_the_intervals():
    from onereward.eval.report import verdict

    rated = {"fill": {"good_minus_bad": [20.0, 5.0, 35.0]}, "extend_prompt": {"good_minus_bad": [-10.0, -30.0, 10.0]},
             "removal": {"good_minus_bad": [-25.0, -40.0, -10.0]}, "fill_text": {"good_minus_bad": [100.0, None, None]}}
    text = verdict(rated)
    assert "better in image fill;" in text and "worse in object removal;" in text
    assert "undecided in image fill: text rendering, image extend with prompt**" in text


def test_inputs_dealt_over_worker_processes_give_one_process_s_outputs_and_scores(shards, tmp_path):
    """evaluate.workers splits the inputs over fresh processes: the same images, judge scores and
    metrics as one process, in the same order."""
    from onereward.config import Profile
    from onereward.eval.run import EvalPaths, run
    from onereward.judge.model import JudgeMeta
    from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge
    from onereward.policy.tiny import build_tiny_pipeline, save_pipeline

    save_pipeline(build_tiny_pipeline(seed=0), tmp_path / "base")
    save_pipeline(build_tiny_pipeline(seed=1), tmp_path / "tuned")
    save_tiny_judge(TinyJudgeConfig(seed=0), tmp_path / "judge")
    JudgeMeta(resolution=56).write(tmp_path / "judge")
    profile = Profile("tiny", "unused", str(tmp_path / "judge"), str(tmp_path / "base"))
    paths = EvalPaths(shards=shards, tuned=tmp_path / "tuned", judge=tmp_path / "judge")
    results = [run(EvaluateConfig(per_setting=2, num_inference_steps=2, true_cfg=1.0, workers=w), profile, paths)
               for w in (1, 2)]
    (items, outputs, scores, metrics), (items2, outputs2, scores2, metrics2) = results
    assert len(items) >= 3 and [it.key for it in items] == [it.key for it in items2]
    for model in ("base", "tuned"):
        assert list(outputs[model]) == list(outputs2[model]) == [it.key for it in items]
        for key, image in outputs[model].items():
            assert np.array_equal(np.asarray(image), np.asarray(outputs2[model][key]))
    assert scores == scores2 and metrics == metrics2
    assert any(not np.array_equal(np.asarray(outputs["base"][k]), np.asarray(outputs["tuned"][k])) for k in outputs["base"])
