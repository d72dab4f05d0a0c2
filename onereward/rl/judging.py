"""The frozen judge inside RL: checkpointed layers in eval mode.

transformers checkpoints a layer only when the model is in training mode, and RL keeps the
judge in eval mode (no dropout, fixed behaviour), so its backward would keep every activation of
every language and vision layer. ``checkpoint_layers`` wraps each layer's forward with
non-reentrant ``torch.utils.checkpoint`` regardless of mode: only layer inputs are kept, and
each layer is recomputed in backward (same values: eval mode draws no randomness).
"""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

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
