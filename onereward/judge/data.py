"""Judge training and evaluation examples: the query table joined with the shards' images.

The query table (``data/queries.parquet``, written by the ``queries`` stage) has one row per
(input, dimension, order); the images come from ``onereward.data.reader.input_dataset``.
Streaming by input keeps memory flat for a real annotation set.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from onereward.judge.image import batch_or_list, to_tensor
from onereward.judge.queries import QueryTemplates
from onereward.tasks import dimensions_for

SizeRule = Callable[[int, int], tuple[int, int]]
"""(height, width) -> the size the judge resizes an image to."""
Images = Union[torch.Tensor, list[torch.Tensor]]

QUERY_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("task", pa.string()),
        ("dimension", pa.string()),
        ("order", pa.int8()),  # 0: winner shown first, 1: loser shown first
        ("first", pa.int32()),  # candidate index shown first
        ("second", pa.int32()),
        ("label", pa.int8()),  # 1 when the first image is the winner
        ("query", pa.string()),
        ("template_version", pa.string()),
    ]
)


def render_rows(manifest_rows: Iterable[dict], templates: QueryTemplates) -> list[dict]:
    """Both orders of every manifest pair, sorted by (split, key, dimension, order)."""
    rows = []
    for m in manifest_rows:
        if m["dimension"] not in dimensions_for(m["task"], m["prompt"]):
            raise ValueError(f"{m['key']}: dimension {m['dimension']!r} is not judged for this input")
        query = templates.render(m["task"], m["dimension"], m["prompt"])
        for order, (first, second) in enumerate(((m["winner"], m["loser"]), (m["loser"], m["winner"]))):
            rows.append(
                {
                    "key": m["key"], "split": m["split"], "task": m["task"], "dimension": m["dimension"],
                    "order": order, "first": first, "second": second, "label": 1 - order,
                    "query": query, "template_version": str(templates.version),
                }
            )
    rows.sort(key=lambda r: (r["split"], r["key"], r["dimension"], r["order"]))
    return rows


def write_query_table(rows: list[dict], path: str | Path) -> None:
    table = pa.Table.from_pylist(rows, schema=QUERY_SCHEMA)
    pq.write_table(table, path, compression="zstd")


def read_query_table(path: str | Path, split: str | None = None) -> list[dict]:
    rows = pq.read_table(path).to_pylist()
    return [r for r in rows if split is None or r["split"] == split]


@dataclass
class Example:
    """One judge input: two images, a query, and the answer the winner-first order expects."""

    first: torch.Tensor
    second: torch.Tensor
    query: str
    label: int
    key: str
    task: str
    dimension: str
    order: int


def examples(inputs: Iterable[dict], rows: list[dict], judge_size: SizeRule | None = None,
             resized: dict | None = None) -> Iterator[Example]:
    """Join input samples (``input_dataset`` dicts) with their query rows.

    ``judge_size``: the judge's size rule (``Judge.input_size``); each candidate is resized once,
    with PIL's bicubic filter, to the size the judge would give it. The judge's own
    differentiable resize computes exactly these pixels (it emulates PIL), so this only saves
    resizing an image again for every row it appears in. A size the rule would change again is
    left to the judge (``smart_resize`` is not always idempotent near the pixel bounds).
    ``resized``: a dict each input's resized candidates stay in (uint8, by key), for a stream
    that comes round again (training epochs).
    """
    by_key: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_key[r["key"]].append(r)
    for item in inputs:
        mine = by_key.get(item["key"])
        if not mine:
            continue
        arrays = resized.get(item["key"]) if resized is not None else None
        if arrays is None:
            arrays = [np.asarray(_resized(c, judge_size).convert("RGB")) for c in item["candidates"]]
            if resized is not None:
                resized[item["key"]] = arrays
        cands = [to_tensor(a) for a in arrays]
        for r in mine:
            yield Example(cands[r["first"]], cands[r["second"]], r["query"], r["label"], r["key"], r["task"], r["dimension"], r["order"])


def _resized(image: Image.Image, judge_size: SizeRule | None) -> Image.Image:
    if judge_size is None:
        return image
    h, w = judge_size(image.height, image.width)
    if (h, w) == (image.height, image.width) or judge_size(h, w) != (h, w):
        return image
    return image.resize((w, h), Image.Resampling.BICUBIC)


def shuffled(stream: Iterable, buffer: int, rng: random.Random) -> Iterator:
    """Deterministic shuffle buffer over a stream (pairs of one input get spread out)."""
    buf = []
    for x in stream:
        buf.append(x)
        if len(buf) >= buffer:
            yield buf.pop(rng.randrange(len(buf)))
    while buf:
        yield buf.pop(rng.randrange(len(buf)))


def batched(stream: Iterable[Example], size: int) -> Iterator[list[Example]]:
    batch = []
    for x in stream:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def stack(batch: list[Example]) -> tuple[Images, Images, list[str], torch.Tensor]:
    """(first, second, queries, labels); images as one tensor, or lists where sizes differ (the
    judge takes either)."""
    return (
        batch_or_list([e.first for e in batch]),
        batch_or_list([e.second for e in batch]),
        [e.query for e in batch],
        torch.tensor([e.label for e in batch], dtype=torch.float32),
    )
