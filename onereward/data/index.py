"""Random access to the inputs of a split's shards, for RL's conditions: memory flat in the data.

One pass over the split's tars records, per input, where its members lie (tar offsets) and the
few fields a draw needs (task, prompt, image size); pixels are read again only when a step
draws the input. Each input is decoded once during that pass, so a sample damaged after
``shard`` checked it is skipped then, logged and counted in ``reader.SKIPPED`` like the
streaming reader's, instead of failing a step later. Only the split's own tar files are read.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from onereward.data.reader import SKIPPED, UndecodableSample, _image, decode_header, has_member, shard_urls

WANTED = ("json", "source", "mask", "ground_truth")
"""Members of a sample a condition uses (candidates are the judge's, not RL's)."""


@dataclass(frozen=True)
class Condition:
    """One input's pixels: uint8 ``[3, H, W]`` image, ``[1, H, W]`` mask (1 = generate), ground truth or None."""

    image: torch.Tensor
    mask: torch.Tensor
    truth: torch.Tensor | None


def _chw(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()


def decode_condition(sample: dict, with_truth: bool) -> tuple[dict, Condition]:
    """A shard sample's (metadata, pixels); ``UndecodableSample`` naming the key when a part fails."""
    key = sample["__key__"]
    head = decode_header(sample)
    mask = torch.from_numpy((np.asarray(_image(sample, "mask", "L")) > 127).astype(np.uint8))[None]
    image = _chw(_image(sample, "source", "RGB"))
    if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
        raise UndecodableSample(key, f"mask {tuple(mask.shape[-2:])} and source {tuple(image.shape[-2:])} differ in size")
    truth = _chw(_image(sample, "ground_truth", "RGB")) if with_truth and has_member(sample, "ground_truth") else None
    return head, Condition(image, mask, truth)


class ShardIndex:
    """Where each input of ``split`` lies in its tars, sorted by key; ``fetch(i)`` reads one back.

    Per input it keeps the key, task, prompt, size and its members' (offset, size) in one array:
    about 200 bytes, against 16 kB of pixels for a 64 px input (BENCHMARKS.md).
    """

    def __init__(self, shards_dir: str | Path, split: str, with_truth: bool = False, limit: int = 0):
        self.with_truth = with_truth
        self.urls = shard_urls(shards_dir, split)
        members: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}
        for s, url in enumerate(self.urls):
            with tarfile.open(url) as tar:
                while (m := tar.next()) is not None:
                    tar.members.clear()  # tarfile keeps every header read; the index keeps its own
                    key, _, suffix = m.name.partition(".")
                    if m.isfile() and suffix.split(".")[0] in WANTED:
                        members.setdefault(key, (s, {}))[1][suffix] = (m.offset_data, m.size)
        self.keys, self.tasks, self.prompts, self.contents, self.sizes = [], [], [], [], []
        shards, layouts, spans = [], [], []
        shared: dict = {}  # equal values kept once (tasks, prompts, sizes, member layouts)
        for key in tqdm(sorted(members), desc=f"index {split}", unit="input", leave=False):
            if limit and len(self.keys) >= limit:
                break
            shard, where = members.pop(key)
            try:
                head, cond = decode_condition(self._read(key, shard, tuple(where), list(where.values())), with_truth)
            except UndecodableSample as e:
                SKIPPED(e)
                continue
            self.keys.append(key)
            self.tasks.append(shared.setdefault(("t", head["task"]), head["task"]))
            self.prompts.append(shared.setdefault(("p", head["prompt"]), head["prompt"]))
            self.contents.append(head["content"])
            self.sizes.append(shared.setdefault(("s", *cond.image.shape[-2:]), tuple(cond.image.shape[-2:])))
            layout = tuple(where)
            layouts.append(shared.setdefault(("l", layout), layout))
            shards.append(shard)
            spans.append(list(where.values()) + [(0, 0)] * (len(WANTED) - len(where)))
        self._shard = np.array(shards, dtype=np.int32)
        self._layout = layouts
        self._span = np.array(spans, dtype=np.int64).reshape(len(shards), len(WANTED), 2)
        self.has_truth = with_truth and bool(self.keys) and all(
            any(k.startswith("ground_truth") for k in layout) for layout in layouts)

    def _read(self, key: str, shard: int, layout: tuple[str, ...], spans) -> dict:
        sample = {"__key__": key}
        with open(self.urls[shard], "rb") as f:
            for suffix, (offset, size) in zip(layout, spans):
                f.seek(int(offset))
                sample[suffix] = f.read(int(size))
        return sample

    def __len__(self) -> int:
        return len(self.keys)

    def fetch(self, i: int) -> Condition:
        sample = self._read(self.keys[i], int(self._shard[i]), self._layout[i], self._span[i])
        return decode_condition(sample, self.has_truth)[1]
