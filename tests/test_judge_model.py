"""The tiny judge: built in code, saved as safetensors, P(Yes) as documented, batching, gradients."""

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from onereward.judge.model import Judge, JudgeMeta
from onereward.judge.queries import render_query
from onereward.judge.tiny import SPECIAL_TOKENS, TinyJudgeConfig, save_tiny_judge

REPO = Path(__file__).resolve().parents[1]
RES = 56


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("judge_base")
    save_tiny_judge(TinyJudgeConfig(seed=0), path)
    JudgeMeta(resolution=RES).write(path)
    return path


@pytest.fixture(scope="module")
def judge(base) -> Judge:
    return Judge.load(base)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


QUERIES = [
    render_query("fill", "text_alignment", "a red circle on a long wooden table"),
    render_query("removal", "removal_quality"),
    render_query("extend", "aesthetics"),
]


def test_saved_with_safetensors_only_and_no_remote_code(base):
    names = {p.name for p in base.iterdir()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    config = json.loads((base / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert "auto_map" not in config  # nothing for trust_remote_code to run


def test_loading_refuses_pickled_weights(base, tmp_path):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickled checkpoint
    for f in base.iterdir():
        if f.suffix != ".safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(OSError, match="safetensors"):
        Judge.load(tmp_path)


def test_no_source_file_enables_trust_remote_code():
    pattern = re.compile(r"trust_remote_code\s*=\s*True")
    files = list((REPO / "onereward").rglob("*.py")) + list((REPO / "stages").rglob("*.py"))
    assert files
    offenders = [str(f) for f in files if pattern.search(f.read_text())]
    assert not offenders


def test_tokenizer_round_trips_with_qwen_special_tokens(base):
    tok = AutoTokenizer.from_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    assert config["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    for t in SPECIAL_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1
    assert len(tok.encode("Yes", add_special_tokens=False)) == 1
    assert len(tok.encode("No", add_special_tokens=False)) == 1
    text = "Ünïcode, digits 12345 and {braces}"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False, add_generation_prompt=True,
    )
    assert chat.endswith("<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")


def test_same_seed_same_weights(tmp_path):
    save_tiny_judge(TinyJudgeConfig(seed=3), tmp_path / "a")
    save_tiny_judge(TinyJudgeConfig(seed=3), tmp_path / "b")
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_initializer_range_sets_every_weight_of_both_towers_and_is_saved(tmp_path, std):
    save_tiny_judge(TinyJudgeConfig(seed=1, initializer_range=std), tmp_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path)
    weights = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    assert any(".visual." in n for n in weights) and any("language_model" in n for n in weights)
    for name, w in weights.items():  # linear, embedding and patch-embedding weights alike
        assert abs(float(w.std()) - std) < 0.15 * std, name
    config = model.config
    assert config.text_config.initializer_range == config.vision_config.initializer_range == std


def stock_logits(judge: Judge, base: Path, a: torch.Tensor, b: torch.Tensor, query: str, res: int) -> torch.Tensor:
    """Next-token logits of a plain forward on the stock image processor's input (images ``res`` px)."""
    proc = Qwen2VLImageProcessorPil.from_pretrained(base)
    pil = [Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")) for x in (a, b)]
    vision = proc(images=pil, size={"shortest_edge": res * res, "longest_edge": (res + proc.patch_size) ** 2},
                  return_tensors="pt")
    ids = torch.tensor([judge.query_ids(query)])
    out = judge.model(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=(ids == judge.model.config.image_token_id).long(),
        pixel_values=vision["pixel_values"],
        image_grid_thw=vision["image_grid_thw"],
    )
    return out.logits[0, -1]


def test_p_yes_is_softmax_over_yes_and_no(judge, base):
    """Recompute with the stock image processor and a plain forward: softmax over {Yes, No}."""
    a, b = images(1, 0), images(1, 1)
    query = QUERIES[0]
    p = judge.p_yes(a, b, [query])

    logits = stock_logits(judge, base, a, b, query, RES)
    two = torch.softmax(logits[[judge.yes_id, judge.no_id]], dim=0)
    assert torch.allclose(p, two[:1], atol=1e-5)
    full = torch.softmax(logits, dim=0)[judge.yes_id]
    assert not torch.allclose(p, full.reshape(1), atol=1e-3)  # not the whole-vocabulary softmax
    assert 0.0 < p.item() < 1.0


def test_a_patch_8_judge_sees_64_px_images_at_their_own_pixels(tmp_path):
    """The tiny default: 8 px patches, so a 64 px image becomes 8x8 patches (4x4 merged tokens)
    with no resampling, and the stock processor loaded from the checkpoint agrees."""
    save_tiny_judge(TinyJudgeConfig(seed=0, patch_size=8), tmp_path)
    JudgeMeta(resolution=64).write(tmp_path)
    native = Judge.load(tmp_path)
    a, b = images(1, 0), images(1, 1)
    a = torch.round(a * 255) / 255  # on the uint8 grid: the judge's input is then the image itself
    grid = native.encode_images(a, b)["image_grid_thw"]
    assert grid.tolist() == [[1, 8, 8], [1, 8, 8]]
    assert native.tokens(64, 64) == 16
    values = native.encode_images(a, b)["pixel_values"]
    assert values.shape == (2 * 64, 3 * 2 * 8 * 8)
    p = native.p_yes(a, b, [QUERIES[2]])
    logits = stock_logits(native, tmp_path, a, b, QUERIES[2], 64)
    assert torch.allclose(p, torch.softmax(logits[[native.yes_id, native.no_id]], dim=0)[:1], atol=1e-5)


def test_batched_scores_equal_one_by_one(judge):
    a, b = images(3, 2), images(3, 3)
    batched = judge.score(a, b, QUERIES, batch_size=3)
    single = torch.cat([judge.score(a[i : i + 1], b[i : i + 1], QUERIES[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert batched.std() > 0  # different inputs, different scores


def test_symmetric_score(judge):
    a, b = images(3, 4), images(3, 5)
    s = judge.symmetric_score(a, b, QUERIES)
    expected = 0.5 * (judge.score(a, b, QUERIES) + 1 - judge.score(b, a, QUERIES))
    assert torch.allclose(s, expected, atol=1e-6)
    assert torch.allclose(judge.symmetric_score(b, a, QUERIES), 1 - s, atol=1e-6)


def test_p_yes_is_differentiable_in_the_images(judge):
    a = images(2, 6).requires_grad_(True)
    p = judge.p_yes(a, images(2, 7), QUERIES[:2])
    p.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradient(base):
    plain, ckpt = Judge.load(base), Judge.load(base, gradient_checkpointing=True)
    grads = []
    for j in (plain, ckpt):
        j.model.train()
        x = images(2, 8).requires_grad_(True)
        j.p_yes(x, images(2, 9), QUERIES[:2]).sum().backward()
        grads.append(x.grad)
    assert ckpt.model.is_activation_checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_patch_embedding_as_linear_is_the_stock_convolution(base):
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, use_safetensors=True)
    judge = Judge.load(base)
    embeds = [m.model.visual.patch_embed for m in (stock, judge.model)]
    assert "forward" not in vars(embeds[0]) and "forward" in vars(embeds[1])  # only the judge's is replaced
    x = torch.randn(40, 3 * 2 * 14 * 14)
    outs, grads = [], []
    for embed in embeds:
        xi = x.clone().requires_grad_(True)
        y = embed(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append(y)
        grads.append((xi.grad, embed.proj.weight.grad))
    assert outs[1].shape == outs[0].shape
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for g1, g0 in zip(grads[1], grads[0]):
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-5)


def test_query_must_match_batch(judge):
    with pytest.raises(ValueError, match="queries"):
        judge.p_yes(images(2, 0), images(2, 1), QUERIES[:1])


BUDGET = (56 * 56, 112 * 112)
"""A pixel budget under which the 64 px test images keep their aspect ratio."""


@pytest.fixture(scope="module")
def budget_judge(base, tmp_path_factory) -> Judge:
    path = tmp_path_factory.mktemp("budget")
    for f in base.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    JudgeMeta(resolution=RES, min_pixels=BUDGET[0], max_pixels=BUDGET[1]).write(path)
    return Judge.load(path)


def photo(h: int, w: int, seed: int) -> torch.Tensor:
    """On the uint8 grid, as decoded candidates are."""
    return torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(seed)) / 255.0


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))


@pytest.mark.parametrize("h,w", [(64, 128), (96, 48), (40, 200)])
def test_non_square_image_keeps_its_aspect_as_the_stock_processor_does(budget_judge, base, h, w):
    """The judge's size rule and pixels match Qwen2-VL's processor with the same pixel budget;
    the query gets as many image placeholders as the image has tokens."""
    a, b = photo(h, w, 1), photo(h, w, 2)
    proc = Qwen2VLImageProcessorPil.from_pretrained(base)
    ref = proc(images=[_pil(a), _pil(b)], size={"shortest_edge": BUDGET[0], "longest_edge": BUDGET[1]},
               return_tensors="pt")
    ours = budget_judge.encode_images(a, b)
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert (ours["pixel_values"] - ref["pixel_values"]).abs().max() <= 1e-4
    th, tw = budget_judge.input_size(h, w)
    assert th != tw and abs(th / tw - h / w) < 0.35 * h / w  # aspect kept, not squashed to a square
    ids = torch.tensor([budget_judge.query_ids(QUERIES[0], budget_judge.image_tokens(ours["image_grid_thw"])[0])])
    out = budget_judge.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                             mm_token_type_ids=(ids == budget_judge.image_token_id).long(),
                             pixel_values=ref["pixel_values"], image_grid_thw=ref["image_grid_thw"])
    stock_p = torch.softmax(out.logits[0, -1][[budget_judge.yes_id, budget_judge.no_id]], dim=0)[0]
    assert torch.allclose(budget_judge.p_yes(a, b, QUERIES[:1]), stock_p.reshape(1), atol=1e-5)


def test_a_batch_of_mixed_sizes_scores_as_each_pair_alone(budget_judge):
    sizes = [(64, 64), (64, 128), (96, 48)]
    first = [photo(h, w, i)[0] for i, (h, w) in enumerate(sizes)]
    second = [photo(h, w, 10 + i)[0] for i, (h, w) in enumerate(sizes)]
    mixed = budget_judge.score(first, second, QUERIES, batch_size=3)
    alone = torch.cat([budget_judge.score(first[i][None], second[i][None], QUERIES[i:i + 1]) for i in range(3)])
    assert torch.allclose(mixed, alone, atol=1e-5)
    grid = budget_judge.encode_images(first, second)["image_grid_thw"]
    assert len({tuple(g) for g in grid.tolist()}) == 3  # three sizes, three vision grids


def test_rl_reward_path_on_non_square_images_equals_p_yes(budget_judge):
    from onereward.rl.judging import pair_p_yes, vision_features

    a, b = photo(64, 128, 3).repeat(2, 1, 1, 1), photo(64, 128, 4).repeat(2, 1, 1, 1)
    p = pair_p_yes(budget_judge, vision_features(budget_judge, a), vision_features(budget_judge, b), [0, 1], QUERIES[:2])
    assert torch.allclose(p, budget_judge.p_yes(a, b, QUERIES[:2]), atol=1e-5)


def test_square_default_is_the_resolution_whatever_the_input_side(judge):
    assert [judge.input_size(s, s) for s in (32, 64, 57, 500)] == [(RES, RES)] * 4


def test_attention_kernel_is_chosen_by_params_and_scores_agree(base):
    from onereward.judge.model import attention_kernel

    assert attention_kernel("auto", "cpu") == "sdpa"  # flash-attn only on CUDA
    eager, sdpa = Judge.load(base, attn_implementation="eager"), Judge.load(base)
    assert eager.model.config._attn_implementation == "eager" and sdpa.model.config._attn_implementation == "sdpa"
    a, b = images(3, 20), images(3, 21)
    assert torch.allclose(eager.score(a, b, QUERIES), sdpa.score(a, b, QUERIES), atol=1e-5)
