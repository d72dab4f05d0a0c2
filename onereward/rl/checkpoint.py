"""Resumable checkpoints: trainable weights and EMA as safetensors, optimizer and RNG as torch state.

Layout: ``<root>/step-NNNNNN/`` with ``trainable.safetensors``, ``ema.safetensors``,
``optimizer.pt``, per process ``rng-rank{r}.pt`` and ``refcache-rank{r}.safetensors`` (Alg. 1's
reference images), the DVCLive folder as it was, and ``meta.json`` written last. A folder is
complete only once renamed from its ``.tmp-`` name, so a kill mid-save leaves nothing that
looks complete. ``meta.json`` records a fingerprint of the run's settings; checkpoints of other
settings are never resumed.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from onereward.io import dumps_json

META = "meta.json"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def complete(root: Path, fingerprint: str) -> list[Path]:
    """Complete checkpoints of this run's settings, oldest first."""
    found = []
    for d in sorted(Path(root).glob("step-*")):
        meta = d / META
        if meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint:
            found.append(d)
    return found


def step_of(path: Path) -> int:
    return json.loads((path / META).read_text())["step"]


class Checkpointer:
    """Saves and restores the training state of every process of one run."""

    def __init__(self, root: str | Path, fingerprint: str, accelerator, keep: int = 2):
        self.root, self.fp, self.acc, self.keep = Path(root), fingerprint, accelerator, keep

    def latest(self) -> Path | None:
        found = complete(self.root, self.fp)
        return found[-1] if found else None

    def clear_stale(self) -> None:
        """Remove checkpoints of other settings and half-written ones (main process)."""
        if self.acc.is_main_process and self.root.exists():
            keep = set(complete(self.root, self.fp))
            for d in self.root.iterdir():
                if d not in keep:
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink()
        self.acc.wait_for_everyone()

    def save(self, step: int, trainable: dict, ema: dict, optimizer, refcache: dict, live_dir: Path | None,
             extra: dict | None = None) -> Path:
        """Write one checkpoint (all processes call it); ``extra`` is JSON kept in meta.json."""
        acc, rank = self.acc, self.acc.process_index
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".tmp-step-{step:06d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
        _save_tensors(refcache, tmp / f"refcache-rank{rank}.safetensors")
        if acc.is_main_process:
            _save_tensors(trainable, tmp / "trainable.safetensors")
            _save_tensors(ema, tmp / "ema.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if live_dir is not None and live_dir.exists():
                shutil.copytree(live_dir, tmp / "dvclive")
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {"step": step, "fingerprint": self.fp, "world_size": acc.num_processes, "extra": extra or {}}
            (tmp / META).write_text(dumps_json(meta))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in complete(self.root, self.fp)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load(self, path: Path, optimizer) -> dict:
        """Restore optimizer and RNG in place; return trainable, ema, refcache tensors and the step."""
        rank = self.acc.process_index
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        set_rng_state(torch.load(path / f"rng-rank{rank}.pt", weights_only=False))
        cache_file = path / f"refcache-rank{rank}.safetensors"
        return {
            "step": step_of(path),
            "trainable": load_file(str(path / "trainable.safetensors")),
            "ema": load_file(str(path / "ema.safetensors")),
            "refcache": load_file(str(cache_file)) if cache_file.exists() else {},
            "dvclive": path / "dvclive",
            "extra": json.loads((path / META).read_text()).get("extra", {}),
        }
