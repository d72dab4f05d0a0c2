"""Raw annotation records -> WebDataset shards, a Parquet pair manifest and data stats.

Streams the records once: each line is validated, quarantined with a reason or written to
its split's shard; memory holds one record, one manifest batch and the set of seen ids.
Shard bytes are deterministic (fixed mtime/owner, sorted member order, no compression).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from tqdm import tqdm

from onereward.data.records import (
    RECORDS_FILE, ImageLimits, Record, RecordError, check_structure, load_images, parse_line, record_lines,
)

SPLITS = ("train", "val", "test")

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("task", pa.string()),
        ("dimension", pa.string()),
        ("winner", pa.int32()),
        ("loser", pa.int32()),
        ("prompt", pa.string()),
        ("tags", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class ShardConfig:
    """params.yaml `shard`."""

    seed: int = 0
    """Salt of the id hash that assigns inputs to splits."""
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    """Fraction of inputs per split; an input id always lands in exactly one split."""
    max_samples_per_shard: int = 200
    """A new shard starts after this many inputs..."""
    max_shard_bytes: int = 64_000_000
    """...or after this many bytes, whichever comes first."""
    strict: bool = False
    """Stop at the first bad record (exit non-zero) instead of quarantining it."""
    workers: int = 2
    """Processes that read and decode images; output bytes do not depend on it."""
    max_image_pixels: int = ImageLimits.max_pixels
    """Largest width x height an image header may claim, checked before decoding (image_too_large).
    Pillow refuses headers above 2 x Image.MAX_IMAGE_PIXELS (179 MP) whatever this says."""
    max_image_bytes: int = ImageLimits.max_bytes
    """Largest image file in bytes, checked before reading it (image_too_large)."""

    def __post_init__(self):
        if set(self.split) != set(SPLITS):
            raise ValueError(f"shard.split must name exactly {SPLITS}, got {sorted(self.split)}")
        if abs(sum(self.split.values()) - 1.0) > 1e-6 or min(self.split.values()) < 0:
            raise ValueError(f"shard.split fractions must be >= 0 and sum to 1, got {self.split}")
        if self.max_image_pixels < 1 or self.max_image_bytes < 1:
            raise ValueError("shard.max_image_pixels and shard.max_image_bytes must be positive")

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(max_pixels=self.max_image_pixels, max_bytes=self.max_image_bytes)


def split_of(record_id: str, cfg: ShardConfig) -> str:
    """Deterministic split from a hash of the id: independent of record order and of other ids."""
    digest = hashlib.sha256(f"{cfg.seed}:{record_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += cfg.split[name]
        if u < edge:
            return name
    return SPLITS[-1]


def to_sample(record: Record) -> dict:
    sample = {
        "__key__": record.id,
        "json": json.dumps(record.metadata(), sort_keys=True).encode(),
        f"source.{record.source.extension}": record.source.data,
        f"mask.{record.mask.extension}": record.mask.data,
    }
    for i, cand in enumerate(record.candidates):
        sample[f"cand_{i}.{cand.extension}"] = cand.data
    if record.ground_truth is not None:
        sample[f"ground_truth.{record.ground_truth.extension}"] = record.ground_truth.data
    return sample


class _SplitWriters:
    """One lazily opened ShardWriter per split, so an empty split leaves no empty tar."""

    def __init__(self, out_dir: Path, cfg: ShardConfig):
        self.out_dir, self.cfg, self.writers = out_dir, cfg, {}

    def write(self, split: str, sample: dict) -> str:
        if split not in self.writers:
            (self.out_dir / split).mkdir(parents=True, exist_ok=True)
            self.writers[split] = wds.ShardWriter(
                str(self.out_dir / split / f"{split}-%06d.tar"),
                maxcount=self.cfg.max_samples_per_shard,
                maxsize=self.cfg.max_shard_bytes,
                verbose=0,
                encoder=False,
                mtime=0,
                user="onereward",
                group="onereward",
            )
        writer = self.writers[split]
        writer.write(sample)
        return str(Path(writer.fname).relative_to(self.out_dir))

    def close(self):
        for writer in self.writers.values():
            writer.close()


class _Manifest:
    """Parquet manifest written in row batches, so it never sits whole in memory."""

    BATCH = 4096

    def __init__(self, path: Path):
        self.writer = pq.ParquetWriter(path, MANIFEST_SCHEMA, compression="zstd")
        self.rows: list[dict] = []

    def add(self, row: dict):
        self.rows.append(row)
        if len(self.rows) >= self.BATCH:
            self.flush()

    def flush(self):
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=MANIFEST_SCHEMA))
            self.rows = []

    def close(self):
        self.flush()
        self.writer.close()


WINDOW = 256
"""Records per batch handed to the image-checking workers (bounds memory)."""


def _load(args) -> Record | RecordError:
    obj, line, root, limits = args
    try:
        return load_images(obj, line, root, limits)
    except RecordError as e:
        return e


def _checked(lines, root: Path, pool, limits: ImageLimits) -> Iterator[Record | RecordError]:
    """Every (line number, non-blank line) as a Record or a RecordError, in line order.

    Structure checks run here, in order, since duplicate ids depend on what came before;
    the costly image reads and decodes run in the pool, one window ahead of the writer.
    """
    seen_ids: set[str] = set()

    def submit(batch):
        todo = [b for b in batch if not isinstance(b, RecordError)]
        return batch, (pool.map_async(_load, todo) if pool else list(map(_load, todo)))

    def drain(batch, result):
        loaded = iter(result.get() if pool else result)
        for item in batch:
            yield item if isinstance(item, RecordError) else next(loaded)

    pending, batch = None, []
    for line_no, text in lines:
        try:
            obj = parse_line(text, line_no)
            check_structure(obj, line_no, seen_ids)
            batch.append((obj, line_no, root, limits))
        except RecordError as e:
            batch.append(e)
        if len(batch) >= WINDOW:
            submitted, batch = submit(batch), []
            if pending:
                yield from drain(*pending)
            pending = submitted
    if pending:
        yield from drain(*pending)
    yield from drain(*submit(batch))


def shard_dataset(root: Path, shards_dir: Path, manifest_path: Path, quarantine_path: Path, cfg: ShardConfig) -> dict:
    """Validate, split and shard every record under ``root``; return the data stats."""
    records_file = Path(root) / RECORDS_FILE
    if not records_file.is_file():
        raise FileNotFoundError(f"{records_file} not found: a dataset root holds {RECORDS_FILE} (docs/data-format.md)")
    counts = Counter()
    quarantined = Counter()
    inputs = Counter()
    pairs: dict = defaultdict(lambda: defaultdict(Counter))
    writers = _SplitWriters(Path(shards_dir), cfg)
    manifest = _Manifest(Path(manifest_path))
    pool = multiprocessing.get_context("fork").Pool(cfg.workers) if cfg.workers > 1 else None
    try:
        with open(quarantine_path, "w", encoding="utf-8") as bad:
            checked = _checked(record_lines(records_file), Path(root), pool, cfg.limits)
            for item in tqdm(checked, desc="shard", unit="rec"):
                counts["records_in"] += 1
                if isinstance(item, RecordError):
                    if cfg.strict:
                        raise item
                    quarantined[item.reason] += 1
                    bad.write(json.dumps(item.to_json(), sort_keys=True) + "\n")
                    continue
                record = item
                split = split_of(record.id, cfg)
                shard = writers.write(split, to_sample(record))
                counts["accepted"] += 1
                inputs[split] += 1
                for dim, label in record.labels.items():
                    pairs[split][record.task][dim] += 1
                    manifest.add(
                        dict(key=record.id, shard=shard, split=split, task=record.task, dimension=dim,
                             winner=label["best"], loser=label["worst"], prompt=record.prompt, tags=record.tags)
                    )
    finally:
        if pool:
            pool.terminate()
        writers.close()
        manifest.close()
    stats = {
        "records_in": counts["records_in"],
        "accepted": counts["accepted"],
        "quarantined": sum(quarantined.values()),
        "quarantined_by_reason": dict(sorted(quarantined.items())),
        "inputs_per_split": {s: inputs[s] for s in SPLITS},
        "pairs": {s: {t: dict(sorted(d.items())) for t, d in sorted(pairs[s].items())} for s in SPLITS},
        "pairs_per_split": {s: sum(sum(d.values()) for d in pairs[s].values()) for s in SPLITS},
    }
    assert stats["records_in"] == stats["accepted"] + stats["quarantined"]
    return stats
