"""Resumable checkpoints: weights, EMA, optimizer and RNG state, all safetensors and JSON (no pickle).

Layout: ``<root>/step-NNNNNN/`` with ``trainable.safetensors``, ``ema.safetensors``,
``optimizer.{json,safetensors}`` (all whole tensors, also when the run is sharded), per process ``rng-rank{r}.{json,safetensors}`` and
``refcache-rank{r}.safetensors`` (Alg. 1's reference images), the DVCLive folder as it was,
and ``meta.json`` written last (``onereward.train_state`` reads and writes the state). A folder is
complete only once renamed from its ``.tmp-`` name, so a kill mid-save leaves nothing that
looks complete. ``meta.json`` records a fingerprint of the run's settings; checkpoints of other
settings are never resumed, and one written by another number of processes stops the run with
a message instead of being deleted (draws, reference caches and RNG streams are per process).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from onereward import train_state
from onereward.io import dumps_json

META = "meta.json"


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
        if not found:
            return None
        written_by = json.loads((found[-1] / META).read_text()).get("world_size", 1)
        if written_by != self.acc.num_processes:
            raise RuntimeError(
                f"{found[-1]} (step {step_of(found[-1])}) was written by {written_by} process(es) and this run has "
                f"{self.acc.num_processes}: relaunch with {written_by} to resume it (each process's conditions, "
                f"noises and reference cache continue from it), or delete {self.root} to start over")
        return found[-1]

    def clear_stale(self) -> None:
        """Remove checkpoints of other settings and half-written ones (main process)."""
        if self.acc.is_main_process and self.root.exists():
            keep = set(complete(self.root, self.fp))
            for d in self.root.iterdir():
                if d not in keep:
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink()
        self.acc.wait_for_everyone()

    def save(self, step: int, trainable: dict, ema: dict, optimizer: dict, refcache: dict, live_dir: Path | None,
             extra: dict | None = None) -> Path:
        """Write one checkpoint (all processes call it; the main process's ``trainable``, ``ema`` and
        ``optimizer`` state are written); ``extra`` is JSON kept in meta.json."""
        acc, rank = self.acc, self.acc.process_index
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".tmp-step-{step:06d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        train_state.save_rng(tmp, f"rng-rank{rank}")
        train_state.save_tensors(refcache, tmp / f"refcache-rank{rank}.safetensors")
        if acc.is_main_process:
            train_state.save_tensors(trainable, tmp / "trainable.safetensors")
            train_state.save_tensors(ema, tmp / "ema.safetensors")
            train_state.save_tree(optimizer, tmp, "optimizer")
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

    def load(self, path: Path) -> dict:
        """Restore RNG in place; return the trainable, ema, optimizer and refcache states and the step.

        Raises ``train_state.UnsafeCheckpoint`` if the folder holds a pickle file (planted, or
        written by an older version); nothing in it is opened then.
        """
        rank = self.acc.process_index
        train_state.check_loadable(path)
        train_state.load_rng(path, f"rng-rank{rank}")
        cache_file = path / f"refcache-rank{rank}.safetensors"
        return {
            "step": step_of(path),
            "trainable": train_state.load_tensors(path / "trainable.safetensors"),
            "ema": train_state.load_tensors(path / "ema.safetensors"),
            "optimizer": train_state.load_tree(path, "optimizer"),
            "refcache": train_state.load_tensors(cache_file) if cache_file.exists() else {},
            "dvclive": path / "dvclive",
            "extra": json.loads((path / META).read_text()).get("extra", {}),
        }
