"""Parameter snapshots that stand in for extra models: the EMA policy and the frozen reference.

Both hold only the trainable tensors (all weights for full fine-tuning, the LoRA matrices for
LoRA) and are run with ``torch.func.functional_call`` on the one policy module, so Alg. 1's
"three models" and Alg. 2's "two models" cost one extra copy of the trainable weights each.
Under LoRA the frozen reference is the base itself with the adapters switched off: no copy.
Snapshots may live off the accelerator (``ema_device: cpu``); ``bind`` then moves them over for
the call only. Under FSDP (``onereward.rl.sharding``) a snapshot holds this process's shards, and
``bind`` copies them into the parameters' shards for the call (FSDP gathers its own parameters,
so ``functional_call`` cannot substitute them) and the live shards back afterwards.
"""

from __future__ import annotations

import contextlib

import torch
from torch.func import functional_call

from onereward.rl.sharding import gather_shards, is_sharded, local, reshard, shard_of


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def whole_trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors, whole, on the CPU (gathered from the shards when sharded: a collective)."""
    reshard(module)
    like = trainable_state(module)
    return gather_shards(like, {n: local(p) for n, p in like.items()})


@torch.no_grad()
def load_trainable(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of ``whole_trainable``: every process passes the whole tensors and keeps its part."""
    reshard(module)
    for n, p in trainable_state(module).items():
        local(p).copy_(shard_of(state[n], p))


class Snapshot:
    """A detached copy of a module's trainable tensors, optionally tracked as an EMA.

    ``dtype`` None keeps fp32 (an EMA accumulates updates far below bf16's resolution); the
    frozen reference passes the model's own dtype, which holds the base weights exactly.
    """

    def __init__(self, module: torch.nn.Module, decay: float | None = None, device=None,
                 dtype: torch.dtype | None = None):
        self.decay = decay
        reshard(module)
        self.tensors = {n: local(p).detach().to(device=device, dtype=dtype or torch.float32, copy=True)
                        for n, p in trainable_state(module).items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """ema <- decay * ema + (1 - decay) * param."""
        reshard(module)
        for n, p in trainable_state(module).items():
            t = self.tensors[n]
            t.lerp_(local(p).detach().to(device=t.device, dtype=torch.float32), 1.0 - self.decay)

    def bind(self, module: torch.nn.Module):
        """A callable with the module's signature that runs it with these tensors."""
        if is_sharded(module):
            return self._swapped(module)
        like = trainable_state(module)
        overrides = {n: t.to(device=like[n].device, dtype=like[n].dtype) for n, t in self.tensors.items()}

        def run(*args, **kwargs):
            return functional_call(module, overrides, args, kwargs, strict=False)

        return run

    def _swapped(self, module: torch.nn.Module):
        def run(*args, **kwargs):
            with torch.no_grad():
                reshard(module)
                shards = {n: local(p) for n, p in trainable_state(module).items()}
                live = {n: s.clone() for n, s in shards.items()}
                for n, t in self.tensors.items():
                    shards[n].copy_(t)
            try:
                return module(*args, **kwargs)
            finally:
                with torch.no_grad():
                    reshard(module)
                    for n, t in live.items():
                        shards[n].copy_(t)

        return run

    def whole(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Full CPU tensors (gathered from every process's shards when ``module`` is sharded)."""
        reshard(module)
        return gather_shards(trainable_state(module), self.tensors)

    def load_whole(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Inverse of ``whole``: take this process's part of full tensors."""
        reshard(module)
        like = trainable_state(module)
        self.load_state_dict({n: shard_of(t, like[n]) for n, t in state.items()})

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
