"""Training state on disk without pickle: the one place every stage saves and loads it.

Resuming must never run code carried by a file, so state is split in two: tensors go to
safetensors, everything else (counters, hyperparameters, RNG words) to JSON. A state tree
of dicts, lists, tuples, scalars and tensors is written as ``<name>.json`` (the tree, with
tensors replaced by ``{"__tensor__": key}``) beside ``<name>.safetensors``; loading parses
only those two formats. Before reading a checkpoint folder, ``check_loadable`` refuses it if
it holds anything in a pickle format, so a planted or old-format file stops the resume with
a clear message instead of being ignored silently or opened.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from onereward.io import dumps_json

LOADABLE_SUFFIXES = (".json", ".safetensors")
"""The only files a checkpoint folder may hold at its top level."""
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy", ".npz")
"""Formats that can carry pickled code; refused anywhere inside a checkpoint."""
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")
"""Leading bytes of pickle protocols 2-5 and of torch.save's zip archive."""


class UnsafeCheckpoint(ValueError):
    """A checkpoint folder holds a file that only an unpickler could read."""


def check_loadable(folder: Path) -> None:
    """Raise ``UnsafeCheckpoint`` unless ``folder`` holds only safetensors, JSON and plain log folders."""
    folder = Path(folder)
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(folder)
        top_level_other = len(rel.parts) == 1 and f.suffix not in LOADABLE_SUFFIXES
        with f.open("rb") as fh:
            head = fh.read(4)
        if top_level_other or f.suffix in PICKLE_SUFFIXES or head.startswith(_PICKLE_MAGIC):
            raise UnsafeCheckpoint(
                f"{folder}: refusing to resume: {rel} is not safetensors or JSON (a pickle file could run code "
                f"when loaded; checkpoints from older versions used one); delete {folder} to start over"
            )


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        # optimizer state is keyed by int parameter index: keep key types exactly
        return {"__items__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}.{k}")] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj  # JSON writes floats as repr: they read back bit for bit
    raise TypeError(f"training state {where}: cannot store a {type(obj).__name__} without pickle")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def save_tree(tree: Any, folder: Path, name: str) -> None:
    """Write ``tree`` as ``<name>.json`` plus ``<name>.safetensors`` in ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(tree, tensors, name)
    save_tensors(tensors, Path(folder) / f"{name}.safetensors")
    (Path(folder) / f"{name}.json").write_text(dumps_json(encoded))


def load_tree(folder: Path, name: str) -> Any:
    """Read what ``save_tree`` wrote (tensors on CPU)."""
    tensors = load_tensors(Path(folder) / f"{name}.safetensors")
    return _decode(json.loads((Path(folder) / f"{name}.json").read_text()), tensors)


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path, name: str = "optimizer") -> None:
    """The full ``state_dict``: per-parameter moments and step counters, and every param group's settings."""
    save_tree(optimizer.state_dict(), folder, name)


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path, name: str = "optimizer") -> None:
    optimizer.load_state_dict(load_tree(folder, name))


def rng_state() -> dict:
    """Python, NumPy (legacy global), torch CPU and, where present, every CUDA generator."""
    bit_generator, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": bit_generator, "keys": keys.tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: Path, name: str = "rng") -> None:
    save_tree(rng_state(), folder, name)


def load_rng(folder: Path, name: str = "rng") -> None:
    set_rng_state(load_tree(folder, name))
