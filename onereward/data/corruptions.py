"""Known-bad records, one maker per quarantine reason.

Used by the synthesize stage to show quarantine at work on the embedded default and by the
tests to check that each reason is detected. Every maker turns a good record (a parsed
line of ``records.jsonl``) into a bad line, writing any broken file it needs under ``root``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from onereward.data.records import RECORDS_FILE


def _line(rec: dict) -> str:
    return json.dumps(rec, sort_keys=True)


def _with(rec: dict, bad_id: str, **changes) -> dict:
    return {**rec, "id": bad_id, **changes}


def _broken_file(root: Path, bad_id: str, name: str, data: bytes) -> str:
    rel = f"images/{bad_id}/{name}"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
    return rel


def _truncated(root: Path, rec: dict, bad_id: str) -> str:
    data = (root / rec["source"]).read_bytes()
    return _line(_with(rec, bad_id, source=_broken_file(root, bad_id, "source.png", data[: len(data) // 2])))


def _resized_mask(root: Path, rec: dict, bad_id: str) -> str:
    mask = Image.open(root / rec["mask"])
    small = mask.resize((mask.width // 2, mask.height // 2))
    rel = f"images/{bad_id}/mask.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    small.save(root / rel)
    return _line(_with(rec, bad_id, mask=rel))


def _blank_mask(root: Path, rec: dict, bad_id: str) -> str:
    mask = Image.open(root / rec["mask"])
    rel = f"images/{bad_id}/mask.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((mask.height, mask.width), np.uint8)).save(root / rel)
    return _line(_with(rec, bad_id, mask=rel))


def _first_dim(rec: dict) -> str:
    return sorted(rec["labels"])[0]


MAKERS: dict[str, Callable[[Path, dict, str], str]] = {
    "invalid_json": lambda root, rec, bad_id: _line(_with(rec, bad_id))[:-7],
    "schema": lambda root, rec, bad_id: _line(_with(rec, bad_id, candidates="cand_0.png")),
    "unsafe_id": lambda root, rec, bad_id: _line(_with(rec, f"../{bad_id}.v2")),
    "duplicate_id": lambda root, rec, bad_id: _line(rec),
    "unknown_task": lambda root, rec, bad_id: _line(_with(rec, bad_id, task="colorize")),
    "unknown_tag": lambda root, rec, bad_id: _line(_with(rec, bad_id, tags=["handwriting"])),
    "too_few_candidates": lambda root, rec, bad_id: _line(_with(rec, bad_id, candidates=rec["candidates"][:1], labels={})),
    "unknown_dimension": lambda root, rec, bad_id: _line(_with(rec, bad_id, labels={"realism": {"best": 0, "worst": 1}})),
    "dimension_not_for_task": lambda root, rec, bad_id: _line(
        _with(rec, bad_id, labels={"removal_quality" if rec["task"] != "removal" else "structure": {"best": 0, "worst": 1}})
    ),
    "prompt_missing": lambda root, rec, bad_id: _line(
        _with(rec, bad_id, task="extend", prompt=None, labels={"text_alignment": {"best": 0, "worst": 1}})
    ),
    "candidate_out_of_range": lambda root, rec, bad_id: _line(
        _with(rec, bad_id, labels={_first_dim(rec): {"best": 0, "worst": len(rec["candidates"])}})
    ),
    "best_equals_worst": lambda root, rec, bad_id: _line(_with(rec, bad_id, labels={_first_dim(rec): {"best": 1, "worst": 1}})),
    "unsafe_path": lambda root, rec, bad_id: _line(_with(rec, bad_id, source="../outside.png")),
    "missing_file": lambda root, rec, bad_id: _line(_with(rec, bad_id, source=f"images/{bad_id}/nowhere.png")),
    "empty_file": lambda root, rec, bad_id: _line(_with(rec, bad_id, source=_broken_file(root, bad_id, "source.png", b""))),
    "undecodable_image": _truncated,
    "mask_size_mismatch": _resized_mask,
    "candidate_size_mismatch": lambda root, rec, bad_id: _line(
        _with(rec, bad_id, candidates=[rec["candidates"][0], _resized_candidate(root, rec, bad_id)] + rec["candidates"][2:])
    ),
    "empty_mask": _blank_mask,
}


def _resized_candidate(root: Path, rec: dict, bad_id: str) -> str:
    img = Image.open(root / rec["candidates"][1])
    rel = f"images/{bad_id}/cand_1.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    img.resize((img.width + 16, img.height)).save(root / rel)
    return rel


def append_bad_records(root: Path, count: int) -> int:
    """Append ``count`` bad records (cycling through the reasons) to ``root``'s records file."""
    if count <= 0:
        return 0
    path = Path(root) / RECORDS_FILE
    with open(path) as f:
        good = [json.loads(line) for _, line in zip(range(64), f)]
    # A labelled fill input with a prompt supports every maker.
    base = next(r for r in good if r["task"] == "fill" and r["labels"] and r["prompt"])
    reasons = sorted(MAKERS)
    with open(path, "a") as out:
        for i in range(count):
            reason = reasons[i % len(reasons)]
            out.write(MAKERS[reason](Path(root), base, f"bad-{i:04d}-{reason.replace('_', '-')}") + "\n")
    return count
