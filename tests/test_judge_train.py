"""Judge training: Eq. 3, LoRA and full fine-tuning, stock-peft reload, checkpoints and resume."""

import itertools
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from onereward.judge.data import render_rows, stack, examples
from onereward.judge.model import Judge, JudgeMeta
from onereward.judge.queries import load_templates
from onereward.judge.train import TrainJudgeConfig, batch_stream, eq3_loss, save_judge, score_rows, train
from onereward.judge.tiny import TinyJudgeConfig, save_tiny_judge


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("judge_base")
    save_tiny_judge(TinyJudgeConfig(seed=0), path)
    JudgeMeta(resolution=56).write(path)
    return path


def make_inputs(n: int, seed: int) -> list[dict]:
    """Inputs in input_dataset's shape: the winner is the brighter candidate."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = rng.uniform(0.2, 0.6, (64, 64, 3))
        cands = [Image.fromarray((np.clip(base + d, 0, 1) * 255).astype(np.uint8)) for d in (0.3, -0.2)]
        task, dim = [("fill", "aesthetics"), ("removal", "removal_quality"), ("extend", "consistency")][i % 3]
        out.append(
            {"key": f"{task}-{seed:02d}{i:04d}", "task": task, "prompt": None, "tags": [], "source": cands[0],
             "mask": Image.new("L", (64, 64), 255), "candidates": cands, "labels": {dim: {"best": 0, "worst": 1}}}
        )
    return out


def rows_for(inputs: list[dict], split: str) -> list[dict]:
    manifest = [
        {"key": x["key"], "split": split, "task": x["task"], "dimension": d, "winner": l["best"], "loser": l["worst"], "prompt": x["prompt"]}
        for x in inputs for d, l in x["labels"].items()
    ]
    return render_rows(manifest, load_templates())


DATA = {"train": make_inputs(8, 0), "val": make_inputs(3, 1)}


def inputs_fn(split, shuffle, seed):
    return list(DATA[split])


def mean_loss(judge: Judge, rows) -> float:
    with torch.no_grad():
        first, second, queries, label = stack(list(examples(DATA["train"], rows)))
        return eq3_loss(judge.margin(first, second, queries), label).item()


def test_eq3_is_the_mean_of_both_orders():
    margin = torch.tensor([2.0, -1.0])  # winner-first row, loser-first row of one pair
    loss = eq3_loss(margin, torch.tensor([1.0, 0.0]))
    p_yes_wl, p_no_lw = torch.sigmoid(margin[0]), 1 - torch.sigmoid(margin[1])
    assert torch.isclose(loss, -0.5 * (torch.log(p_yes_wl) + torch.log(p_no_lw)))


def test_query_rows_hold_both_orders():
    rows = rows_for(DATA["train"], "train")
    assert len(rows) == 2 * len(DATA["train"])
    for a, b in zip(rows[::2], rows[1::2]):
        assert (a["order"], a["label"], b["order"], b["label"]) == (0, 1, 1, 0)
        assert (a["first"], a["second"]) == (b["second"], b["first"]) and a["query"] == b["query"]


def test_dimension_repeats_draw_that_dimension_s_pairs_more_often_per_epoch():
    rows = rows_for(DATA["train"], "train")  # 3 aesthetics, 3 removal quality, 2 consistency pairs

    def one_epoch(**repeats) -> tuple[Counter, list]:
        cfg = TrainJudgeConfig(batch_size=2, flip=False, dimension_repeats=repeats)  # one pair a batch
        pairs = 8 + sum((n - 1) * 3 for n in repeats.values())
        batches = list(itertools.islice(batch_stream(inputs_fn, rows, cfg), pairs))
        return Counter(b[0].dimension for b in batches), batches

    plain, _ = one_epoch()
    assert plain == {"aesthetics": 3, "removal_quality": 3, "consistency": 2}
    doubled, batches = one_epoch(aesthetics=2)
    assert doubled == {"aesthetics": 6, "removal_quality": 3, "consistency": 2}
    for b in batches:  # a repeated pair is still both orders of one pair, with its labels
        assert [(e.key, e.order, e.label) for e in b] == [(b[0].key, 0, 1), (b[0].key, 1, 0)]
    with pytest.raises(ValueError, match="unknown dimension"):
        TrainJudgeConfig(dimension_repeats={"aesthetic": 2})
    with pytest.raises(ValueError, match="whole number >= 1"):
        TrainJudgeConfig(dimension_repeats={"aesthetics": 0})


def test_lora_steps_reduce_loss_and_adapter_reloads_with_stock_peft(base, tmp_path):
    from peft import PeftModel

    rows = rows_for(DATA["train"], "train")
    cfg = TrainJudgeConfig(finetune="lora", lora_rank=8, lora_alpha=16, lora_dropout=0.0, lr=1e-2,
                           batch_size=16, steps=16, warmup_steps=1, eval_every=100, checkpoint_every=100)
    judge = Judge.load(base)
    before = mean_loss(judge, rows)
    train(judge, cfg, inputs_fn, rows, [])
    after = mean_loss(judge, rows)
    assert after < before - 0.1
    assert all(not p.requires_grad for n, p in judge.model.named_parameters() if "lora_" not in n)

    out = tmp_path / "judge"
    save_judge(judge, cfg, str(base), out, template_version="1")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "judge.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)

    # stock transformers + peft, no project code: same answers as the trained judge
    stock = PeftModel.from_pretrained(Qwen2_5_VLForConditionalGeneration.from_pretrained(base), str(out)).eval()
    reloaded = Judge.load(base)
    reloaded.model = stock
    first, second, queries, _ = stack(list(examples(DATA["train"], rows)))
    with torch.no_grad():
        assert torch.allclose(reloaded.margin(first, second, queries), judge.margin(first, second, queries), atol=1e-5)
        # and through the pipeline's loader (adapter directory -> base from judge.json, merged)
        assert torch.allclose(Judge.load(out).margin(first, second, queries), judge.margin(first, second, queries), atol=1e-4)


def test_full_finetune_learns_and_saves_a_loadable_model(base, tmp_path):
    rows = rows_for(DATA["train"], "train")
    val_rows = rows_for(DATA["val"], "val")
    cfg = TrainJudgeConfig(finetune="full", lr=1e-3, batch_size=16, steps=30, warmup_steps=5, eval_every=15, checkpoint_every=100)
    judge = Judge.load(base)
    before = mean_loss(judge, rows)
    logged = []
    history = train(judge, cfg, inputs_fn, rows, val_rows, log=lambda s, m: logged.append((s, m)))
    assert mean_loss(judge, rows) < before - 0.1
    assert [s for s, _ in logged] == [15, 30] and "val_accuracy" in logged[-1][1] and history[-1]["step"] == 30

    out = tmp_path / "judge"
    save_judge(judge, cfg, str(base), out, template_version="1")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    again = Judge.load(out)
    p = score_rows(again, DATA["train"], rows, 8)
    q = score_rows(judge, DATA["train"], rows, 8)
    assert np.allclose(p, q, atol=1e-5)


def test_killed_run_resumes_to_the_same_weights(base, tmp_path):
    rows = rows_for(DATA["train"], "train")
    cfg = TrainJudgeConfig(finetune="full", lr=1e-3, batch_size=4, steps=4, warmup_steps=1, eval_every=1, checkpoint_every=2)

    straight = Judge.load(base)
    train(straight, cfg, inputs_fn, rows, [], ckpt_dir=tmp_path / "a")

    def crash(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    resumed = Judge.load(base)
    with pytest.raises(KeyboardInterrupt):
        train(resumed, cfg, inputs_fn, rows, [], ckpt_dir=tmp_path / "b", log=crash)
    assert json.loads((tmp_path / "b/latest/state.json").read_text())["step"] == 2
    assert {p.suffix for p in (tmp_path / "b/latest").iterdir()} == {".safetensors", ".json"}
    resumed = Judge.load(base)
    train(resumed, cfg, inputs_fn, rows, [], ckpt_dir=tmp_path / "b")
    for (n, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n


def test_candidates_resized_once_give_the_judge_the_same_pixels(base):
    """Resizing each candidate once with PIL (``examples(judge_size=...)``) feeds the judge exactly the
    pixel values of its own differentiable resize, also for mirrored pairs."""
    judge = Judge.load(base)
    rows = rows_for(DATA["train"], "train")
    plain = list(examples(DATA["train"], rows))
    once = list(examples(DATA["train"], rows, judge.input_size))
    assert once[0].first.shape[-1] == judge.resolution != plain[0].first.shape[-1]
    for flip in (False, True):
        a = [e.first.flip(-1) if flip else e.first for e in plain]
        b = [e.first.flip(-1) if flip else e.first for e in once]
        pa_, pb_ = (judge.encode_images(torch.stack(x), torch.stack(x))["pixel_values"] for x in (a, b))
        assert torch.equal(pa_, pb_)


def train_and_record(base: str, out: str) -> None:
    """Entry of the processes below (module level: spawned processes import it by name)."""
    from accelerate import PartialState
    from safetensors.torch import save_file

    judge = Judge.load(base)
    cfg = TrainJudgeConfig(finetune="full", lr=1e-3, batch_size=8, steps=6, warmup_steps=1, eval_every=3,
                           checkpoint_every=100)
    from accelerate import Accelerator

    val_rows = rows_for(DATA["val"], "val")
    history = train(judge, cfg, inputs_fn, rows_for(DATA["train"], "train"), val_rows)
    shared = score_rows(judge, inputs_fn("val", False, 0), val_rows, 4, acc=Accelerator(cpu=True))  # a batch each
    if PartialState().is_main_process:
        alone = score_rows(judge, inputs_fn("val", False, 0), val_rows, 4)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "history.json").write_text(json.dumps(history))
        (Path(out) / "val.json").write_text(json.dumps({"shared": shared, "alone": alone}))
        save_file({n: p.detach().contiguous() for n, p in judge.model.named_parameters()}, str(Path(out) / "w.safetensors"))


def test_two_processes_train_the_judge_as_one_does(base, tmp_path):
    """Two data-parallel CPU processes (each half of every batch's pairs, DDP) follow one process's
    loss curve (relative 1e-5) and weights (3e-4, under a third of one step at lr 1e-3) up to float summation order;
    validation is shared out by batch and gives what one process alone scores, bit for bit."""
    import subprocess
    import sys
    from safetensors.torch import load_file

    code = ("import sys; sys.path.insert(0, {tests!r}); from onereward.launch import data_parallel; "
            "from test_judge_train import train_and_record; data_parallel(train_and_record, {n}, {base!r}, {out!r})")
    for n in (1, 2):
        run = subprocess.run([sys.executable, "-c", code.format(tests=str(Path(__file__).parent), n=n, base=str(base),
                                                               out=str(tmp_path / f"p{n}"))],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"p{n}" / "history.json").read_text()) for n in (1, 2))
    assert [h["step"] for h in one] == [h["step"] for h in two] == [3, 6]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * max(1.0, abs(a["loss"]))
        assert a["val_accuracy"] == b["val_accuracy"]
    w1, w2 = (load_file(str(tmp_path / f"p{n}" / "w.safetensors")) for n in (1, 2))
    # Adam's normalised steps turn last-bit gradient differences of near-zero gradients into up to
    # ~2e-4 after 6 steps of lr 1e-3 (seen with the patch embedding as a matrix product); gradients
    # not averaged over the processes would differ by whole steps (~1e-3 a step)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 3e-4
    val = json.loads((tmp_path / "p2" / "val.json").read_text())
    assert None not in val["shared"] and len(val["shared"]) > 4  # more than one batch, so both processes scored
    assert val["shared"] == val["alone"]


def test_a_bf16_judge_trains_fp32_masters_so_small_steps_are_not_lost(base, tmp_path):
    """At the paper's lr 1e-6, AdamW's steps are far below bf16's resolution: with bf16 weights
    they round away. Trained tensors get fp32 masters (autocast runs the model in bf16)."""
    from safetensors.torch import load_file

    judge = Judge.load(base, dtype=torch.bfloat16)
    before = {n: p.detach().float().clone() for n, p in judge.model.named_parameters()}
    cfg = TrainJudgeConfig(finetune="full", lr=1e-6, batch_size=8, steps=3, warmup_steps=1, eval_every=3,
                           checkpoint_every=3)
    history = train(judge, cfg, inputs_fn, rows_for(DATA["train"], "train"), rows_for(DATA["val"], "val"),
                    ckpt_dir=tmp_path / "ckpt")
    assert len(history) == 1 and judge.model.dtype == torch.bfloat16  # handed back in its own dtype
    masters = load_file(str(tmp_path / "ckpt" / "latest" / "trainable.safetensors"))
    assert all(t.dtype == torch.float32 for t in masters.values())
    moved = sum(int((masters[n] != before[n]).sum()) for n in masters)
    total = sum(t.numel() for t in masters.values())
    assert moved > 0.5 * total, f"only {moved} of {total} trained values moved"


VISION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "attn.qkv", "attn.proj", "merger.mlp.0", "merger.mlp.2")
"""Language-model attention, every vision block's attention and the patch merger."""


def test_lora_reaches_the_vision_tower_and_merger_when_targeted(base, tmp_path):
    rows = rows_for(DATA["train"], "train")
    cfg = TrainJudgeConfig(lr=1e-2, batch_size=8, steps=4, warmup_steps=1, eval_every=100, checkpoint_every=100,
                           lora_dropout=0.0, lora_targets=VISION_TARGETS)
    judge = Judge.load(base)
    train(judge, cfg, inputs_fn, rows, [])
    adapted = {n.rsplit(".lora_", 1)[0] for n, p in judge.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0}
    assert any(".visual.blocks." in n and n.endswith("attn.qkv") for n in adapted)
    assert any(n.endswith("visual.merger.mlp.0") for n in adapted)
    assert any(".language_model." in n and n.endswith("q_proj") for n in adapted)

    out = tmp_path / "judge"
    save_judge(judge, cfg, str(base), out, template_version="1")
    first, second, queries, _ = stack(list(examples(DATA["train"], rows)))
    with torch.no_grad():  # merged into the base by the pipeline's loader: the same answers
        assert torch.allclose(Judge.load(out).margin(first, second, queries), judge.margin(first, second, queries), atol=1e-4)


def test_training_forward_encodes_each_distinct_image_once_with_the_same_margins(base):
    """Both orders of a pair show the same two images: the training forward sends each through
    the vision tower once and gives the margins, and gradients, of the plain forward."""
    from onereward.judge.model import DistinctImagesForward

    rows = rows_for(DATA["train"], "train")[:8]  # four pairs, both orders of each
    first, second, queries, label = stack(list(examples(DATA["train"], rows)))
    runs = {}
    for name in ("plain", "distinct"):
        judge = Judge.load(base)
        judge.model.requires_grad_(True)
        patches = []
        hook = judge.model.model.visual.register_forward_hook(lambda m, args, out: patches.append(args[0].shape[0]))
        model = DistinctImagesForward(judge.model) if name == "distinct" else None
        margin = judge.margin(first, second, queries, model=model)
        eq3_loss(margin, label).backward()
        hook.remove()
        grads = {n: p.grad.clone() for n, p in judge.model.named_parameters() if p.grad is not None}
        runs[name] = (margin.detach(), sum(patches), grads)
    (m_plain, n_plain, g_plain), (m_distinct, n_distinct, g_distinct) = runs["plain"], runs["distinct"]
    assert n_distinct * 2 == n_plain  # 8 distinct images instead of 16
    assert torch.allclose(m_plain, m_distinct, atol=1e-5)
    assert g_plain.keys() == g_distinct.keys()
    assert all(torch.allclose(g_plain[n], g_distinct[n], atol=1e-6, rtol=1e-4) for n in g_plain)


def test_kept_resized_candidates_are_the_ones_resized_afresh(base):
    """``keep_inputs``: a later epoch reads the candidates kept from the first, pixel for pixel."""
    judge = Judge.load(base)
    rows = rows_for(DATA["train"], "train")
    kept: dict = {}
    fresh = list(examples(DATA["train"], rows, judge.input_size))
    first_epoch = list(examples(DATA["train"], rows, judge.input_size, kept))
    later_epoch = list(examples(DATA["train"], rows, judge.input_size, kept))
    assert set(kept) == {x["key"] for x in DATA["train"]}
    for a, b, c in zip(fresh, first_epoch, later_epoch):
        assert torch.equal(a.first, b.first) and torch.equal(a.first, c.first) and torch.equal(a.second, c.second)
