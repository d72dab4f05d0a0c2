"""The judge: a Qwen2.5-VL answering "is the first image better than the second?".

Definition used everywhere (training, RL rewards, evaluation)::

    P(Yes) = softmax over the two answer tokens {"Yes", "No"} of the next-token logits
           = sigmoid(logit_Yes - logit_No),      P(No) = 1 - P(Yes).

Any Qwen2.5-VL checkpoint loads by local path or model id (safetensors only, no remote code).
A model directory may carry ``judge.json`` (written by the pipeline's stages) with the judge's
input resolution and, for a pointer or an adapter, the base model to load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from onereward.judge.image import VisionSpec, preprocess, to_tensor
from onereward.judge.tiny import CHAT_TEMPLATE

META_FILE = "judge.json"
DEFAULT_RESOLUTION = 448
"""Judge input side in pixels when neither the caller nor ``judge.json`` gives one."""


@dataclass(frozen=True)
class JudgeMeta:
    """Contents of ``judge.json`` next to (or instead of) a checkpoint."""

    resolution: int = DEFAULT_RESOLUTION
    """Square side every image is resized to before patchifying; a multiple of 28."""
    base: str | None = None
    """Model to load the weights from when this directory holds only a pointer or an adapter."""
    adapter: bool = False
    """Whether this directory is a PEFT adapter on top of ``base``."""
    template_version: int | str | None = None
    """Version of ``templates/judge_queries.yaml`` the judge was trained with."""

    @classmethod
    def read(cls, path: str | Path) -> "JudgeMeta | None":
        f = Path(path) / META_FILE
        if not f.is_file():
            return None
        data = json.loads(f.read_text())
        return cls(**{k: data[k] for k in ("resolution", "base", "adapter", "template_version") if k in data})

    def write(self, path: str | Path) -> None:
        from onereward.io import dumps_json

        (Path(path) / META_FILE).write_text(dumps_json(self.__dict__))


def answer_token_ids(tokenizer) -> tuple[int, int]:
    """Ids of "Yes" and "No"; both must be single tokens."""
    ids = []
    for word in ("Yes", "No"):
        enc = tokenizer.encode(word, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"{word!r} is not a single token in this tokenizer: {enc}")
        ids.append(enc[0])
    return ids[0], ids[1]


def p_yes_from_logits(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """``[B, V]`` next-token logits -> ``[B]`` P(Yes) = softmax over {Yes, No}."""
    return torch.sigmoid(yes_no_margin(logits, yes_id, no_id))


def yes_no_margin(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """``logit_Yes - logit_No`` in float32; ``log P(Yes) = logsigmoid(margin)``."""
    return (logits[..., yes_id] - logits[..., no_id]).float()


class Judge(torch.nn.Module):
    """Scores (first, second, query) triples with P(Yes) that the first image is better."""

    def __init__(self, model, tokenizer, spec: VisionSpec, resolution: int, quantize: bool = True):
        super().__init__()
        if resolution % spec.factor:
            raise ValueError(f"judge resolution {resolution} must be a multiple of {spec.factor}")
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.chat_template is None:
            tokenizer.chat_template = CHAT_TEMPLATE
        self.spec = spec
        self.resolution = resolution
        self.quantize = quantize
        self.yes_id, self.no_id = answer_token_ids(tokenizer)
        self.image_token_id = model.config.image_token_id
        self.tokens_per_image = (resolution // spec.factor) ** 2
        self._ids_cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        path: str | Path,
        adapter: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = torch.float32,
        resolution: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> "Judge":
        """Load a judge by path or model id; ``path`` may also be a pointer or adapter directory."""
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        meta = JudgeMeta.read(path) if Path(path).is_dir() else None
        base = str(path)
        if meta is not None:
            if meta.adapter:
                adapter = adapter or path
            if meta.base:
                base = meta.base
        base_meta = JudgeMeta.read(base) if Path(base).is_dir() else None
        if base_meta is not None and base_meta.base and not (Path(base) / "config.json").is_file():
            base = base_meta.base  # base directory is itself a pointer (real profile)
        resolution = resolution or (meta or base_meta or JudgeMeta()).resolution
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, dtype=dtype, use_safetensors=True)
        if adapter is not None:
            from peft import PeftModel

            # merged: the judge is frozen wherever it is loaded (evaluation, RL)
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(base)
        spec = VisionSpec.from_processor(Qwen2VLImageProcessorPil.from_pretrained(base))
        judge = cls(model.to(device).eval(), tokenizer, spec, resolution)
        if gradient_checkpointing:
            judge.enable_gradient_checkpointing()
        return judge

    def enable_gradient_checkpointing(self) -> None:
        # non-reentrant: works with frozen weights (LoRA, RL) without forcing input grads
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model.config.use_cache = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs

    def query_ids(self, query: str) -> list[int]:
        """Token ids of the chat: system, user (image, image, query), assistant turn opened."""
        ids = self._ids_cache.get(query)
        if ids is None:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": query}]}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            raw = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = []
            for t in raw:  # one placeholder per merged vision token, as the stock processor expands it
                ids.extend([t] * self.tokens_per_image if t == self.image_token_id else [t])
            if ids.count(self.image_token_id) != 2 * self.tokens_per_image:
                raise ValueError("the chat template must place exactly two images")
            self._ids_cache[query] = ids
        return ids

    def encode_text(self, queries: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` (1 = image token)."""
        seqs = [self.query_ids(q) for q in queries]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: the answer position is the last column for all
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        mm = (ids == self.image_token_id).long() * mask
        return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm}

    def encode_images(self, first: torch.Tensor, second: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images ``[B, 3, H, W]`` in [0, 1] -> ``pixel_values`` in chat order (b0 first, b0 second, b1 first, ...)."""
        if first.shape[0] != second.shape[0]:
            raise ValueError("first and second must hold the same number of images")
        both = torch.stack([first, second], dim=1).flatten(0, 1)
        pixel_values, grid = preprocess(both, (self.resolution, self.resolution), self.spec, self.quantize)
        return {"pixel_values": pixel_values, "image_grid_thw": grid}

    # ------------------------------------------------------------------ scoring

    def margin(self, first: torch.Tensor, second: torch.Tensor, queries: list[str], model=None) -> torch.Tensor:
        """``[B]`` logit_Yes - logit_No; differentiable w.r.t. the images and trainable weights.

        ``model``: what runs the forward pass instead of ``self.model`` (its DDP wrapper in training)."""
        if len(queries) != first.shape[0]:
            raise ValueError(f"{len(queries)} queries for {first.shape[0]} image pairs")
        device = self.device
        inputs = {k: v.to(device) for k, v in self.encode_text(queries).items()}
        images = self.encode_images(first.to(device), second.to(device))
        out = (model or self.model)(
            **inputs,
            pixel_values=images["pixel_values"].to(self.model.dtype),
            image_grid_thw=images["image_grid_thw"],
            use_cache=False,
            logits_to_keep=1,
        )
        return yes_no_margin(out.logits[:, -1], self.yes_id, self.no_id)

    def p_yes(self, first: torch.Tensor, second: torch.Tensor, queries: list[str]) -> torch.Tensor:
        """``[B]`` P(Yes | first, second, query), differentiable w.r.t. the images."""
        return torch.sigmoid(self.margin(first, second, queries))

    @torch.no_grad()
    def score(self, first, second, queries: list[str], batch_size: int = 16) -> torch.Tensor:
        """Batched P(Yes) without gradient; images as tensors ``[N, 3, H, W]`` or lists of PIL images."""
        first, second = _as_batch(first), _as_batch(second)
        out = [
            self.p_yes(first[i : i + batch_size], second[i : i + batch_size], queries[i : i + batch_size]).cpu()
            for i in range(0, len(queries), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def symmetric_score(self, a, b, queries: list[str], batch_size: int = 16) -> torch.Tensor:
        """Order-free preference for ``a``: mean of P(Yes | a, b) and P(No | b, a)."""
        a, b = _as_batch(a), _as_batch(b)
        return 0.5 * (self.score(a, b, queries, batch_size) + 1.0 - self.score(b, a, queries, batch_size))


def _as_batch(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    return torch.stack([to_tensor(im) for im in images])
