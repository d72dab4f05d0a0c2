"""An annotation export of three image sizes and aspect ratios through shard, queries,
train_judge, eval_judge and train_policy on tiny models (the library calls the stages make)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from onereward.config import Profile
from onereward.data.reader import input_dataset
from onereward.data.sharding import ShardConfig, shard_dataset
from onereward.judge.data import render_rows, stack
from onereward.judge.model import Judge, JudgeMeta
from onereward.judge.queries import load_templates
from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge
from onereward.judge.train import TrainJudgeConfig, batch_stream, save_judge, score_rows, train as train_judge
from onereward.policy.tiny import build_tiny_pipeline, save_pipeline
from onereward.rl.conditions import draw, load_conditions
from onereward.rl.config import TrainPolicyConfig
from onereward.rl.trainer import Paths, train as train_policy
from onereward.tasks import dimensions_for

SIZES = [(64, 64), (48, 96), (96, 64)]
"""(height, width): square, wide 1:2 and tall 3:2, all multiples of 16."""
TASKS = [("fill", "a red circle"), ("extend", None), ("removal", None)]


def _png(arr: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path.relative_to(path.parents[2]))


def write_export(root: Path, n: int = 36) -> None:
    """``n`` inputs cycling through sizes and tasks, three candidates each (the cleanest is best),
    plus one record whose size FLUX cannot take (50 x 50)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n + 1):
        h, w = (50, 50) if i == n else SIZES[i % 3]
        task, prompt = TASKS[(i // 3) % 3]
        yy, xx = np.mgrid[0:h, 0:w]
        photo = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 40 + 5 * (i % 30))], -1).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
        source = photo.copy()
        source[mask > 0] = 128
        cands = [np.clip(photo.astype(int) + rng.normal(0, s, photo.shape), 0, 255).astype(np.uint8) for s in (2, 20, 60)]
        d = root / "images" / f"in{i:03d}"
        rec = {"id": f"{task}-{i:03d}", "task": task, "prompt": prompt, "tags": [],
               "source": _png(source, d / "source.png"), "mask": _png(mask, d / "mask.png"),
               "candidates": [_png(c, d / f"cand_{k}.png") for k, c in enumerate(cands)],
               "ground_truth": _png(photo, d / "truth.png"),
               "labels": {dim: {"best": 0, "worst": 2} for dim in dimensions_for(task, prompt)}}
        lines.append(json.dumps(rec))
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    write_export(root / "raw")
    stats = shard_dataset(root / "raw", root / "shards", root / "manifest.parquet", root / "quarantine.jsonl",
                          ShardConfig(split={"train": 0.6, "val": 0.4, "test": 0.0}, workers=1, max_samples_per_shard=8))
    return root, stats


def test_shard_keeps_every_size_flux_takes_and_quarantines_the_rest_with_the_reason(shards):
    root, stats = shards
    bad = [json.loads(line) for line in (root / "quarantine.jsonl").read_text().splitlines()]
    assert [(b["id"], b["reason"]) for b in bad] == [("fill-036", "size_not_multiple_of_16")]
    sizes = {tuple(reversed(x["source"].size)) for split in ("train", "val") for x in input_dataset(root / "shards", split)}
    assert sizes == set(SIZES)


def test_draws_come_from_every_size_and_each_batch_shares_one(shards):
    root, _ = shards
    conds = load_conditions(str(root / "shards"), "train")
    seen = set()
    for step in range(60):
        d = draw(conds, 0, step, 0, 3, 1, (1, 2), {"fill": 1, "extend": 1, "removal": 1})
        sizes = {conds.sizes[i] for i in d.index}
        assert len(sizes) == 1, f"step {step} mixes sizes {sizes}"
        images, masks = conds.tensors(d.index, "cpu")
        assert tuple(images.shape[-2:]) == sizes.pop() and masks.shape[0] == 3
        seen.add(tuple(images.shape[-2:]))
    assert seen == set(SIZES)


def test_judge_trains_and_scores_and_the_policy_trains_on_mixed_sizes(shards, tmp_path):
    root, _ = shards
    manifest = pq.read_table(root / "manifest.parquet").to_pylist()
    rows = {s: render_rows([m for m in manifest if m["split"] == s], load_templates()) for s in ("train", "val")}
    base = tmp_path / "judge_base"
    save_tiny_judge(TinyJudgeConfig(), base)
    JudgeMeta(resolution=56).write(base)  # 3,136 pixels: 64 x 64 -> 56 x 56, 48 x 96 -> 28 x 56, 96 x 64 -> 56 x 28
    judge = Judge.load(base)
    assert {judge.input_size(*s) for s in SIZES} == {(56, 56), (28, 56), (56, 28)}

    cfg = TrainJudgeConfig(finetune="full", lr=1e-3, batch_size=8, steps=6, warmup_steps=1, eval_every=3,
                           checkpoint_every=100)
    history = train_judge(judge, cfg, lambda split, shuffle, seed: input_dataset(root / "shards", split, shuffle, seed),
                          rows["train"], rows["val"])
    assert [h["step"] for h in history] == [3, 6] and all(np.isfinite(h["loss"]) and "val_accuracy" in h for h in history)
    batches = batch_stream(lambda split, shuffle, seed: input_dataset(root / "shards", split, shuffle, seed),
                           rows["train"], cfg, judge.input_size)
    assert any(isinstance(stack(next(batches))[0], list) for _ in range(4)), "no batch mixed image sizes"
    save_judge(judge, cfg, str(base), tmp_path / "judge", template_version="1")
    scored = score_rows(Judge.load(tmp_path / "judge"), input_dataset(root / "shards", "val"), rows["val"], 16)
    assert len(scored) == len(rows["val"]) and all(p is not None and 0 < p < 1 for p in scored)

    save_pipeline(build_tiny_pipeline(seed=0), tmp_path / "policy_base")
    profile = Profile(name="tiny", dataset=str(root / "raw"), judge_model=str(base), policy_model=str(tmp_path / "policy_base"))
    pcfg = TrainPolicyConfig(steps=6, batch_size=2, lr=1e-3, warmup_steps=1, num_inference_steps=4, t_range=(1, 2),
                             checkpoint_every=100, val_every=3, val_size=6, judge=str(tmp_path / "judge"),
                             shards=str(root / "shards"), finetune="lora")
    out = tmp_path / "rl"
    metrics = train_policy(pcfg, profile, Paths(out=out / "out", checkpoints=out / "ckpt", live=out / "live",
                                                 reports=out / "reports"))
    assert metrics["val_reward_end"] is not None and np.isfinite(metrics["val_rater_end"])
    curve = (out / "reports" / "val_reward.csv").read_text().splitlines()
    assert len(curve) == 1 + 3  # steps 0, 3, 6
    val = load_conditions(str(root / "shards"), "val", with_truth=True)
    assert len(set(val.sizes)) > 1, "the validation split should hold several sizes"
    assert (out / "out" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    grid = Image.open(out / "reports" / "val_samples.png")  # input, base, policy rows of one size
    assert grid.size[1] in {3 * h for h, _ in SIZES}
