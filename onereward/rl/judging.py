"""The frozen judge inside RL: checkpointed layers in eval mode, each image through the vision tower once.

transformers checkpoints a layer only when the model is in training mode, and RL keeps the
judge in eval mode (no dropout, fixed behaviour), so its backward would keep every activation of
every language and vision layer. ``checkpoint_layers`` wraps each layer's forward with
non-reentrant ``torch.utils.checkpoint`` regardless of mode: only layer inputs are kept, and
each layer is recomputed in backward (same values: eval mode draws no randomness).

A reward scores one policy image against its reference on several dimensions (one query each);
``vision_features`` encodes every image once and ``pair_p_yes`` reuses the features for every
query, the reference's computed without gradient.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

from onereward.judge.image import preprocess
from onereward.judge.model import answer_logits, yes_no_margin

_WRAPPED = "_onereward_checkpointed"


def checkpoint_layers(model: torch.nn.Module) -> int:
    """Checkpoint every transformer layer (decoder and vision blocks) of ``model`` whenever grad is
    enabled, in any mode; returns how many layers are wrapped. Idempotent."""
    count = 0
    for layer in model.modules():
        if not isinstance(layer, GradientCheckpointingLayer):
            continue
        count += 1
        if getattr(layer, _WRAPPED, False):
            continue
        forward = layer.forward  # the class's own (it checkpoints only in training mode)

        @functools.wraps(forward)
        def run(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        layer.forward = run
        setattr(layer, _WRAPPED, True)
    return count


def vision_features(judge, images: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """(merged vision tokens per image, their ``image_grid_thw`` rows) of images ``[N, 3, H, W]`` in [0, 1]:
    one pass of the vision tower, differentiable where ``images`` are."""
    pixel_values, grid = preprocess(images.to(judge.device), judge.input_size(*images.shape[-2:]), judge.spec,
                                    judge.quantize)
    out = judge.model.get_image_features(pixel_values.to(judge.model.dtype), grid.to(judge.device), return_dict=True)
    return tuple(out.pooler_output), grid


def pair_p_yes(judge, first, second, pairs: list[int], queries: list[str]) -> torch.Tensor:
    """``[len(pairs)]`` P(Yes | first[i], second[i], query) for ``i`` in ``pairs``, from features of
    :func:`vision_features`: a pair repeated for several queries reuses its images' features.
    The same numbers as ``judge.p_yes(first_images[pairs], second_images[pairs], queries)``."""
    (f_tok, f_grid), (s_tok, s_grid) = first, second
    if len(pairs) != len(queries):
        raise ValueError(f"{len(queries)} queries for {len(pairs)} image pairs")
    tokens, grids = [], []
    for i in pairs:  # chat order: pair 0 first, pair 0 second, pair 1 first, ...
        tokens += [f_tok[i], s_tok[i]]
        grids += [f_grid[i], s_grid[i]]
    grid = torch.stack(grids)
    inputs = {k: v.to(judge.device) for k, v in judge.encode_text(queries, judge.image_tokens(grid)).items()}
    logits = answer_logits(judge.model, inputs, grid.to(judge.device), tokens)
    return torch.sigmoid(yes_no_margin(logits, judge.yes_id, judge.no_id))
