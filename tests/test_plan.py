"""`onereward plan`: parameter counts of the real models (meta device), arithmetic against tiny runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from onereward import cli, plan
from onereward.judge.train import TrainJudgeConfig
from onereward.rl.config import LoraSpec, TrainPolicyConfig


def saved_bytes(fn, module) -> int:
    """Bytes autograd saves for the backward of ``fn()``, weights of ``module`` left out, each storage once."""
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in weights:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("name", sorted(plan.PUBLISHED))
def test_parameter_counts_match_the_published_sizes(name):
    n = plan.count(plan.build_meta(name))
    assert abs(n - plan.PUBLISHED[name]) / plan.PUBLISHED[name] < 0.02, (name, n)


def test_meta_models_hold_no_memory():
    tr = plan.build_meta("transformer")
    assert all(p.is_meta for p in tr.parameters())
    assert tr.config.in_channels == 384 and tr.config.num_single_layers == 38


# ---- tiny models, trained one step as the trainers do, against the plan's arithmetic ---------


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=384, out_channels=64, num_layers=1, num_single_layers=1,
                                  attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64,
                                  pooled_projection_dim=32, guidance_embeds=True,
                                  axes_dims_rope=(8, 12, 12)).to(torch.bfloat16)


def _flux_inputs(tr, batch=1, side=8, text=16):
    g = torch.Generator().manual_seed(0)
    n = side * side
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(side * 1.0), torch.arange(side * 1.0),
                                         indexing="ij"), -1).reshape(-1, 3)
    return dict(hidden_states=torch.randn(batch, n, 384, generator=g).bfloat16(),
                encoder_hidden_states=torch.randn(batch, text, 64, generator=g).bfloat16(),
                pooled_projections=torch.randn(batch, 32, generator=g).bfloat16(),
                timestep=torch.full((batch,), 0.5).bfloat16(), guidance=torch.ones(batch),
                img_ids=img_ids, txt_ids=torch.zeros(text, 3), return_dict=False)


def _measured_step(model, loss_fn):
    """(weight bytes, gradient bytes, AdamW state bytes) after one AdamW step."""
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-4)
    loss_fn().float().pow(2).mean().backward()
    opt.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    states = [v for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    return nbytes(model.parameters()), nbytes(p.grad for p in trained), nbytes(states)


def _items(setting) -> dict[str, float]:
    return {i.name: i.gpu for i in setting.items}


def _tiny_policy_sizes(tr, lora: LoraSpec) -> plan.Sizes:
    return plan.Sizes(*plan.policy_sizes(tr, lora.target_modules, lora.rank), 0, 0, 0, 0, 0)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_policy_weights_gradients_and_adamw_bytes_match_a_tiny_run(finetune):
    from peft import LoraConfig

    tr = _tiny_flux()
    lora = LoraSpec(rank=4)
    sizes = _tiny_policy_sizes(tr, lora)
    if finetune == "lora":  # as train_policy's setup_policy: adapters, trained tensors as fp32 masters
        tr.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, init_lora_weights="gaussian",
                                  target_modules=list(lora.target_modules)))
        assert sum(p.numel() for p in tr.parameters() if p.requires_grad) == sizes.transformer_lora
    else:
        tr.requires_grad_(True)
    for p in tr.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    def forward():  # fp32 masters run in bf16 under autocast (accelerate's mixed precision)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tr(**_flux_inputs(tr))[0]

    weights, grads, adam = _measured_step(tr, forward)
    cfg = dataclasses.replace(TrainPolicyConfig(), finetune=finetune, lora=lora)
    items = _items(plan.policy_setting(sizes, cfg, finetune, 1, 64, 56))
    assert (items["policy weights"], items["gradients"], items["optimiser (AdamW)"]) == (weights, grads, adam)
    assert items["EMA"] == grads  # one fp32 copy of what is trained (rl/ema.py Snapshot)
    # Alg. 1's reference: LoRA switches the adapters off (no copy); full keeps the base in bf16
    assert items["reference"] == (0 if finetune == "lora" else grads / 2)


def _tiny_judge(layers=1, depth=1):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=224, num_hidden_layers=layers, num_attention_heads=7, num_key_value_heads=1,
                         intermediate_size=1184, vocab_size=1000, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=depth, hidden_size=80, intermediate_size=214, num_heads=4, out_hidden_size=224,
                           fullatt_block_indexes=[0]))
    return Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16)


def _judge_forward(model, tokens=64):
    """Language model and vision tower (all weights get a gradient, as with image queries)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 900, (2, tokens), generator=g)
    px = torch.randn(64, 3 * 2 * 14 * 14, generator=g).bfloat16()
    visual = model.get_base_model().model.visual if hasattr(model, "get_base_model") else model.model.visual

    def run():
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        out = visual(px, grid_thw=torch.tensor([[1, 8, 8]]))
        vis = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.cat([logits.flatten(), vis.flatten()])

    return run


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_judge_weights_gradients_and_adamw_bytes_match_a_tiny_run(finetune):
    from peft import LoraConfig, get_peft_model

    model = _tiny_judge()
    jcfg = dataclasses.replace(TrainJudgeConfig(), finetune=finetune)
    sizes = plan.Sizes(0, 0, 0, 0, 0, 0, plan.count(model), plan.lora_count(model, jcfg.lora_targets, jcfg.lora_rank))
    if finetune == "lora":  # as train_judge's make_trainable: PEFT keeps the adapters in fp32
        model = get_peft_model(model, LoraConfig(r=jcfg.lora_rank, lora_alpha=jcfg.lora_alpha,
                                                 lora_dropout=jcfg.lora_dropout, target_modules=list(jcfg.lora_targets)))
    else:
        model.requires_grad_(True)
    model.train()
    weights, grads, adam = _measured_step(model, _judge_forward(model))
    items = _items(plan.judge_setting(sizes, jcfg, finetune, 56))
    assert (items["judge weights"], items["gradients"], items["optimiser (AdamW)"]) == (weights, grads, adam)


# ---- activation constants, measured again on tiny layers of the same kind -------------------


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_flux_block_activation_bytes_match_the_plan(mode):
    from peft import LoraConfig

    tr = _tiny_flux()
    if mode == "lora":
        tr.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                  target_modules=list(LoraSpec().target_modules)))
        for p in tr.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        tr.requires_grad_(True)
    tr.train()
    h, batch, side, text = 128, 2, 32, 128
    g = torch.Generator().manual_seed(0)
    trained_inputs = mode == "full"  # under LoRA the text stream and temb come from frozen layers
    x = torch.randn(batch, side * side, h, generator=g).bfloat16().requires_grad_(True)
    c = torch.randn(batch, text, h, generator=g).bfloat16().requires_grad_(trained_inputs)
    temb = torch.randn(batch, h, generator=g).bfloat16().requires_grad_(trained_inputs)
    ids = torch.cat([torch.zeros(text, 3), _flux_inputs(tr, side=side)["img_ids"]])
    rope = tr.pos_embed(ids)
    tokens = batch * (side * side + text)
    for kind, block in (("flux_double", tr.transformer_blocks[0]), ("flux_single", tr.single_transformer_blocks[0])):
        got = saved_bytes(lambda: block(hidden_states=x, encoder_hidden_states=c, temb=temb, image_rotary_emb=rope), tr)
        assert got / (tokens * h) == pytest.approx(plan.ACTIVATION_BYTES[(kind, mode)], rel=0.1), kind


def _per_layer(build, measure) -> float:
    """Bytes of one more layer: (4 layers - 2 layers) / 2, so embeddings and heads cancel."""
    return (measure(build(4)) - measure(build(2))) / 2


@pytest.mark.parametrize("mode", ["full", "lora", "frozen"])
def test_qwen_layer_activation_bytes_match_the_plan(mode):
    from peft import LoraConfig, get_peft_model

    jcfg = TrainJudgeConfig()
    tokens = 2 * 256

    def build(layers):
        m = _tiny_judge(layers=layers).train()
        m.requires_grad_(mode == "full")
        if mode == "lora":
            m = get_peft_model(m, LoraConfig(r=jcfg.lora_rank, lora_alpha=jcfg.lora_alpha,
                                             lora_dropout=jcfg.lora_dropout, target_modules=list(jcfg.lora_targets)))
        return m

    def measure(m):
        emb = m.get_input_embeddings()
        ids = torch.randint(0, 900, (2, tokens // 2), generator=torch.Generator().manual_seed(0))
        x = emb(ids).detach().requires_grad_(mode != "lora")  # frozen: gradient to the inputs (the judge in RL)
        return saved_bytes(lambda: m(inputs_embeds=x, use_cache=False, logits_to_keep=1), m)

    got = _per_layer(build, measure) / (tokens * 224)
    assert got == pytest.approx(plan.ACTIVATION_BYTES[("qwen_text", mode)], rel=0.1)
    if mode == "lora":
        return

    def build_vision(depth):
        m = _tiny_judge(depth=depth).train()
        m.requires_grad_(mode == "full")
        return m

    grid = torch.tensor([[1, 16, 16]])  # one 224 px image: 16 x 16 patches of 14 px

    def measure_vision(m):
        px = torch.randn(256, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0)).bfloat16().requires_grad_(True)
        return saved_bytes(lambda: m.model.visual(px, grid_thw=grid), m)

    got = _per_layer(build_vision, measure_vision) / (256 * 80)
    assert got == pytest.approx(plan.ACTIVATION_BYTES[("qwen_vision", mode)], rel=0.1)


def test_vae_decode_bytes_per_pixel_match_the_plan():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**plan.FLUX_VAE).to(torch.bfloat16).requires_grad_(False).train()  # the real widths, 84M
    side = 32
    z = torch.randn(1, 16, side // 8, side // 8).bfloat16().requires_grad_(True)
    per_pixel = plan.VAE_DECODE_BYTES_PER_PIXEL
    assert saved_bytes(lambda: vae.decode(z).sample, vae) / side**2 == pytest.approx(per_pixel["all"], rel=0.05)
    vae.enable_gradient_checkpointing()
    assert saved_bytes(lambda: vae.decode(z).sample, vae) / side**2 == pytest.approx(per_pixel["kept"], rel=0.05)


def test_checkpointed_stack_keeps_only_layer_inputs_and_one_layer():
    assert plan.stack_activations(10, 100, 8, 50.0, True) == 10 * 100 * 8 * 2 + 100 * 8 * 50.0
    assert plan.stack_activations(10, 100, 8, 50.0, False) == 10 * 100 * 8 * 50.0


def test_fsdp_divides_the_fp32_copies_over_gpus():
    sizes = plan.Sizes(8_000, 80, 1_000, 10, 20, 30, 4_000, 40)
    cfg = dataclasses.replace(TrainPolicyConfig(), batch_size=1)
    one = _items(plan.policy_setting(sizes, cfg, "full", 1, 64, 56))
    eight = _items(plan.policy_setting(sizes, cfg, "full", 8, 64, 56))
    for name in ("policy weights", "gradients", "optimiser (AdamW)", "EMA", "reference"):
        assert eight[name] * 8 == one[name], name
    assert one["FSDP working set"] == 0 and eight["FSDP working set"] == 1_000 * (2 * 2 + 4)
    dynamic = _items(plan.policy_setting(sizes, dataclasses.replace(cfg, algorithm="dynamic"), "full", 8, 64, 56))
    assert dynamic["reference"] == 0  # Alg. 2: the EMA is the reference
    off = plan.policy_setting(sizes, cfg, "full", 8, 64, 56, offload={"ema", "text_encoders"})
    assert _items(off)["EMA"] == 0 and off.host == eight["EMA"] + (20 + 30) * 2


# ---- the command ---------------------------------------------------------------------------


def _plan(capsys, *args) -> tuple[int, str, str]:
    rc = cli.main(["plan", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_plan_command_says_what_fits_and_what_does_not(capsys):
    rc, out, _ = _plan(capsys, "--gpus", 1, "--resolution", 512)
    assert rc == 0
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if "FIT" in line or "fits:" in line}
    lora = next(v for k, v in lines.items() if k.startswith("LoRA r"))
    full = next(v for v in out.splitlines() if v.strip().startswith("full") and "one GPU" in v and "no FSDP" in v)
    assert "fits:" in lora
    assert "DOES NOT FIT one 80 GiB GPU" in full and "GiB over" in full
    assert "Qwen2.5-VL-7B 8.29B" in out and "transformer 11.90B" in out

    rc, out, _ = _plan(capsys, "--gpus", 8, "--resolution", 512)
    full8 = [line for line in out.splitlines() if line.strip().startswith("full, FSDP x8")]
    assert rc == 0 and full8 and "fits:" in full8[0]


def test_plan_command_bad_input_is_one_line(capsys, tmp_path):
    for args, expect in ((["--gpus", 0], "--gpus must be >= 1"), (["--resolution", 500], "multiple of 16"),
                         (["--offload", "judge"], "unknown component"),
                         (["--params", tmp_path / "none.yaml"], "params file not found")):
        rc, out, err = _plan(capsys, *args)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and expect in err, (args, err)


@pytest.mark.parametrize("resolution,side", [(512, 504), (1024, 980)])
def test_plan_judges_real_images_at_the_processors_size(resolution, side):
    """The plan's judge input for the real profile is what Qwen2-VL's processor makes of a square
    image under judge_base's pixel budget (vision tokens: (side / 28)^2)."""
    import numpy as np
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from onereward.config import load_params
    from onereward.judge.params import merged_section
    from onereward.plan import judge_side

    section = merged_section("judge_base", "real", load_params())
    assert judge_side(section, resolution) == side
    proc = Qwen2VLImageProcessorPil(size={"shortest_edge": section["min_pixels"], "longest_edge": section["max_pixels"]})
    grid = proc(images=[Image.fromarray(np.zeros((resolution, resolution, 3), np.uint8))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, side // 14, side // 14]]
