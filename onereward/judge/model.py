"""The judge: a Qwen2.5-VL answering "is the first image better than the second?".

Definition used everywhere (training, RL rewards, evaluation)::

    P(Yes) = softmax over the two answer tokens {"Yes", "No"} of the next-token logits
           = sigmoid(logit_Yes - logit_No),      P(No) = 1 - P(Yes).

Any Qwen2.5-VL checkpoint loads by local path or model id (safetensors only, no remote code).
A model directory may carry ``judge.json`` (written by the pipeline's stages) with the judge's
input size rule and, for a pointer or an adapter, the base model to load.

Input size: as Qwen2.5-VL's own processor, each image keeps its aspect ratio and is resized to
multiples of 28 with a pixel count in [min_pixels, max_pixels] (``smart_resize``); the default
budget, ``resolution**2`` for both, makes a square image ``resolution`` x ``resolution``. Images
of one batch may differ in size: each size is resized once, and every query gets as many vision
tokens as its two images make.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from onereward.judge.image import VisionSpec, batch_or_list, preprocess, smart_resize, to_tensor
from onereward.judge.tiny import CHAT_TEMPLATE

META_FILE = "judge.json"
DEFAULT_RESOLUTION = 448
"""Judge input side in pixels when neither the caller nor ``judge.json`` gives one."""


@dataclass(frozen=True)
class JudgeMeta:
    """Contents of ``judge.json`` next to (or instead of) a checkpoint."""

    resolution: int = DEFAULT_RESOLUTION
    """Side a square image is resized to (a multiple of 2 x the patch size); ``resolution**2`` is the default
    pixel budget."""
    base: str | None = None
    """Model to load the weights from when this directory holds only a pointer or an adapter."""
    adapter: bool = False
    """Whether this directory is a PEFT adapter on top of ``base``."""
    template_version: int | str | None = None
    """Version of ``templates/judge_queries.yaml`` the judge was trained with."""
    min_pixels: int | None = None
    """Fewest pixels of an image as the judge sees it (None: ``resolution**2``)."""
    max_pixels: int | None = None
    """Most pixels of an image as the judge sees it (None: ``resolution**2``)."""

    OPTIONAL = ("min_pixels", "max_pixels")
    """Written only when set, so the files of judges without a pixel budget stay as they were."""

    @classmethod
    def read(cls, path: str | Path) -> "JudgeMeta | None":
        f = Path(path) / META_FILE
        if not f.is_file():
            return None
        data = json.loads(f.read_text())
        keys = ("resolution", "base", "adapter", "template_version", *cls.OPTIONAL)
        return cls(**{k: data[k] for k in keys if k in data})

    def write(self, path: str | Path) -> None:
        from onereward.io import dumps_json

        data = {k: v for k, v in self.__dict__.items() if k not in self.OPTIONAL or v is not None}
        (Path(path) / META_FILE).write_text(dumps_json(data))

    def pixels(self) -> tuple[int, int]:
        """(min_pixels, max_pixels) with the defaults filled in."""
        return self.min_pixels or self.resolution**2, self.max_pixels or self.resolution**2


def attention_kernel(name: str, device) -> str:
    """``attn_implementation`` for transformers: 'auto' picks flash-attn 2 on CUDA where it is
    installed (less memory at the judge's long image sequences), SDPA otherwise."""
    if name != "auto":
        return name
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if torch.device(device).type == "cuda" and is_flash_attn_2_available() else "sdpa"


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


def answer_logits(model, text: dict, grid: torch.Tensor, features) -> torch.Tensor:
    """``[B, V]`` next-token logits at the answer position of chats ``text`` (``Judge.encode_text``)
    whose images, in chat order, have the merged vision tokens ``features`` and the rows ``grid``
    of ``image_grid_thw``: the language model on vision features computed elsewhere."""
    out = model(
        **text,
        image_grid_thw=grid,
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=tuple(features))},
        use_cache=False,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


class DistinctImagesForward(torch.nn.Module):
    """The judge's forward pass with every distinct image through the vision tower once.

    ``index[k]``: which distinct image the k-th image of the chats (chat order) is. In training
    both orders of a pair show the same two images, so this halves the vision tower's work. One
    module, so that DDP sees the vision tower and the language model in one forward.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, distinct_grid, index: list[int], **text) -> torch.Tensor:
        features = self.model.get_image_features(pixel_values, distinct_grid, return_dict=True).pooler_output
        return answer_logits(self.model, text, distinct_grid[index], [features[j] for j in index])


def distinct_images(images) -> tuple[list[torch.Tensor], list[int]]:
    """(the distinct images of ``images`` in first-seen order, each image's index among them)."""
    seen: dict[tuple, list[int]] = defaultdict(list)  # cheap key -> candidates, confirmed by torch.equal
    distinct, index = [], []
    for im in images:
        key = (tuple(im.shape), float(im.sum()))
        match = next((j for j in seen[key] if torch.equal(distinct[j], im)), None)
        if match is None:
            match = len(distinct)
            seen[key].append(match)
            distinct.append(im)
        index.append(match)
    return distinct, index


def patch_embedding_as_linear(model) -> None:
    """Compute Qwen2.5-VL's patch embedding as the matrix product it is.

    Its ``Conv3d`` has kernel = stride = one whole patch, so each output is one dot product of a
    flattened patch with a flattened filter. Without oneDNN (``numerics.portable_kernels``) torch
    runs such a convolution through its slow reference kernel: 8x the time of the same product
    as ``linear``, forward and backward, a third of a tiny judge's training step (BENCHMARKS.md).
    The weights keep their shape and names, so checkpoints load either way.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        patches = hidden_states.to(dtype=weight.dtype).reshape(-1, weight[0].numel())
        return torch.nn.functional.linear(patches, weight.reshape(self.embed_dim, -1))

    for module in model.modules():
        if isinstance(module, Qwen2_5_VisionPatchEmbed):
            module.forward = forward.__get__(module)


class Judge(torch.nn.Module):
    """Scores (first, second, query) triples with P(Yes) that the first image is better."""

    def __init__(self, model, tokenizer, spec: VisionSpec, resolution: int, quantize: bool = True,
                 pixels: tuple[int, int] | None = None):
        super().__init__()
        if resolution % spec.factor:
            raise ValueError(f"judge resolution {resolution} must be a multiple of {spec.factor}")
        self.min_pixels, self.max_pixels = pixels or (resolution**2, resolution**2)
        if not spec.factor**2 <= self.min_pixels <= self.max_pixels:
            raise ValueError(f"judge pixel budget must satisfy {spec.factor**2} <= min_pixels <= max_pixels, "
                             f"got {self.min_pixels}, {self.max_pixels}")
        patch_embedding_as_linear(model)
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.chat_template is None:
            tokenizer.chat_template = CHAT_TEMPLATE
        self.spec = spec
        self.resolution = resolution
        self.quantize = quantize
        self.yes_id, self.no_id = answer_token_ids(tokenizer)
        self.image_token_id = model.config.image_token_id
        self._ids_cache: dict[tuple[str, int, int], list[int]] = {}

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
        attn_implementation: str = "auto",
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
        found = meta or base_meta or JudgeMeta()
        if resolution:  # the caller's square side replaces the stored size rule
            found = JudgeMeta(resolution=resolution)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            base, dtype=dtype, use_safetensors=True, attn_implementation=attention_kernel(attn_implementation, device))
        if adapter is not None:
            from peft import PeftModel

            # merged: the judge is frozen wherever it is loaded (evaluation, RL)
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(base)
        spec = VisionSpec.from_processor(Qwen2VLImageProcessorPil.from_pretrained(base))
        judge = cls(model.to(device).eval(), tokenizer, spec, found.resolution, pixels=found.pixels())
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

    def size_rule(self) -> dict:
        """``JudgeMeta`` fields that give this judge's input size (the budget only when it is not
        the default ``resolution**2``)."""
        custom = (self.min_pixels, self.max_pixels) != (self.resolution**2,) * 2
        return {"resolution": self.resolution, **({"min_pixels": self.min_pixels, "max_pixels": self.max_pixels} if custom else {})}

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an image as the judge sees it (the processor's ``smart_resize``)."""
        return smart_resize(height, width, self.spec.factor, self.min_pixels, self.max_pixels)

    def tokens(self, height: int, width: int) -> int:
        """Language-model tokens of one image of this size."""
        h, w = self.input_size(height, width)
        return (h // self.spec.factor) * (w // self.spec.factor)

    def query_ids(self, query: str, tokens: tuple[int, int] | None = None) -> list[int]:
        """Token ids of the chat: system, user (image, image, query), assistant turn opened;
        ``tokens``: vision tokens of the first and second image (default: two square images)."""
        tokens = tokens or (self.tokens(self.resolution, self.resolution),) * 2
        ids = self._ids_cache.get((query, *tokens))
        if ids is None:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": query}]}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            raw = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if raw.count(self.image_token_id) != 2:
                raise ValueError("the chat template must place exactly two images")
            ids, seen = [], 0
            for t in raw:  # one placeholder per merged vision token, as the stock processor expands it
                if t == self.image_token_id:
                    ids.extend([t] * tokens[seen])
                    seen += 1
                else:
                    ids.append(t)
            self._ids_cache[(query, *tokens)] = ids
        return ids

    def encode_text(self, queries: list[str], tokens: list[tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
        """Left-padded ``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` (1 = image token);
        ``tokens``: per query, the vision tokens of its two images (``image_tokens``)."""
        seqs = [self.query_ids(q, tokens[i] if tokens else None) for i, q in enumerate(queries)]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):  # left padding: the answer position is the last column for all
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
        mm = (ids == self.image_token_id).long() * mask
        return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm}

    def encode_images(self, first, second) -> dict[str, torch.Tensor]:
        """Images in [0, 1] (``[B, 3, H, W]`` or lists of ``[3, H, W]`` of any sizes) ->
        ``pixel_values`` and ``image_grid_thw`` in chat order (b0 first, b0 second, b1 first, ...)."""
        if len(first) != len(second):
            raise ValueError("first and second must hold the same number of images")
        if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape:
            both = torch.stack([first, second], dim=1).flatten(0, 1)
            pixel_values, grid = preprocess(both, self.input_size(*both.shape[-2:]), self.spec, self.quantize)
            return {"pixel_values": pixel_values, "image_grid_thw": grid}
        return self._encode_mixed([im for pair in zip(first, second) for im in pair])

    def _encode_mixed(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each size resized once, as one batch; the pieces put back in order."""
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            by_size[tuple(im.shape[-2:])].append(i)
        values: list[torch.Tensor | None] = [None] * len(images)
        grids: list[torch.Tensor | None] = [None] * len(images)
        for size, idx in by_size.items():
            pv, grid = preprocess(torch.stack([images[i] for i in idx]), self.input_size(*size), self.spec, self.quantize)
            for j, (i, part) in enumerate(zip(idx, pv.split(int(grid[0].prod())))):
                values[i], grids[i] = part, grid[j]
        return {"pixel_values": torch.cat(values), "image_grid_thw": torch.stack(grids)}

    def image_tokens(self, grid: torch.Tensor) -> list[tuple[int, int]]:
        """Per query, the vision tokens of its (first, second) image, from ``image_grid_thw`` in chat order."""
        per_image = (grid.prod(-1) // self.spec.merge_size**2).tolist()
        return list(zip(per_image[0::2], per_image[1::2]))

    # ------------------------------------------------------------------ scoring

    def margin(self, first, second, queries: list[str], model=None) -> torch.Tensor:
        """``[B]`` logit_Yes - logit_No; differentiable w.r.t. the images and trainable weights.
        Images as in ``encode_images`` (a batch tensor, or lists of images of any sizes).

        ``model``: a :class:`DistinctImagesForward` of ``self.model`` (or its DDP wrapper, in
        training) that runs the forward pass instead; repeated images are then encoded once."""
        if len(queries) != len(first):
            raise ValueError(f"{len(queries)} queries for {len(first)} image pairs")
        device = self.device
        if model is not None:
            distinct, index = distinct_images([im for pair in zip(first, second) for im in pair])
            images = self._encode_mixed(_to(distinct, device))
            grid = images["image_grid_thw"][index]
            text = {k: v.to(device) for k, v in self.encode_text(queries, self.image_tokens(grid)).items()}
            logits = model(images["pixel_values"].to(self.model.dtype), images["image_grid_thw"], index, **text)
            return yes_no_margin(logits, self.yes_id, self.no_id)
        images = self.encode_images(_to(first, device), _to(second, device))
        inputs = {k: v.to(device) for k, v in self.encode_text(queries, self.image_tokens(images["image_grid_thw"])).items()}
        out = self.model(
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
        """Batched P(Yes) without gradient; images as tensors ``[N, 3, H, W]`` or lists of PIL images.
        Each distinct image of a batch goes through the vision tower once: scoring compares a few
        images in many queries (an output against every candidate, on every dimension, both orders)."""
        first, second = _as_batch(first), _as_batch(second)
        runner = DistinctImagesForward(self.model)
        out = [
            torch.sigmoid(self.margin(first[i : i + batch_size], second[i : i + batch_size], queries[i : i + batch_size],
                                      model=runner)).cpu()
            for i in range(0, len(queries), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def symmetric_score(self, a, b, queries: list[str], batch_size: int = 16) -> torch.Tensor:
        """Order-free preference for ``a``: mean of P(Yes | a, b) and P(No | b, a)."""
        a, b = _as_batch(a), _as_batch(b)
        return 0.5 * (self.score(a, b, queries, batch_size) + 1.0 - self.score(b, a, queries, batch_size))


def _as_batch(images):
    """A tensor batch, or a list of tensors when the images differ in size."""
    if isinstance(images, torch.Tensor):
        return images
    return batch_or_list([im if isinstance(im, torch.Tensor) else to_tensor(im) for im in images])


def _to(images, device):
    return images.to(device) if isinstance(images, torch.Tensor) else [im.to(device) for im in images]
