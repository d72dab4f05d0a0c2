"""A tiny random-initialised Qwen2.5-VL judge, tokenizer included, built entirely in code.

Saved with ``save_pretrained`` (safetensors) plus the stock image processor config, so the
rest of the pipeline loads it by path exactly like ``Qwen/Qwen2.5-VL-7B-Instruct``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

# Qwen2.5-VL's special tokens, in the upstream order (ids follow the byte alphabet here).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer split (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Text the tiny tokenizer's merges are learned from: the chat scaffolding, the words judge
# queries and prompts use, and the two answers. Fixed in code so the base model does not
# change when a query template is edited (new words still encode, byte by byte).
CORPUS = "\n".join(
    2 * [
        "You are a helpful assistant.",
        "Yes", "No", "Yes.", "No.", "Answer Yes or No.",
        "Task: image fill. Task: image extend. Task: object removal. Prompt:",
        "Both images fill the same masked region of one photo.",
        "Both images extend the same photo beyond its borders.",
        "Both images remove the same object from one photo.",
        "Is the first image better than the second? Is the first one better than the second one?",
        "Does the filled region of the first image follow the prompt better than the second?",
        "Does the extended area of the first image follow the prompt better than the second?",
        "more consistent with its surroundings in color, colour, texture, style and lighting",
        "more consistent with the original part in color, texture and lighting",
        "more structurally sound, with intact continuous shapes, lines, edges and no artifacts",
        "more aesthetically pleasing, sharper, better exposed and better composed",
        "is the object removed more cleanly, with a plausible background and no remnants or new objects",
        "text alignment consistency structure aesthetics removal quality realism sharpness detail",
        "fill extend inpaint outpaint remove removal generate generated region area mask masked",
        "a red green blue yellow white black orange purple pink brown gray grey circle square",
        "triangle stripes star heart car dog cat tree house sky person the text sign word letters",
        "high-definition, perfect composition",
    ]
)

# Qwen2.5-VL-Instruct's chat template (images and text only; videos kept for parity).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyJudgeConfig:
    """Sizes of the tiny judge; small enough for a ~10 ms forward on 2 CPU cores."""

    seed: int = 0
    """Seed of the random initialisation (same seed, same weights bytes)."""
    hidden_size: int = 64
    """Width of the language model (also the vision merger's output width)."""
    num_layers: int = 2
    """Decoder layers of the language model."""
    num_heads: int = 4
    """Attention heads of the language model."""
    num_kv_heads: int = 2
    """Key/value heads of the language model (grouped-query attention as in Qwen2.5)."""
    intermediate_size: int = 128
    """MLP width of the language model."""
    vision_hidden_size: int = 64
    """Width of the vision transformer."""
    vision_depth: int = 2
    """Blocks of the vision transformer; the last one uses full attention."""
    vision_heads: int = 2
    """Attention heads of the vision transformer."""
    vision_intermediate_size: int = 128
    """MLP width of the vision transformer."""
    patch_size: int = 14
    """Side of one vision patch in pixels (Qwen2.5-VL: 14). Patches are merged 2x2, so images are
    seen in multiples of ``2 * patch_size``: 8 lets a 64 px image in at its own pixels."""
    initializer_range: float = 0.02
    """Standard deviation of the normal init of every linear and embedding weight (Qwen's 0.02)."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the byte-level BPE alphabet."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def learn_merges(corpus: str, vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary and merges learned from ``corpus`` (deterministic)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    alphabet = sorted(bytes_to_unicode().values(), key=ord)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(corpus.splitlines(), trainer)
    model = json.loads(bpe.to_str())["model"]
    # byte alphabet first, in byte order, then merged tokens in merge order: stable ids
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = [tuple(m) for m in model["merges"]]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def build_tokenizer(vocab_size: int = 1024) -> Qwen2Tokenizer:
    """Byte-level BPE (any text encodes) with merges learned from a small in-code corpus.

    Merged words keep judge chats short (~60 tokens instead of ~250 bytes), which a tiny
    random-init model needs to find the image tokens; "Yes" and "No" are single tokens.
    """
    vocab, merges = learn_merges(CORPUS, vocab_size)
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_config(cfg: TinyJudgeConfig, tokenizer) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = cfg.hidden_size // cfg.num_heads
    # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width) as Qwen does (16/24/24 of 64)
    half = head_dim // 2
    t = half // 4
    mrope = [t, (half - t) // 2, half - t - (half - t) // 2]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            initializer_range=cfg.initializer_range,
        ),
        vision_config=dict(
            depth=cfg.vision_depth,
            hidden_size=cfg.vision_hidden_size,
            intermediate_size=cfg.vision_intermediate_size,
            num_heads=cfg.vision_heads,
            out_hidden_size=cfg.hidden_size,
            fullatt_block_indexes=[cfg.vision_depth - 1],
            patch_size=cfg.patch_size,
            window_size=8 * cfg.patch_size,  # windows of 4x4 merged tokens, as Qwen's 112 px at 14
            initializer_range=cfg.initializer_range,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_tiny_judge(cfg: TinyJudgeConfig):
    """(model, tokenizer, image processor), deterministic for a given seed."""
    tokenizer = build_tokenizer()
    config = build_config(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model, tokenizer, Qwen2VLImageProcessorPil(patch_size=cfg.patch_size)


def save_tiny_judge(cfg: TinyJudgeConfig, path: str | Path) -> None:
    model, tokenizer, processor = build_tiny_judge(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
