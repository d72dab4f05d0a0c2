"""A tiny FLUX.1-Fill built in code: same classes and layout as black-forest-labs/FLUX.1-Fill-dev.

Everything (tokenizers included) is made from in-memory definitions, so the embedded default
needs no network. The saved folder is a stock diffusers pipeline folder (model_index.json,
safetensors weights): ``FluxFillPipeline.from_pretrained(path)`` loads it like the real model.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer


@dataclass(frozen=True)
class TinyFluxSpec:
    """Sizes of the tiny FLUX.1-Fill (the real one: 19+38 blocks, 24 heads x 128, T5-XXL, CLIP-L)."""

    num_layers: int = 2
    """Double-stream (MMDiT) blocks."""
    num_single_layers: int = 2
    """Single-stream blocks."""
    num_attention_heads: int = 4
    """Attention heads; inner width = heads x head_dim."""
    attention_head_dim: int = 16
    """Per-head width; equals the sum of ``axes_dims_rope``."""
    axes_dims_rope: tuple[int, int, int] = (4, 6, 6)
    """RoPE split over (text index, row, column), as in FLUX's (16, 56, 56)."""
    text_dim: int = 32
    """Width of the tiny CLIP and T5 encoders (pooled projection and joint attention dims)."""
    text_layers: int = 2
    """Layers in each tiny text encoder."""
    vae_channels: tuple[int, int, int, int] = (16, 32, 64, 64)
    """VAE block widths: four blocks, so the VAE factor is 2**3 = 8 as in FLUX."""
    latent_channels: int = 16
    """FLUX's 16 latent channels: packed 2x2 that gives 64, and Fill's input is 64+64+256 = 384."""


# FLUX.1-Fill-dev's VAE normalisation and scheduler settings, kept so the tiny model runs the
# same code paths (dynamic shifting by sequence length, scaling and shift of latents).
VAE_SCALING = 0.3611
VAE_SHIFT = 0.1159
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
CLIP_MAX_LENGTH = 77
# T5 tokens per prompt. FLUX's joint attention runs over these and the image tokens (16 at 64 px),
# padding included, so the length is most of the tiny transformer's work: 48 character tokens
# made it 2.5x slower than 12 word tokens. 12 hold every embedded prompt (at most 6) with room.
T5_MAX_LENGTH = 12
# Words of the prompts the embedded default gives the generator (content, task presets, the
# negative prompts), one T5 piece each, as a real SentencePiece vocabulary has them. Fixed in
# code so the base model does not change when a prompt in params does (new words still encode,
# character by character).
T5_WORDS = (
    "a the text remove high-definition perfect composition nsfw blurry low quality distorted "
    "red green blue yellow white black orange purple pink brown gray circle square triangle stripes "
    "star heart CAT SUN OPEN SALE TAXI BAR MILK STOP EXIT TEA HOT ZOO"
).split()


def clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE with no merges: every byte is a token (word-final bytes get ``</w>``)."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet + [c + "</w>" for c in alphabet])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    """Unigram over printable ASCII characters, with and without the word-start marker, and the
    embedded prompts' words (a word piece scores above its characters, so it wins the split)."""
    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + c, -3.0) for c in chars] + [(c, -3.0) for c in chars]
    pieces += [(p + w, -2.5) for w in T5_WORDS for p in ("\u2581", "")]  # bare: a word after a quote
    # FillPolicy reads model_max_length as its T5 length.
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def build_tiny_pipeline(spec: TinyFluxSpec = TinyFluxSpec(), seed: int = 0) -> FluxFillPipeline:
    """Random-init tiny FLUX.1-Fill pipeline; deterministic for a given seed."""
    assert sum(spec.axes_dims_rope) == spec.attention_head_dim, "RoPE axes must fill the head dim"
    torch.manual_seed(seed)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=spec.text_dim,
            intermediate_size=spec.text_dim * 2,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=spec.text_dim,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tok2),
            d_model=spec.text_dim,
            d_kv=spec.text_dim // 4,
            d_ff=spec.text_dim * 2,
            num_layers=spec.text_layers,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # T5 v1.1 (the XXL FLUX uses)
            pad_token_id=tok2.pad_token_id,
            eos_token_id=tok2.eos_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=spec.vae_channels,
        layers_per_block=1,
        latent_channels=spec.latent_channels,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=VAE_SCALING,
        shift_factor=VAE_SHIFT,
        use_quant_conv=False,  # as FLUX.1's VAE
        use_post_quant_conv=False,
    )
    packed = spec.latent_channels * 4
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=packed * 2 + 8 * 8 * 4,  # noisy + masked image + mask (8x8 pixels per latent, 2x2 packed)
        out_channels=packed,
        num_layers=spec.num_layers,
        num_single_layers=spec.num_single_layers,
        attention_head_dim=spec.attention_head_dim,
        num_attention_heads=spec.num_attention_heads,
        joint_attention_dim=spec.text_dim,
        pooled_projection_dim=spec.text_dim,
        guidance_embeds=True,  # FLUX.1-Fill-dev is guidance-distilled
        axes_dims_rope=spec.axes_dims_rope,
    )
    return FluxFillPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=clip,
        tokenizer=tok,
        text_encoder_2=t5,
        tokenizer_2=tok2,
        transformer=transformer,
    )


def save_pipeline(pipe: FluxFillPipeline, path) -> None:
    """diffusers layout, safetensors only (the format FLUX.1-Fill-dev ships in)."""
    pipe.save_pretrained(str(path), safe_serialization=True)
