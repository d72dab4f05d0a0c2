"""Read inputs and preference pairs back from the shards with the stock WebDataset API.

Shards are split by node (torch.distributed rank) and by DataLoader worker, so every
process of a multi-GPU or multi-worker run reads a disjoint set of shards.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import webdataset as wds


def shard_urls(shards_dir: str | Path, split: str) -> list[str]:
    urls = sorted(str(p) for p in (Path(shards_dir) / split).glob(f"{split}-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no shards for split {split!r} under {shards_dir}/{split}")
    return urls


def _to_input(sample: dict) -> dict:
    meta = sample["json"]
    ext = lambda stem: next(k for k in sample if k.split(".")[0] == stem)  # noqa: E731
    return {
        "key": sample["__key__"],
        "task": meta["task"],
        "prompt": meta["prompt"],
        "tags": meta["tags"],
        "labels": meta["labels"],
        "source": sample[ext("source")].convert("RGB"),
        "mask": sample[ext("mask")].convert("L"),
        "candidates": [sample[ext(f"cand_{i}")].convert("RGB") for i in range(meta["num_candidates"])],
    }


def input_dataset(
    shards_dir: str | Path, split: str, shuffle: bool = False, seed: int = 0, buffer: int = 256
) -> wds.WebDataset:
    """One dict per input: key, task, prompt, tags, labels, source, mask, candidates."""
    urls = shard_urls(shards_dir, split)
    ds = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if shuffle else False,
        detshuffle=True,
        seed=seed,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        empty_check=False,  # a node or worker may legitimately get no shard of a tiny split
    )
    if shuffle:
        ds = ds.shuffle(buffer, rng=random.Random(seed))
    return ds.decode("pil").map(_to_input)


def expand_pairs(inputs, both_orders: bool = True) -> Iterator[dict]:
    """(input) -> one pair per labelled dimension, winner first, then (optionally) loser first."""
    for item in inputs:
        for dim, label in sorted(item["labels"].items()):
            winner, loser = item["candidates"][label["best"]], item["candidates"][label["worst"]]
            base = {k: item[k] for k in ("key", "task", "prompt", "tags", "source", "mask")}
            yield {**base, "dimension": dim, "first": winner, "second": loser, "label": 1}
            if both_orders:
                yield {**base, "dimension": dim, "first": loser, "second": winner, "label": 0}


def pair_dataset(
    shards_dir: str | Path, split: str, both_orders: bool = True, shuffle: bool = False, seed: int = 0
) -> wds.WebDataset:
    """One dict per (input, dimension[, order]); ``label`` is 1 when ``first`` is the winner."""
    return input_dataset(shards_dir, split, shuffle=shuffle, seed=seed).compose(
        lambda src: expand_pairs(src, both_orders)
    )
