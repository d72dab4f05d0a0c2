"""The tiny FLUX.1-Fill and the policy adapter against stock diffusers (tiny, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxFillPipeline, FluxTransformer2DModel

from onereward.policy.adapter import FillPolicy
from onereward.policy.inference import InferenceConfig, generate, task_prompts
from onereward.policy.tiny import T5_MAX_LENGTH, build_tiny_pipeline, save_pipeline, t5_tokenizer

H, W = 64, 48  # non-square on purpose: catches height/width mix-ups in packing


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "tiny_flux_fill"
    save_pipeline(build_tiny_pipeline(seed=0), path)
    return path


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return FillPolicy.load(str(tiny_dir))


def _inputs(batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, H, W, generator=g)
    masks = torch.zeros(batch, 1, H, W)
    masks[..., 16:40, 8:32] = 1
    return images, masks


def _embedded_prompts() -> set[str]:
    """Every prompt the embedded default gives the generator: content, task presets, negatives."""
    from onereward.config import load_params
    from onereward.data.scenes import COLORS, SHAPES, WORDS, Content
    from onereward.tasks import TASKS

    params = load_params()
    prompts = {Content("object", color=c, shape=s).prompt() for c in COLORS for s in SHAPES}
    prompts |= {Content("text", word=w).prompt() for w in WORDS}
    prompts |= {t.fixed_prompt for t in TASKS.values() if t.fixed_prompt}
    prompts |= set(params["synthesize"]["sampling"]["negative_prompts"])
    prompts |= {params["train_policy"]["negative_prompt"], params["evaluate"]["negative_prompt"]}
    return prompts


def test_every_embedded_prompt_fits_the_tiny_t5_length_in_words():
    tok = t5_tokenizer()
    prompts = _embedded_prompts()
    assert len(prompts) > 30
    for p in prompts:
        ids = tok(p).input_ids
        assert len(ids) <= T5_MAX_LENGTH - 4, (p, tok.convert_ids_to_tokens(ids))  # whole, with room
        assert len(ids) <= len(p.split()) + 4, (p, tok.convert_ids_to_tokens(ids))  # words, not characters
    # a word outside the vocabulary still encodes, by characters
    assert tok.convert_ids_to_tokens(tok("a mauve kite").input_ids)[:3] == ["\u2581a", "\u2581m", "a"]


def test_saved_layout_is_flux_fill_dev_like(tiny_dir):
    files = {p.relative_to(tiny_dir).as_posix() for p in tiny_dir.rglob("*") if p.is_file()}
    assert "model_index.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files), files
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert any(f.startswith(sub + "/") and f.endswith(".safetensors") for f in files), sub
    tr = FluxTransformer2DModel.from_pretrained(tiny_dir / "transformer")
    assert tr.config.in_channels == 384 and tr.config.out_channels == 64  # 64 noisy + 64 masked + 256 mask
    assert tr.config.guidance_embeds


def test_stock_pipeline_loads_and_generates(tiny_dir):
    pipe = FluxFillPipeline.from_pretrained(str(tiny_dir))
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 16
    images, masks = _inputs()
    out = pipe(prompt="a red circle", image=images, mask_image=masks, height=H, width=W,
               num_inference_steps=2, guidance_scale=30.0, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    assert out.shape == (1, 3, H, W) and torch.isfinite(out).all()
    assert out.std() > 0


def test_generate_without_cfg_equals_stock_call(policy, tiny_dir):
    """Same seed, same generator order: the adapter reproduces FluxFillPipeline bit for bit."""
    pipe = FluxFillPipeline.from_pretrained(str(tiny_dir))
    images, masks = _inputs(2)
    prompts = ["a red circle", "the text \"SUN\""]
    ours = generate(policy, images, masks, prompts, cfg=InferenceConfig(true_cfg=1.0, num_inference_steps=3, seed=7))
    stock = pipe(prompt=prompts, image=images, mask_image=masks, height=H, width=W, num_inference_steps=3,
                 guidance_scale=1.0, generator=torch.Generator().manual_seed(7), output_type="pt",
                 max_sequence_length=policy.max_sequence_length).images
    assert ours.shape == (2, 3, H, W)  # output size = input size
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)


def test_a_seed_per_image_equals_stock_call_with_a_generator_per_image(policy, tiny_dir):
    """Each image's generator is consumed as the stock pipeline consumes it: the posterior sample of
    the image encoding the adapter skips at strength 1 included (evaluation seeds every image)."""
    pipe = FluxFillPipeline.from_pretrained(str(tiny_dir))
    images, masks = _inputs(2)
    prompts = ["a red circle", ""]
    ours = generate(policy, images, masks, prompts, cfg=InferenceConfig(true_cfg=1.0, num_inference_steps=3),
                    seeds=[7, 8])
    stock = pipe(prompt=prompts, image=images, mask_image=masks, height=H, width=W, num_inference_steps=3,
                 guidance_scale=1.0, generator=[torch.Generator().manual_seed(s) for s in (7, 8)], output_type="pt",
                 max_sequence_length=policy.max_sequence_length).images
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)


def test_true_cfg_equals_two_stock_calls_combined(policy, tiny_dir):
    """pred = neg + 4 (pos - neg) per step == one stock step with the prompt and one with "nsfw"
    from the same latents, combined the same way (the Euler update is affine in the velocity)."""
    pipe = FluxFillPipeline.from_pretrained(str(tiny_dir))
    images, masks = _inputs()
    n, scale = 4, 4.0
    x = torch.randn(1, (H // 16) * (W // 16), 64, generator=torch.Generator().manual_seed(3))
    cfg = InferenceConfig(num_inference_steps=n, seed=5)
    assert (cfg.negative_prompt, cfg.true_cfg, cfg.guidance_scale) == ("nsfw", scale, 1.0)
    ours = generate(policy, images, masks, ["a blue square"], cfg=cfg, latents=x, decode=False)

    def stop_after_one(p, i, t, kw):
        p._interrupt = True  # later steps are skipped: this call performs exactly step i
        return {}

    def stock_step(prompt, latents, i):
        return pipe(prompt=prompt, image=images, mask_image=masks, height=H, width=W, latents=latents,
                    strength=(n - i) / n, num_inference_steps=n, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(5), output_type="latent",
                    max_sequence_length=policy.max_sequence_length, callback_on_step_end=stop_after_one).images

    for i in range(n):
        pos, neg = stock_step("a blue square", x, i), stock_step("nsfw", x, i)
        x = neg + scale * (pos - neg)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)
    plain = generate(policy, images, masks, ["a blue square"], cfg=InferenceConfig(num_inference_steps=n, seed=5, true_cfg=1.0),
                     latents=torch.randn(x.shape, generator=torch.Generator().manual_seed(3)), decode=False)
    assert (plain - ours).abs().max() > 1e-3  # the guidance actually changes the result


def test_one_step_x0_has_gradients_through_vae_decode(policy):
    images, masks = _inputs(2)
    cond, noise = policy.prepare(images, masks, ["a red circle", "remove"], torch.Generator().manual_seed(0))
    n, t = 4, 2
    x_t = policy.denoise(noise, cond, n, stop=t)
    assert not x_t.requires_grad
    tr = policy.transformer
    tr.requires_grad_(True)
    try:
        img = policy.decode(policy.predict_x0(x_t, t, cond, n), H, W)
        assert img.shape == (2, 3, H, W) and img.requires_grad
        img.mean().backward()
        grads = [p.grad for p in tr.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        assert all(p.grad is None for p in policy.vae.parameters())  # frozen VAE: passes gradient only
    finally:
        tr.zero_grad(set_to_none=True)
        tr.requires_grad_(False)


def test_x0_at_last_index_equals_full_euler_denoise(policy):
    """The last Euler step goes to sigma 0, so it *is* the one-step x0 prediction."""
    images, masks = _inputs()
    cond, noise = policy.prepare(images, masks, ["a red circle"], torch.Generator().manual_seed(1))
    n = 3
    with torch.no_grad():
        full = policy.denoise(noise, cond, n)
        x0 = policy.predict_x0(policy.denoise(noise, cond, n, stop=n - 1), n - 1, cond, n)
    torch.testing.assert_close(x0, full, rtol=1e-5, atol=1e-5)


def test_sizes_must_be_multiples_of_16(policy):
    images = torch.rand(1, 3, 40, 48)
    with pytest.raises(ValueError, match="multiple of 16"):
        generate(policy, images, torch.ones(1, 1, 40, 48), ["x"], cfg=InferenceConfig(num_inference_steps=1))


def test_task_presets_use_registry_prompts():
    assert task_prompts(["removal", "extend", "extend", "fill"], ["ignored", None, "a cat", "a dog"]) == [
        "remove", "high-definition, perfect composition", "a cat", "a dog"]


def test_anchor_drift_is_zero_against_itself_and_pulls_back_a_moved_policy(policy):
    """train_policy.anchor_weight: the squared distance of the one-step x0 to the reference's."""
    import copy

    from onereward.rl.config import TrainPolicyConfig
    from onereward.rl.rollout import Rollouts

    rollouts = Rollouts(policy, TrainPolicyConfig(num_inference_steps=4, t_range=(1, 2)))
    images, masks = _inputs(2)
    args = (images, masks, ["a red circle", "remove"], [3, 4], 2)
    tr = policy.transformer
    _, same = rollouts.one_step_x0(*args, tr, tr, anchor_model=tr)
    assert same.shape == (2,) and torch.equal(same, torch.zeros(2))
    _, none = rollouts.one_step_x0(*args, tr, tr)
    assert none is None  # no anchor: the paper's loss

    moved = copy.deepcopy(tr)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    moved.requires_grad_(True)
    _, drift = rollouts.one_step_x0(*args, moved, moved, anchor_model=tr)
    assert (drift > 0).all()
    drift.mean().backward()
    step = [(p, p.grad) for p in moved.parameters() if p.grad is not None]
    assert step
    with torch.no_grad():  # a small step down the anchor's gradient brings the policy back
        for p, g in step:
            p.sub_(1e-3 * g / max(float(g.norm()), 1e-12))
        _, after = rollouts.one_step_x0(*args, moved, moved, anchor_model=tr)
    assert float(after.mean()) < float(drift.mean())
