"""Known-bad records, one maker per quarantine reason.

Used by the synthesize stage to show quarantine at work on the embedded default and by the
tests to check that each reason is detected (every reason has a maker). Every maker turns a good record (a parsed
line of ``records.jsonl``) into a bad line, writing any broken file it needs under ``root``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from onereward.data.records import RECORDS_FILE, DatasetRoot


def _bytes(root: Path, rel: str) -> bytes:
    """A good record's image, a file or an archive member, read as the shard stage reads it."""
    return DatasetRoot(root).read(rel, "good", 0)


def _open(root: Path, rel: str) -> Image.Image:
    return Image.open(io.BytesIO(_bytes(root, rel)))


def _line(rec: dict) -> str:
    return json.dumps(rec, sort_keys=True)


def _with(rec: dict, bad_id: str, **changes) -> dict:
    return {**rec, "id": bad_id, **changes}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    """A PNG written chunk by chunk (valid CRCs), whatever ``idat`` holds: Pillow cannot write
    16-bit colour, a header that lies about the size, or a corrupt compressed stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_png(side: int = 100_000) -> bytes:
    """The shape of a decompression bomb: a header claiming side x side pixels, a few bytes of data."""
    return png_bytes(side, side, 8, 2, zlib.compress(b"\x00" * 64))


def _broken_file(root: Path, bad_id: str, name: str, data: bytes) -> str:
    rel = f"images/{bad_id}/{name}"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
    return rel


def _truncated(root: Path, rec: dict, bad_id: str) -> str:
    data = _bytes(root, rec["source"])
    return _line(_with(rec, bad_id, source=_broken_file(root, bad_id, "source.png", data[: len(data) // 2])))


def _resized_mask(root: Path, rec: dict, bad_id: str) -> str:
    mask = _open(root, rec["mask"])
    small = mask.resize((mask.width // 2, mask.height // 2))
    rel = f"images/{bad_id}/mask.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    small.save(root / rel)
    return _line(_with(rec, bad_id, mask=rel))


def _odd_size(root: Path, rec: dict, bad_id: str) -> str:
    """Every image cropped 8 px narrower: sizes agree, but not with FLUX's multiple of 16."""
    def crop(rel: str, name: str) -> str:
        img = _open(root, rel)
        out = f"images/{bad_id}/{name}.png"
        (root / out).parent.mkdir(parents=True, exist_ok=True)
        img.crop((0, 0, img.width - 8, img.height)).save(root / out)
        return out

    return _line(_with(rec, bad_id, source=crop(rec["source"], "source"), mask=crop(rec["mask"], "mask"),
                       candidates=[crop(c, f"cand_{i}") for i, c in enumerate(rec["candidates"])],
                       **({"ground_truth": crop(rec["ground_truth"], "ground_truth")} if rec.get("ground_truth") else {})))


def _blank_mask(root: Path, rec: dict, bad_id: str) -> str:
    mask = _open(root, rec["mask"])
    rel = f"images/{bad_id}/mask.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((mask.height, mask.width), np.uint8)).save(root / rel)
    return _line(_with(rec, bad_id, mask=rel))


def _directory(root: Path, rec: dict, bad_id: str) -> str:
    rel = f"images/{bad_id}/source.png"
    (root / rel).mkdir(parents=True, exist_ok=True)
    (root / rel / "README").write_text("a folder named like an image\n")  # non-empty: DVC keeps it
    return _line(_with(rec, bad_id, source=rel))


def _link_loop(root: Path, rec: dict, bad_id: str) -> str:
    rel = f"images/{bad_id}/source.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.symlink("source.png", root / rel)  # points at itself: stat fails with ELOOP
    return _line(_with(rec, bad_id, source=rel))


def _saved(root: Path, bad_id: str, name: str, img: Image.Image, **save) -> str:
    rel = f"images/{bad_id}/{name}"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    img.save(root / rel, **save)
    return rel


def _float_image(root: Path, rec: dict, bad_id: str) -> str:
    size = _open(root, rec["source"]).size
    img = Image.fromarray(np.full(size[::-1], 0.5, np.float32), "F")  # 32-bit float: no rule maps it to 8 bits
    return _line(_with(rec, bad_id, source=_saved(root, bad_id, "source.tiff", img)))


def _transparent(root: Path, rec: dict, bad_id: str) -> str:
    img = _open(root, rec["candidates"][0]).convert("RGBA")
    alpha = np.full(img.size[::-1], 255, np.uint8)
    alpha[: img.height // 2] = 0
    img.putalpha(Image.fromarray(alpha))
    return _line(_with(rec, bad_id, candidates=[_saved(root, bad_id, "cand_0.png", img)] + rec["candidates"][1:]))


def _small_ground_truth(root: Path, rec: dict, bad_id: str) -> str:
    img = _open(root, rec["source"]).convert("RGB")
    return _line(_with(rec, bad_id, ground_truth=_saved(root, bad_id, "truth.png", img.resize((img.width // 2, img.height)))))


def _not_utf8(root: Path, rec: dict, bad_id: str) -> str:
    # A latin-1 byte in the prompt; written with errors="surrogateescape" it is the raw byte 0xe9.
    return _line(_with(rec, bad_id, prompt="a red cafe sign")).replace("cafe", "caf\udce9")


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
    "not_a_file": _directory,
    "unreadable_file": _link_loop,
    "image_too_large": lambda root, rec, bad_id: _line(
        _with(rec, bad_id, source=_broken_file(root, bad_id, "source.png", bomb_png()))
    ),
    "unsupported_image": _float_image,
    "transparent_image": _transparent,
    "ground_truth_size_mismatch": _small_ground_truth,
    "invalid_encoding": _not_utf8,
    "size_not_multiple_of_16": _odd_size,
}
_NEWER = ("not_a_file", "image_too_large", "unsupported_image", "transparent_image",
          "ground_truth_size_mismatch", "invalid_encoding", "size_not_multiple_of_16")
"""Cycled after the first reasons, so a data set's first bad records keep their reasons when
reasons are added. ``unreadable_file`` (a symbolic-link loop) is for tests only: DVC would
not track it."""
SHIPPED = tuple(sorted(r for r in MAKERS if r not in _NEWER and r != "unreadable_file")) + _NEWER


def _resized_candidate(root: Path, rec: dict, bad_id: str) -> str:
    img = _open(root, rec["candidates"][1])
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
    reasons = SHIPPED
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as out:
        for i in range(count):
            reason = reasons[i % len(reasons)]
            out.write(MAKERS[reason](Path(root), base, f"bad-{i:04d}-{reason.replace('_', '-')}") + "\n")
    return count
