"""Parameter snapshots that stand in for extra models: the EMA policy and the frozen reference.

Both hold only the trainable tensors (all weights for full fine-tuning, the LoRA matrices for
LoRA) and are run with ``torch.func.functional_call`` on the one policy module, so Alg. 1's
"three models" and Alg. 2's "two models" cost one extra copy of the trainable weights each.
Under LoRA the frozen reference is the base itself with the adapters switched off: no copy.
Snapshots may live off the accelerator (``ema_device: cpu``); ``bind`` then moves them over for
the call only.
"""

from __future__ import annotations

import contextlib

import torch
from torch.func import functional_call


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


class Snapshot:
    """A detached copy of a module's trainable tensors, optionally tracked as an EMA.

    ``dtype`` None keeps fp32 (an EMA accumulates updates far below bf16's resolution); the
    frozen reference passes the model's own dtype, which holds the base weights exactly.
    """

    def __init__(self, module: torch.nn.Module, decay: float | None = None, device=None,
                 dtype: torch.dtype | None = None):
        self.decay = decay
        self.tensors = {n: p.detach().to(device=device, dtype=dtype or torch.float32, copy=True)
                        for n, p in trainable_state(module).items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * param."""
        for n, p in trainable_state(module).items():
            t = self.tensors[n]
            t.lerp_(p.detach().to(device=t.device, dtype=torch.float32), 1.0 - self.decay)

    def bind(self, module: torch.nn.Module):
        """A callable with the module's signature that runs it with these tensors."""
        like = trainable_state(module)
        overrides = {n: t.to(device=like[n].device, dtype=like[n].dtype) for n, t in self.tensors.items()}

        def run(*args, **kwargs):
            return functional_call(module, overrides, args, kwargs, strict=False)

        return run

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.contiguous() for n, t in self.tensors.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.tensors) ^ set(state)
        if missing:
            raise KeyError(f"snapshot keys differ: {sorted(missing)[:5]}")
        for n, t in state.items():
            self.tensors[n].copy_(t)


class AdaptersOff:
    """The frozen base under LoRA: the policy module with its adapters disabled, holding nothing."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def bind(self, module):
        @contextlib.contextmanager
        def off():
            module.disable_adapters()
            try:
                yield
            finally:
                module.enable_adapters()  # also gives the adapters their requires_grad back

        def run(*args, **kwargs):
            with off():
                return module(*args, **kwargs)

        return run


def base_reference(module: torch.nn.Module, lora: bool, device=None, dtype: torch.dtype | None = None):
    """Alg. 1's reference (and validation's baseline): the base weights as they are before training."""
    return AdaptersOff() if lora else Snapshot(module, device=device, dtype=dtype)
