"""Memory plan: bytes per GPU of ``train_policy`` and ``train_judge`` at real scale, by arithmetic.

    onereward plan [--gpus N] [--resolution 512] [--params params.yaml]

Nothing here is measured on a GPU. Parameter counts come from the real architectures
(FLUX.1-Fill-dev: transformer, VAE, CLIP-L, T5-XXL; Qwen2.5-VL-7B-Instruct) built on the
meta device from their published configs, written below: no download, no memory. Bytes per
GPU, by component:

- weights: frozen weights in bf16 (2 B); trained ones as fp32 masters (4 B), as train_policy
  keeps them; train_judge trains the model in the dtype it loads (bf16), LoRA adapters in
  fp32 (PEFT's default). Full fine-tuning with N GPUs shards the fp32 weights, gradients,
  optimiser state, EMA and reference over them (FSDP), plus a working set of two gathered
  blocks in bf16 and one unsharded fp32 block gradient; LoRA keeps a full copy per process.
- gradients: one per trained weight, in its dtype. Optimiser: AdamW, two states per trained
  weight in its dtype. EMA: one fp32 copy of the trained weights; Alg. 1's reference: none
  under LoRA (adapters off), the base in bf16 under full fine-tuning (Alg. 2's reference is the
  EMA). ``--offload`` or train_policy's ``ema_device: cpu`` / ``offload_text_encoders`` move them,
  or the text encoders, to host memory.
- activations (bf16, memory-efficient attention, so no tokens^2 term): a layer keeps
  ``c x tokens x width`` bytes for its backward, with ``c`` from :data:`ACTIVATION_BYTES`;
  with gradient checkpointing every layer keeps only its input (``2 x tokens x width``) and
  one layer at a time is recomputed: ``layers x 2 x T x h + c x T x h``.
  Tokens: the policy sees ``(resolution / 16)^2`` image tokens + 512 T5 tokens per row, one
  row per condition (two with true CFG > 1); the judge ``2 x (judge resolution / 28)^2``
  image tokens + ~128 text tokens per query, four queries per condition in RL (fill's
  dimensions, the most of any task), and ``(judge resolution / 14)^2`` vision patches per
  image, each image once per step, the reference without gradient. The VAE decoder's
  bytes per output pixel are in :data:`VAE_DECODE_BYTES_PER_PIXEL`. Transient no-grad
  rollouts and activation gradients (a few layer inputs) are left out.

A setting fits when its total plus :data:`RESERVE` (CUDA context, NCCL buffers, allocator
fragmentation) is within the GPU's memory.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from onereward.tasks import TASKS

GiB = 2**30
BF16, FP32 = 2, 4
RESERVE = 4 * GiB
"""Left free on every GPU: CUDA context, NCCL buffers, allocator fragmentation."""
OFFLOADABLE = ("ema", "reference", "text_encoders")

# ---- the published configs (diffusers / transformers config.json of each repository) -------

FLUX_FILL_TRANSFORMER = dict(  # black-forest-labs/FLUX.1-Fill-dev, transformer/config.json
    patch_size=1, in_channels=384, out_channels=64, num_layers=19, num_single_layers=38,
    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
    pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(  # black-forest-labs/FLUX.1-Fill-dev, vae/config.json
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)
CLIP_L = dict(  # text_encoder/config.json (openai/clip-vit-large-patch14's text tower)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
)
T5_XXL = dict(  # text_encoder_2/config.json (google/t5-v1_1-xxl's encoder)
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)
QWEN25_VL_7B = dict(  # Qwen/Qwen2.5-VL-7B-Instruct, config.json
    text_config=dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
        rope_theta=1e6, tie_word_embeddings=False, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
    ),
    vision_config=dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, out_hidden_size=3584,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
    ),
    tie_word_embeddings=False,
)
PUBLISHED = {"transformer": 11.9e9, "vae": 83.8e6, "clip": 123.1e6, "t5": 4.76e9, "judge": 8.29e9}
"""Parameter counts as the model cards and papers give them."""

T5_TOKENS = 512
"""FLUX.1-Fill-dev's max_sequence_length (its tokenizer's length)."""
JUDGE_TEXT_TOKENS = 128
"""Chat scaffolding, query template and user prompt of one judge query (an upper estimate)."""
QUERIES_PER_CONDITION = max(len(t.dimensions) for t in TASKS.values())

ACTIVATION_BYTES: dict[tuple[str, str], float] = {
    # bytes one layer saves for its backward, per token and per unit of its width, bf16, by
    # what is trained: measured with autograd's saved-tensor hooks on small layers of the same
    # kind and width ratios (tests/test_plan.py measures them again). "lora": the trainers'
    # adapters (fp32, so their inputs are saved again in fp32); "frozen": gradient to the
    # inputs only (the judge in RL).
    ("flux_double", "full"): 59.2,
    ("flux_double", "lora"): 66.7,
    ("flux_single", "full"): 51.4,
    ("flux_single", "lora"): 44.4,
    ("qwen_text", "full"): 63.0,
    ("qwen_text", "lora"): 77.6,
    ("qwen_text", "frozen"): 44.4,
    ("qwen_vision", "full"): 51.7,
    ("qwen_vision", "frozen"): 36.4,
}
VAE_DECODE_BYTES_PER_PIXEL = {"all": 11377, "kept": 1633, "recompute": 5376}
"""FLUX VAE decoder in bf16, frozen, gradient to the latents, per output pixel: all it saves;
with checkpointing what it keeps, and the largest block recomputed (the last up block)."""


# ---- parameter counts on the meta device ----------------------------------------------------


def build_meta(name: str):
    """One of the real models with meta tensors: shapes without memory."""
    import torch

    with torch.device("meta"):
        if name == "transformer":
            from diffusers import FluxTransformer2DModel

            return FluxTransformer2DModel(**FLUX_FILL_TRANSFORMER)
        if name == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL(**FLUX_VAE)
        if name == "clip":
            from transformers import CLIPTextConfig, CLIPTextModel

            return CLIPTextModel(CLIPTextConfig(**CLIP_L))
        if name == "t5":
            from transformers import T5Config, T5EncoderModel

            return T5EncoderModel(T5Config(**T5_XXL))
        if name == "judge":
            from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

            return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**QWEN25_VL_7B))
    raise KeyError(f"unknown model {name!r}; known: {sorted(PUBLISHED)}")


def count(module) -> int:
    """Parameters (tied ones once)."""
    return sum(p.numel() for p in module.parameters())


def lora_count(module, targets, rank: int) -> int:
    """LoRA parameters PEFT adds: ``rank x (in + out)`` per Linear whose name is a target or ends in ``.target``."""
    import torch

    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    )


@dataclass(frozen=True)
class Sizes:
    """Parameter counts the plan needs."""

    transformer: int
    """FLUX.1-Fill transformer."""
    transformer_lora: int
    """LoRA parameters on it for train_policy's rank and targets."""
    transformer_block: int
    """Largest transformer block: FSDP's unit of gathering."""
    vae: int
    clip: int
    t5: int
    judge: int
    """Qwen2.5-VL (language model, vision tower, LM head)."""
    judge_lora: int
    """LoRA parameters on it for train_judge's rank and targets."""


def policy_sizes(transformer, lora_targets, lora_rank: int) -> tuple[int, int, int]:
    """(all, LoRA, largest block) of a FLUX transformer module (real on meta, or tiny)."""
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    return count(transformer), lora_count(transformer, lora_targets, lora_rank), max(count(b) for b in blocks)


def real_sizes(policy_targets, policy_rank: int, judge_targets, judge_rank: int) -> Sizes:
    tr = build_meta("transformer")
    judge = build_meta("judge")
    return Sizes(*policy_sizes(tr, policy_targets, policy_rank), count(build_meta("vae")), count(build_meta("clip")),
                 count(build_meta("t5")), count(judge), lora_count(judge, judge_targets, judge_rank))


# ---- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    name: str
    gpu: float
    """Bytes per GPU."""
    host: float = 0.0
    """Bytes of host memory per process (offloaded)."""


@dataclass(frozen=True)
class Setting:
    """One column of the plan: a fine-tuning mode on a number of GPUs."""

    title: str
    items: list[Item]
    active: bool = False
    """Whether params.yaml selects this mode."""
    notes: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> float:
        return sum(i.gpu for i in self.items)

    @property
    def host(self) -> float:
        return sum(i.host for i in self.items)

    def verdict(self, capacity: float) -> str:
        need, cap = self.gpu + RESERVE, f"{capacity / GiB:g}"
        if need <= capacity:
            return f"fits: {gib(need)} of {cap} GiB per GPU (with {gib(RESERVE)} GiB reserve)"
        return (f"DOES NOT FIT one {cap} GiB GPU: needs {gib(need)} GiB per GPU "
                f"(with {gib(RESERVE)} GiB reserve), {gib(need - capacity)} GiB over")


def gib(n: float) -> str:
    return f"{n / GiB:.1f}"


def stack_activations(layers: int, tokens: int, width: int, per_token: float, checkpointed: bool) -> float:
    """Bytes a stack of layers keeps for its backward (formula in the module docstring)."""
    if checkpointed:
        return layers * tokens * width * BF16 + tokens * width * per_token
    return layers * tokens * width * per_token


def _placed(name: str, nbytes: float, offload: set[str], key: str) -> Item:
    return Item(name, 0.0, nbytes) if key in offload else Item(name, nbytes)


def policy_setting(sizes: Sizes, cfg, finetune: str, gpus: int, resolution: int, judge_resolution: int,
                   offload: set[str] = frozenset()) -> Setting:
    """train_policy per GPU: ``cfg`` is a TrainPolicyConfig; full fine-tuning is FSDP-sharded over ``gpus``."""
    lora = finetune == "lora"
    trained = sizes.transformer_lora if lora else sizes.transformer
    shard = 1 if lora else gpus
    fsdp = shard > 1
    weights = (sizes.transformer * BF16 if lora else 0) + trained * FP32 / shard
    items = [
        Item("policy weights", weights),
        Item("FSDP working set", sizes.transformer_block * (2 * BF16 + FP32) if fsdp else 0),
        Item("gradients", trained * FP32 / shard),
        Item("optimiser (AdamW)", 2 * trained * FP32 / shard),
        _placed("EMA", trained * FP32 / shard, offload, "ema"),
        # Alg. 1's frozen reference: LoRA switches the adapters off (no copy); full fine-tuning
        # keeps the base's trained tensors in the model's dtype (onereward/rl/ema.py)
        _placed("reference", trained * BF16 / shard if cfg.algorithm == "reference_ema" and not lora else 0,
                offload, "reference"),
        # while a snapshot runs, the live trained tensors (full FT: its shards) are set aside in
        # fp32 (ema.Snapshot.bind); LoRA's Alg. 1 reference switches adapters off instead
        Item("snapshot in use (transient)", 0 if lora and cfg.algorithm == "reference_ema" else trained * FP32 / shard),
        Item("VAE", sizes.vae * BF16),
        _placed("text encoders", (sizes.clip + sizes.t5) * BF16, offload, "text_encoders"),
        Item("judge (frozen)", sizes.judge * BF16),
    ]
    ckpt = cfg.gradient_checkpointing
    mode = "lora" if lora else "full"
    rows = cfg.batch_size * (2 if cfg.true_cfg > 1 else 1)
    tokens = rows * ((resolution // 16) ** 2 + T5_TOKENS)
    width = FLUX_FILL_TRANSFORMER["num_attention_heads"] * FLUX_FILL_TRANSFORMER["attention_head_dim"]
    n2, n1 = FLUX_FILL_TRANSFORMER["num_layers"], FLUX_FILL_TRANSFORMER["num_single_layers"]
    c2, c1 = ACTIVATION_BYTES[("flux_double", mode)], ACTIVATION_BYTES[("flux_single", mode)]
    if ckpt:
        policy_act = stack_activations(n2 + n1, tokens, width, max(c1, c2), True)
    else:
        policy_act = stack_activations(n2, tokens, width, c2, False) + stack_activations(n1, tokens, width, c1, False)
    v = VAE_DECODE_BYTES_PER_PIXEL
    vae_act = cfg.batch_size * resolution**2 * (v["kept"] + v["recompute"] if ckpt else v["all"])
    items += [Item("activations: transformer x0 step", policy_act), Item("activations: VAE decode", vae_act)]
    items += judge_activations(cfg.batch_size * QUERIES_PER_CONDITION, cfg.batch_size, judge_resolution, "frozen", ckpt)
    notes = [f"batch {cfg.batch_size} per GPU, {rows} transformer rows (true CFG {cfg.true_cfg:g}), "
             f"{cfg.algorithm}, gradient checkpointing {'on' if ckpt else 'off'}"]
    if not lora and gpus == 1:
        notes.append("full fine-tuning on one GPU: no FSDP, every fp32 copy whole")
    title = f"LoRA r{cfg.lora.rank}" if lora else (f"full, FSDP x{gpus}" if fsdp else "full")
    return Setting(title, items, active=cfg.finetune == finetune, notes=notes)


def judge_activations(queries: int, images: int, resolution: int, mode: str, ckpt: bool) -> list[Item]:
    """The judge's language model over ``queries`` rows and its vision tower over ``images`` images."""
    text, vision = QWEN25_VL_7B["text_config"], QWEN25_VL_7B["vision_config"]
    tokens = queries * (2 * (resolution // 28) ** 2 + JUDGE_TEXT_TOKENS)
    lm = stack_activations(text["num_hidden_layers"], tokens, text["hidden_size"], ACTIVATION_BYTES[("qwen_text", mode)], ckpt)
    out = [Item("activations: judge language model", lm)]
    if images:
        patches = images * (resolution // 14) ** 2
        out.append(Item("activations: judge vision tower", stack_activations(
            vision["depth"], patches, vision["hidden_size"], ACTIVATION_BYTES[("qwen_vision", mode)], ckpt)))
    return out


def judge_setting(sizes: Sizes, cfg, finetune: str, resolution: int) -> Setting:
    """train_judge (one process): ``cfg`` is a TrainJudgeConfig."""
    lora = finetune == "lora"
    if lora:  # bf16 base, fp32 adapters with fp32 gradients and AdamW states
        items = [Item("judge weights", sizes.judge * BF16 + sizes.judge_lora * FP32),
                 Item("gradients", sizes.judge_lora * FP32), Item("optimiser (AdamW)", 2 * sizes.judge_lora * FP32)]
    else:  # the bf16 model as loaded: bf16 gradients and AdamW states
        items = [Item("judge weights", sizes.judge * BF16), Item("gradients", sizes.judge * BF16),
                 Item("optimiser (AdamW)", 2 * sizes.judge * BF16)]
    # LoRA trains the language model only: the vision tower needs no gradient at all
    items += judge_activations(cfg.batch_size, 0 if lora else 2 * cfg.batch_size, resolution,
                               "lora" if lora else "full", cfg.gradient_checkpointing)
    notes = [f"batch {cfg.batch_size} query rows, gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}"]
    return Setting(f"LoRA r{cfg.lora_rank}" if lora else "full", items, active=cfg.finetune == finetune, notes=notes)


@dataclass(frozen=True)
class Plan:
    gpus: int
    resolution: int
    judge_resolution: int
    capacity: float
    offload: frozenset
    sizes: Sizes
    policy: list[Setting]
    judge: list[Setting]


def offloaded_by(cfg) -> set[str]:
    """What train_policy's own params keep in host memory (``ema_device``, ``offload_text_encoders``)."""
    return ({"ema", "reference"} if cfg.ema_device == "cpu" else set()) | (
        {"text_encoders"} if cfg.offload_text_encoders else set())


def judge_side(section: dict, resolution: int) -> int:
    """Side at which the judge sees a square ``resolution`` px image: the processor's rule with
    ``judge_base``'s pixel budget (0: its square ``resolution``)."""
    from onereward.judge.image import smart_resize
    from onereward.judge.model import JudgeMeta

    meta = JudgeMeta(resolution=int(section.get("resolution", 448)), min_pixels=section.get("min_pixels") or None,
                     max_pixels=section.get("max_pixels") or None)
    return smart_resize(resolution, resolution, 28, *meta.pixels())[0]


def make_plan(params: dict, gpus: int = 1, resolution: int = 512, capacity_gib: float = 80.0,
              offload: set[str] = frozenset(), profile: str = "real") -> Plan:
    """The plan for ``params`` (loaded params.yaml) as ``profile`` sees its sections."""
    from onereward.config import ParamsError, from_dict
    from onereward.judge.params import merged_section
    from onereward.judge.train import TrainJudgeConfig
    from onereward.rl.config import TrainPolicyConfig

    if gpus < 1:
        raise ParamsError(f"--gpus must be >= 1, got {gpus}")
    if resolution < 16 or resolution % 16:
        raise ParamsError(f"--resolution must be a positive multiple of 16 (FLUX packing), got {resolution}")
    unknown = sorted(set(offload) - set(OFFLOADABLE))
    if unknown:
        raise ParamsError(f"--offload: unknown component(s) {unknown}; known: {list(OFFLOADABLE)}")
    policy_cfg = from_dict(TrainPolicyConfig, merged_section("train_policy", profile, params), ".train_policy")
    offload = set(offload) | offloaded_by(policy_cfg)
    judge_cfg = from_dict(TrainJudgeConfig, merged_section("train_judge", profile, params), ".train_judge")
    judge_resolution = judge_side(merged_section("judge_base", profile, params), resolution)
    sizes = real_sizes(policy_cfg.lora.target_modules, policy_cfg.lora.rank, judge_cfg.lora_targets, judge_cfg.lora_rank)
    policy = [policy_setting(sizes, policy_cfg, "lora", 1, resolution, judge_resolution, offload),
              policy_setting(sizes, policy_cfg, "full", gpus, resolution, judge_resolution, offload)]
    judge = [judge_setting(sizes, judge_cfg, m, judge_resolution) for m in ("lora", "full")]
    return Plan(gpus, resolution, judge_resolution, capacity_gib * GiB, frozenset(offload), sizes, policy, judge)


def render(plan: Plan) -> str:
    s = plan.sizes
    out = [
        f"Memory plan, by arithmetic (not measured): GiB per GPU, {plan.resolution} px policy images, "
        f"judge at {plan.judge_resolution} px ({(plan.judge_resolution // 28) ** 2} vision tokens an image), {plan.capacity / GiB:g} GiB GPUs ('(params)': the mode params.yaml selects)",
        f"parameters (meta device): FLUX.1-Fill transformer {s.transformer / 1e9:.2f}B, VAE {s.vae / 1e6:.1f}M, "
        f"CLIP-L {s.clip / 1e6:.1f}M, T5-XXL {s.t5 / 1e9:.2f}B; Qwen2.5-VL-7B {s.judge / 1e9:.2f}B; "
        f"LoRA: policy {s.transformer_lora / 1e6:.1f}M, judge {s.judge_lora / 1e6:.1f}M",
        f"offloaded to host memory: {', '.join(sorted(plan.offload)) or 'nothing'}",
    ]
    for stage, settings, extra in (
        ("train_policy", plan.policy, f"LoRA keeps a whole copy per GPU (data parallel); full fine-tuning is "
                                      f"sharded over {plan.gpus} GPU(s) with FSDP"),
        ("train_judge", plan.judge, "one process: train_judge does not shard over GPUs"),
    ):
        out += ["", f"{stage}: {extra}", *table(settings, plan.capacity)]
    return "\n".join(out)


def table(settings: list[Setting], capacity: float) -> list[str]:
    names = list(dict.fromkeys(i.name for st in settings for i in st.items))
    heads = [st.title + (" (params)" if st.active else "") for st in settings]
    w0 = max(len(n) for n in [*names, "host memory (offloaded)"])
    ws = [max(len(h), 8) for h in heads]
    row = lambda name, cells: "  " + name.ljust(w0) + "".join(f"  {c:>{w}}" for c, w in zip(cells, ws))  # noqa: E731
    lines = [row("", heads)]
    for n in names:
        lines.append(row(n, [gib(sum(i.gpu for i in st.items if i.name == n)) for st in settings]))
    lines.append(row("total per GPU", [gib(st.gpu) for st in settings]))
    if any(st.host for st in settings):
        lines.append(row("host memory (offloaded)", [gib(st.host) for st in settings]))
    for st, h in zip(settings, heads):
        lines.append(f"  {h}: {st.verdict(capacity)}; {'; '.join(st.notes)}")
    return lines


def run(args: argparse.Namespace) -> int:
    """``onereward plan``: print the plan for the parsed arguments of :func:`add_arguments`."""
    from onereward.config import ParamsError, load_params

    if not args.params.is_file():
        raise ParamsError(f"params file not found: {args.params}")
    offload = {x.strip() for x in args.offload.split(",") if x.strip()}
    print(render(make_plan(load_params(args.params), args.gpus, args.resolution, args.gpu_memory, offload, args.profile)))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=int, default=1, help="GPUs that full fine-tuning shards over with FSDP (default: 1)")
    p.add_argument("--resolution", type=int, default=512, help="policy image side in pixels, a multiple of 16 (default: 512)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    p.add_argument("--profile", default="real", help="whose per-profile settings to plan for (default: real)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default: 80)")
    p.add_argument("--offload", default="", help=f"comma list of components kept in host memory: {', '.join(OFFLOADABLE)}")
