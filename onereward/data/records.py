"""The raw annotation format and its validation (see docs/data-format.md).

One JSON object per line of ``records.jsonl`` describes one input: its task, prompt, source
image, mask, N >= 2 candidates and, per dimension, the best and the worst candidate.
Validation turns each line into a :class:`Record` (images read and decoded once) or raises
:class:`RecordError` carrying a reason code from :data:`REASONS`, so that a run can quarantine
the line and go on.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from onereward import tasks

RECORDS_FILE = "records.jsonl"
MAX_ID_LENGTH = 64
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
"""WebDataset splits keys at the first dot and ids become path parts: letters, digits, _ and - only."""

REASONS: dict[str, str] = {
    "invalid_json": "the line is not a JSON object",
    "schema": "a required field is missing or has the wrong type",
    "unsafe_id": "the id is not usable as a WebDataset key or a path",
    "duplicate_id": "an earlier record has the same id",
    "unknown_task": "the task is not in the registry",
    "unknown_tag": "a tag is not in the registry",
    "too_few_candidates": "fewer than two candidate images",
    "unknown_dimension": "a label names a dimension that is not in the registry",
    "dimension_not_for_task": "a label names a dimension the task is not judged on",
    "prompt_missing": "a prompt-dependent dimension (text alignment) is labelled on an input without prompt",
    "candidate_out_of_range": "best or worst is not a valid candidate index",
    "best_equals_worst": "best and worst name the same candidate",
    "unsafe_path": "an image path is absolute or leaves the dataset root",
    "missing_file": "an image file does not exist",
    "empty_file": "an image file has zero bytes",
    "undecodable_image": "an image file cannot be decoded (corrupt or truncated)",
    "mask_size_mismatch": "the mask's size differs from the source image's",
    "candidate_size_mismatch": "a candidate's size differs from the source image's",
    "empty_mask": "the mask marks no pixel to generate",
}

# PIL format -> WebDataset extension that the stock "pil" decoder understands.
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "PPM": "ppm", "BMP": "bmp"}


class RecordError(ValueError):
    """A record that cannot be used, with the reason code and a human message."""

    def __init__(self, reason: str, message: str, record_id: str | None = None, line: int | None = None):
        assert reason in REASONS, reason
        self.reason, self.message, self.record_id, self.line = reason, message, record_id, line
        where = f"record {record_id!r}" if record_id else f"line {line}"
        super().__init__(f"{where}: {reason}: {message}")

    def __reduce__(self):  # picklable, so worker processes can hand errors back
        return RecordError, (self.reason, self.message, self.record_id, self.line)

    def to_json(self) -> dict:
        return {"line": self.line, "id": self.record_id, "reason": self.reason, "message": self.message}


@dataclass
class EncodedImage:
    data: bytes
    extension: str
    size: tuple[int, int]


@dataclass
class Record:
    """A validated input, its images read into memory."""

    id: str
    task: str
    prompt: str | None
    tags: list[str]
    labels: dict[str, dict[str, int]]
    source: EncodedImage
    mask: EncodedImage
    candidates: list[EncodedImage] = field(default_factory=list)

    def metadata(self) -> dict:
        return {
            "id": self.id,
            "task": self.task,
            "prompt": self.prompt,
            "tags": self.tags,
            "labels": self.labels,
            "num_candidates": len(self.candidates),
        }


def parse_line(text: str, line: int) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError("invalid_json", f"{e.msg} at column {e.colno}", line=line) from None
    if not isinstance(obj, dict):
        raise RecordError("invalid_json", f"expected an object, got {type(obj).__name__}", line=line)
    return obj


def _require(obj: dict, name: str, kind, rid, line, optional=False):
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise RecordError("schema", f"field {name!r} must be {kind.__name__}, got {value!r:.60}", rid, line)
    return value


def check_structure(obj: dict, line: int, seen_ids: set[str]) -> None:
    """Every check that needs no file: id, task, tags, candidates, labels."""
    rid = obj.get("id") if isinstance(obj.get("id"), str) else None
    rid = _require(obj, "id", str, rid, line)
    if len(rid) > MAX_ID_LENGTH or not SAFE_ID.match(rid):
        raise RecordError("unsafe_id", f"id {rid!r:.80} must match {SAFE_ID.pattern} and be <= {MAX_ID_LENGTH} chars", None, line)
    if rid in seen_ids:
        raise RecordError("duplicate_id", "an earlier record has this id; the first one is kept", rid, line)
    seen_ids.add(rid)
    task = _require(obj, "task", str, rid, line)
    if task not in tasks.TASKS:
        raise RecordError("unknown_task", f"task {task!r}; known: {sorted(tasks.TASKS)}", rid, line)
    prompt = _require(obj, "prompt", str, rid, line, optional=True)
    for tag in _require(obj, "tags", list, rid, line, optional=True) or []:
        if tag not in tasks.TAGS:
            raise RecordError("unknown_tag", f"tag {tag!r}; known: {sorted(tasks.TAGS)}", rid, line)
    _require(obj, "source", str, rid, line)
    _require(obj, "mask", str, rid, line)
    candidates = _require(obj, "candidates", list, rid, line)
    if not all(isinstance(c, str) for c in candidates):
        raise RecordError("schema", "field 'candidates' must be a list of paths", rid, line)
    if len(candidates) < 2:
        raise RecordError("too_few_candidates", f"{len(candidates)} candidate(s), need at least 2", rid, line)
    labels = _require(obj, "labels", dict, rid, line)
    task_dims = tasks.get_task(task).dimensions
    with_prompt = tasks.has_user_prompt(task, prompt)
    for dim, label in labels.items():
        if dim not in tasks.DIMENSIONS:
            raise RecordError("unknown_dimension", f"dimension {dim!r}; known: {sorted(tasks.DIMENSIONS)}", rid, line)
        if dim not in task_dims:
            raise RecordError("dimension_not_for_task", f"{dim!r} is not judged for {task!r} (judged: {list(task_dims)})", rid, line)
        if tasks.DIMENSIONS[dim].uses_prompt and not with_prompt:
            raise RecordError("prompt_missing", f"{dim!r} is labelled but the input has no prompt", rid, line)
        if not isinstance(label, dict) or set(label) != {"best", "worst"}:
            raise RecordError("schema", f"label {dim!r} must be {{'best': i, 'worst': j}}, got {label!r:.60}", rid, line)
        for end in ("best", "worst"):
            i = label[end]
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(candidates):
                raise RecordError("candidate_out_of_range", f"{dim}.{end} = {i!r}, valid: 0..{len(candidates) - 1}", rid, line)
        if label["best"] == label["worst"]:
            raise RecordError("best_equals_worst", f"{dim}: best and worst are both candidate {label['best']}", rid, line)


def read_image(root: Path, rel: str, rid: str, line: int, decode: bool = False) -> tuple[EncodedImage, Image.Image]:
    """Read one image and prove it decodes; ``decode`` also loads its pixels for the caller."""
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        raise RecordError("unsafe_path", f"{rel!r} must be relative to the dataset root", rid, line)
    full = root / path
    if not full.is_file():
        raise RecordError("missing_file", f"{rel} does not exist", rid, line)
    data = full.read_bytes()
    if not data:
        raise RecordError("empty_file", f"{rel} has zero bytes", rid, line)
    try:
        img = Image.open(io.BytesIO(data))
        if img.format == "PNG" and not decode:
            img.verify()  # every chunk's CRC: catches truncation and corruption, 20x cheaper than inflating
        else:
            img.load()  # raises on truncated data, which Image.open alone does not read
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise RecordError("undecodable_image", f"{rel}: {e}", rid, line) from None
    ext = _EXTENSIONS.get(img.format or "")
    if ext is None:  # store what the stock decoder cannot read as lossless PNG
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, ext = buf.getvalue(), "png"
    return EncodedImage(data, ext, img.size), img


def validate(obj: dict, line: int, root: Path, seen_ids: set[str]) -> Record:
    """A :class:`Record` from one parsed line, or :class:`RecordError`."""
    check_structure(obj, line, seen_ids)
    return load_images(obj, line, root)


def load_images(obj: dict, line: int, root: Path) -> Record:
    """Read and check the images of a record that passed :func:`check_structure`."""
    rid = obj["id"]
    source, _ = read_image(root, obj["source"], rid, line)
    mask, mask_img = read_image(root, obj["mask"], rid, line, decode=True)
    candidates = [read_image(root, c, rid, line)[0] for c in obj["candidates"]]
    if mask.size != source.size:
        raise RecordError("mask_size_mismatch", f"mask {mask.size} vs source {source.size}", rid, line)
    for i, cand in enumerate(candidates):
        if cand.size != source.size:
            raise RecordError("candidate_size_mismatch", f"candidate {i} {cand.size} vs source {source.size}", rid, line)
    if not (np.asarray(mask_img.convert("L")) > 127).any():
        raise RecordError("empty_mask", "no mask pixel is above 127 (white = region to generate)", rid, line)
    return Record(
        id=rid,
        task=obj["task"],
        prompt=obj.get("prompt"),
        tags=list(obj.get("tags") or []),
        labels={d: {"best": v["best"], "worst": v["worst"]} for d, v in sorted(obj["labels"].items())},
        source=source,
        mask=mask,
        candidates=candidates,
    )
