"""The held-out benchmark: inputs of the test split grouped by the registry's evaluation settings."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from onereward.data.reader import input_dataset
from onereward.tasks import EVAL_SETTINGS, eval_settings_of


@dataclass
class Item:
    """One benchmark input (as the reader yields it) plus tensors for the models."""

    key: str
    task: str
    prompt: str | None
    tags: list[str]
    source: Image.Image
    mask: Image.Image
    candidates: list[Image.Image]
    settings: list[str] = field(default_factory=list)
    """Evaluation settings this input is reported under (fill and fill_text overlap)."""
    ground_truth: Image.Image | None = None
    """What the result should look like (the rater's reference); None when the data has none."""
    content: dict | None = None
    """The prompted content and its ground-truth box, for the rater's text alignment."""

    def image_tensor(self) -> torch.Tensor:
        """``[1, 3, H, W]`` in [0, 1]."""
        return to_tensor(self.source)[None]

    def mask_tensor(self) -> torch.Tensor:
        """``[1, 1, H, W]``, 1 = region to generate (> 127, the data format's rule)."""
        return torch.from_numpy((np.asarray(self.mask.convert("L")) > 127).astype(np.float32))[None, None]

    def candidate_tensor(self) -> torch.Tensor:
        return torch.stack([to_tensor(c) for c in self.candidates])


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def sample_seed(seed: int, key: str) -> int:
    """Noise seed of one input: stable across processes, runs and batch composition."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def select(shards: str, split: str, per_setting: int) -> tuple[list[Item], dict[str, list[str]]]:
    """(items sorted by key, setting -> keys): the first ``per_setting`` inputs by key per setting."""
    everything = {}
    for s in input_dataset(shards, split):
        everything[s["key"]] = Item(s["key"], s["task"], s["prompt"], list(s["tags"]), s["source"], s["mask"],
                                    s["candidates"], ground_truth=s.get("ground_truth"), content=s.get("content"))
    by_setting: dict[str, list[str]] = {name: [] for name in EVAL_SETTINGS}
    for key in sorted(everything):
        it = everything[key]
        for name in eval_settings_of(it.task, it.prompt, it.tags):
            if not per_setting or len(by_setting[name]) < per_setting:
                by_setting[name].append(key)
                it.settings.append(name)
    items = [everything[k] for k in sorted(everything) if everything[k].settings]
    return items, by_setting
