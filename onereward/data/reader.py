"""Read inputs and preference pairs back from the shards with the stock WebDataset API.

Shards are split by node (torch.distributed rank) and by DataLoader worker, so every
process of a multi-GPU or multi-worker run reads a disjoint set of shards.

A sample that does not decode (a shard damaged after ``shard`` checked it) is skipped, logged
once with its key and why, and counted in :data:`SKIPPED`, which stages report in their
metrics: on shards that ``shard`` wrote and nobody touched since, it stays at zero.
"""

from __future__ import annotations

import io
import json
import logging
import random
from functools import partial
from pathlib import Path
from typing import Iterator

import webdataset as wds
from PIL import Image

from onereward.data.records import FORMATS

log = logging.getLogger(__name__)


class SkippedSamples:
    """Samples a reader could not decode: key -> why; a WebDataset exception handler."""

    def __init__(self):
        self.why: dict[str, str] = {}

    def __call__(self, exn: Exception) -> bool:
        key = getattr(exn, "key", None) or f"(no key: {exn})"  # a tar-level error names its shard
        if key not in self.why:  # an input read every epoch is logged and counted once
            self.why[key] = str(exn)
            log.warning("skipping sample %s: %s", key, exn)
        return True  # go on with the next sample

    def __len__(self) -> int:
        return len(self.why)

    def __contains__(self, key: str) -> bool:
        return key in self.why


SKIPPED = SkippedSamples()
"""This process's skips (a stage is one process): what stages put in their metrics."""


class UndecodableSample(ValueError):
    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"sample {key!r}: {message}")


def _image(sample: dict, stem: str, mode: str) -> Image.Image:
    name = next((k for k in sample if k.split(".")[0] == stem), None)
    if name is None:
        raise UndecodableSample(sample["__key__"], f"no {stem} image in the sample")
    try:
        with Image.open(io.BytesIO(sample[name]), formats=FORMATS) as img:
            img.load()
            return img.convert(mode)
    except Exception as e:  # noqa: BLE001 -- decoders raise anything; the handler logs and skips
        raise UndecodableSample(sample["__key__"], f"{name}: {type(e).__name__}: {e}") from None


def shard_urls(shards_dir: str | Path, split: str) -> list[str]:
    urls = sorted(str(p) for p in (Path(shards_dir) / split).glob(f"{split}-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no shards for split {split!r} under {shards_dir}/{split}")
    return urls


def decode_header(sample: dict) -> dict:
    """A sample's metadata (task, prompt, tags, labels, content, num_candidates); its key when it fails."""
    try:
        meta = json.loads(sample["json"])
        return {**{k: meta[k] for k in ("task", "prompt", "tags", "labels")},
                "content": meta.get("content"), "num_candidates": int(meta["num_candidates"])}
    except Exception as e:  # noqa: BLE001
        raise UndecodableSample(sample.get("__key__", "?"), f"json: {type(e).__name__}: {e}") from None


def has_member(sample: dict, stem: str) -> bool:
    return any(k.split(".")[0] == stem for k in sample)


def decode_input(sample: dict) -> dict:
    """A raw shard sample -> the input dict; :class:`UndecodableSample` when any part fails."""
    head = decode_header(sample)
    n = head.pop("num_candidates")
    return {
        "key": sample.get("__key__", "?"),
        **head,
        "source": _image(sample, "source", "RGB"),
        "mask": _image(sample, "mask", "L"),
        "candidates": [_image(sample, f"cand_{i}", "RGB") for i in range(n)],
        "ground_truth": _image(sample, "ground_truth", "RGB") if has_member(sample, "ground_truth") else None,
    }


def _every_shard(urls):
    return urls


def input_dataset(
    shards_dir: str | Path, split: str, shuffle: bool = False, seed: int = 0, buffer: int = 256,
    skips: SkippedSamples | None = None, by_process: bool = True, workers: int = 0, keep: dict | None = None,
):
    """One dict per input: key, task, prompt, tags, labels, source, mask, candidates,
    ground_truth and content (both None when the record has none; evaluation only).

    Samples that do not decode are skipped and recorded in ``skips`` (default :data:`SKIPPED`).
    ``by_process``: under several processes each reads its share of the shards; ``False``: every
    process reads all of them (data-parallel judge training splits each batch instead).
    ``workers``: decode in that many DataLoader worker processes, each reading its share of the
    shards (another order than ``workers=0``, the same inputs); an input they cannot decode is
    recorded in ``skips`` here (a damaged tar header found by a worker is logged by it).
    ``keep``: a dict the decoded inputs stay in, by key, so that a split read again (every epoch
    of training) decodes each input once; it grows with the split, so it is for small sets.
    """
    if keep is not None and workers:
        raise ValueError("input_dataset: keep holds inputs decoded in this process; it cannot be used with workers")
    if workers:
        marked = _dataset(shards_dir, split, shuffle, seed, buffer, by_process).map(_decode_or_mark)
        loader = wds.WebLoader(marked, batch_size=None, num_workers=workers, persistent_workers=False)
        return _Unmarked(loader, SKIPPED if skips is None else skips)
    skips = SKIPPED if skips is None else skips
    decode = decode_input if keep is None else partial(_decode_kept, keep)
    return _dataset(shards_dir, split, shuffle, seed, buffer, by_process, skips).map(decode, handler=skips)


def _decode_kept(keep: dict, sample: dict) -> dict:
    key = sample.get("__key__", "?")
    if key not in keep:
        keep[key] = decode_input(sample)
    return keep[key]


_SKIP_MARK = "__skipped__"


def _decode_or_mark(sample: dict) -> dict:
    """In a worker: the decoded input, or a mark naming the sample and why (counted by the parent)."""
    try:
        return decode_input(sample)
    except UndecodableSample as e:
        log.warning("skipping sample %s: %s", e.key, e)
        return {_SKIP_MARK: e.key, "why": str(e)}


class _Unmarked:
    """Iterates a worker loader, recording marked samples as skipped instead of yielding them."""

    def __init__(self, loader, skips: SkippedSamples):
        self.loader, self.skips = loader, skips

    def __iter__(self):
        for item in self.loader:
            if _SKIP_MARK in item:
                self.skips.why.setdefault(item[_SKIP_MARK], item["why"])
            else:
                yield item


def _dataset(shards_dir, split, shuffle, seed, buffer, by_process, skips=None) -> wds.WebDataset:
    """The split's raw samples (shard order, optional shuffle buffer), split by process and worker."""
    urls = shard_urls(shards_dir, split)
    ds = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if shuffle else False,
        detshuffle=True,
        seed=seed,
        nodesplitter=wds.split_by_node if by_process else _every_shard,
        workersplitter=wds.split_by_worker,
        empty_check=False,  # a node or worker may legitimately get no shard of a tiny split
        handler=SKIPPED if skips is None else skips,  # a damaged tar member: skipped like an undecodable image
    )
    if shuffle:
        ds = ds.shuffle(buffer, rng=random.Random(seed))
    return ds


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
