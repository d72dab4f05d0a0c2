"""Parameter snapshots that stand in for extra models: the EMA policy and the frozen reference.

Both hold only the trainable tensors (all weights for full fine-tuning, the LoRA matrices for
LoRA) and are run with ``torch.func.functional_call`` on the one policy module, so Alg. 1's
"three models" and Alg. 2's "two models" cost one extra copy of the trainable weights each.
"""

from __future__ import annotations

import torch
from torch.func import functional_call


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


class Snapshot:
    """A detached copy of a module's trainable tensors, optionally tracked as an EMA."""

    def __init__(self, module: torch.nn.Module, decay: float | None = None):
        self.decay = decay
        self.tensors = {n: p.detach().clone().float() for n, p in trainable_state(module).items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * param."""
        for n, p in trainable_state(module).items():
            self.tensors[n].lerp_(p.detach().float(), 1.0 - self.decay)

    def bind(self, module: torch.nn.Module):
        """A callable with the module's signature that runs it with these tensors."""
        dtypes = {n: p.dtype for n, p in trainable_state(module).items()}
        overrides = {n: t.to(dtypes[n]) if dtypes[n] != t.dtype else t for n, t in self.tensors.items()}

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
