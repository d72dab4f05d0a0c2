"""Full fine-tuning sharded over processes with FSDP2 (``train_policy.parallel: fsdp``).

The policy's transformer blocks are each one unit of ``torch.distributed.fsdp.fully_shard`` (the
function accelerate's FSDP2 plugin calls), the rest of the transformer one more. The stage shards
by itself rather than through accelerate's plugin because accelerate enables FSDP on GPUs only;
this way the same code runs on two CPU processes in the tests and on eight GPUs.

What sharding changes, and where it is handled:
- a parameter is a ``DTensor`` whose ``to_local()`` is this process's shard; the EMA and the
  frozen reference keep shards too (``local``), so their memory divides by the process count;
- after a forward the root unit keeps its gathered weights for the backward, so code that reads
  or writes shards first calls ``reshard`` (or it would see the gathered copy, or write a shard
  the next forward ignores);
- every forward is a collective: all processes make the same number of transformer calls;
- checkpoints and exports hold full tensors, gathered with ``torch.distributed.checkpoint``'s
  state-dict API, in the same files as an unsharded run.
Without sharding every function here is the plain single-module operation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.tensor import DTensor, distribute_tensor

PARALLEL = ("ddp", "fsdp")


def shard_transformer(tr: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Shard ``tr`` in place: every (single-stream) transformer block, then the root.

    Weights are gathered in ``compute_dtype`` (bf16 on GPUs) and gradients reduced in fp32; the
    fp32 master shards are what the optimiser steps.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for block in [*tr.transformer_blocks, *tr.single_transformer_blocks]:
        fully_shard(block, mp_policy=mp)
    fully_shard(tr, mp_policy=mp)


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def reshard(module: torch.nn.Module) -> None:
    """Free gathered weights everywhere in ``module``, so its parameters are shards again."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter (the whole tensor when it is not sharded)."""
    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a DTensor, e.g. a gradient norm)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def gather_shards(like: dict[str, torch.Tensor], shards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole CPU tensors from per-process shards laid out as the parameters ``like``.

    Sharded, this is a collective, one tensor at a time, and only the main process keeps the
    result (the others get an empty dict), as ``whole_state_dict``.
    """
    import torch.distributed as dist

    out = {}
    for n, p in like.items():
        t = shards[n]
        if isinstance(p, DTensor):
            t = DTensor.from_local(t.to(p.device), p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()
            if dist.get_rank() != 0:
                continue
        out[n] = t.detach().cpu()
    return out


def whole_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's whole state dict on the CPU (a collective when sharded; under sharding only
    the main process gets the tensors, the others an empty dict)."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(module)
    return get_model_state_dict(module, options=_dcp_options(cpu_offload=True))


def shard_of(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of ``whole`` that this process holds of parameter ``like`` (a collective if sharded)."""
    if isinstance(like, DTensor):
        return distribute_tensor(whole.to(like.device, like.dtype), like.device_mesh, like.placements).to_local()
    return whole


def _dcp_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def optimizer_state(module: torch.nn.Module, optimizer) -> dict:
    """The optimiser's state to save: whole tensors (keyed by parameter name when sharded)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    if not is_sharded(module):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(module)
    return get_optimizer_state_dict(module, optimizer, options=_dcp_options(cpu_offload=True))


def load_optimizer_state(module: torch.nn.Module, optimizer, state: dict) -> None:
    """Inverse of ``optimizer_state``; every process passes the whole state read from disk."""
    optimizer = getattr(optimizer, "optimizer", optimizer)
    if not is_sharded(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    reshard(module)
    set_optimizer_state_dict(module, optimizer, state, options=_dcp_options())


def save_pretrained_whole(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Save a sharded diffusers model as an unsharded one would be (main process, ``weights`` whole)."""
    from diffusers import ModelMixin
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(module).__mro__ if issubclass(c, ModelMixin) and not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = cls.from_config(module.config)
    plain.load_state_dict(weights, assign=True)
    plain.save_pretrained(path, safe_serialization=True)
