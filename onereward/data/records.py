"""The raw annotation format and its validation (see docs/data-format.md).

One JSON object per line of ``records.jsonl`` describes one input: its task, prompt, source
image, mask, N >= 2 candidates and, per dimension, the best and the worst candidate.
Validation turns each line into a :class:`Record` (images read and decoded once) or raises
:class:`RecordError` carrying a reason code from :data:`REASONS`, so that a run can quarantine
the line and go on. Nothing a line names is read outside the dataset root, and every image
that passes decodes in the reader to the pixels validation saw.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

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
    "unsafe_path": "an image path is absolute, leaves the dataset root or is a symbolic link to outside it",
    "missing_file": "an image file does not exist",
    "not_a_file": "an image path is a directory, named pipe, device or socket, not a regular file",
    "unreadable_file": "an image file exists but cannot be opened or read (permissions, link loop)",
    "empty_file": "an image file has zero bytes",
    "image_too_large": "an image's file size or header pixel count is above shard.max_image_bytes / max_image_pixels",
    "undecodable_image": "an image file cannot be decoded (corrupt, truncated or not an accepted format)",
    "unsupported_image": "an image's colour mode, bit depth or frame count has no conversion rule",
    "transparent_image": "an image has pixels that are not fully opaque",
    "mask_size_mismatch": "the mask's size differs from the source image's",
    "candidate_size_mismatch": "a candidate's size differs from the source image's",
    "ground_truth_size_mismatch": "the ground-truth image's size differs from the source image's",
    "empty_mask": "the mask marks no pixel to generate",
    "size_not_multiple_of_16": "the source's width or height is not a multiple of 16 (FLUX.1-Fill packs 2x2 patches of its 8x VAE latents)",
    "invalid_encoding": "the line is not valid UTF-8",
}

# PIL format -> WebDataset extension that the stock "pil" decoder understands.
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "WEBP": "webp", "PPM": "ppm", "BMP": "bmp"}
FORMATS = ("PNG", "JPEG", "WEBP", "PPM", "BMP", "GIF", "TIFF")
"""Formats Pillow may try: no others, so no exotic plugin (EPS runs Ghostscript) sees user files."""
_ID_HINT = re.compile(r'"id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')


@dataclass(frozen=True)
class ImageLimits:
    """Checked before an image is decoded (params.yaml `shard`)."""

    max_pixels: int = 64_000_000
    """Largest width x height an image header may claim."""
    max_bytes: int = 128_000_000
    """Largest image file, in bytes."""


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
    ground_truth: EncodedImage | None = None
    """Evaluation only: the image the result should look like."""
    content: dict | None = None
    """Evaluation only: what the prompt asks for (free-form JSON object)."""

    def metadata(self) -> dict:
        meta = {
            "id": self.id,
            "task": self.task,
            "prompt": self.prompt,
            "tags": self.tags,
            "labels": self.labels,
            "num_candidates": len(self.candidates),
        }
        if self.content is not None:  # absent stays absent: older samples keep their bytes
            meta["content"] = self.content
        return meta


def record_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line of a records file.

    UTF-8 with or without a byte-order mark, lines ended by LF, CRLF or CR. Bytes that are not
    UTF-8 survive as lone surrogates, so that :func:`parse_line` rejects that line alone.
    """
    with open(path, "rb") as raw:
        if raw.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise UnicodeError(f"{path} is UTF-16; save it as UTF-8 (docs/data-format.md)")
        raw.seek(0)
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline=None)
        for number, line in enumerate(text, start=1):
            line = line.lstrip("\ufeff")  # a BOM inside the file: concatenated exports
            if line.strip():
                yield number, line


def _id_hint(text: str) -> str | None:
    """The id of a line that does not parse, when one can be seen, so the quarantine names it."""
    m = _ID_HINT.search(text)
    return m.group(1) if m else None


def parse_line(text: str, line: int) -> dict:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(text[e.start]) - 0xDC00
        raise RecordError("invalid_encoding", f"byte 0x{byte:02x} at column {e.start + 1} is not UTF-8",
                          _id_hint(text), line) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError("invalid_json", f"{e.msg} at column {e.colno}", _id_hint(text), line) from None
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
    _require(obj, "ground_truth", str, rid, line, optional=True)
    _require(obj, "content", dict, rid, line, optional=True)
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


def _kind(mode: int) -> str:
    for is_kind, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                          (stat.S_ISSOCK, "a socket")):
        if is_kind(mode):
            return name
    return f"not a regular file (mode {stat.filemode(mode)})"


ARCHIVE_SUFFIX = ".zip"
"""A path part with this suffix that names a regular file is a zip archive; the rest of the path
is a member inside it (``images.zip/fill-000001_source.png``)."""


def split_archive(rel: str) -> tuple[str | None, str]:
    """``(archive, member)`` when a folder part of ``rel`` ends in :data:`ARCHIVE_SUFFIX`, else
    ``(None, rel)``. Whether the archive is a file is decided when it is read."""
    parts = rel.replace(os.sep, "/").split("/")
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(ARCHIVE_SUFFIX):
            return "/".join(parts[: i + 1]), "/".join(parts[i + 1 :])
    return None, rel


@functools.lru_cache(maxsize=8)
def _open_archive(full: str, identity: tuple[int, int, int], pid: int) -> zipfile.ZipFile:
    """One open archive per process and file version (inode, mtime, size): its index is read
    once, not once per record. ``pid`` in the key: a forked worker must not seek a file offset
    it shares with its parent."""
    fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    return zipfile.ZipFile(os.fdopen(fd, "rb"))


def _member_info(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    try:
        return zf.getinfo(name)
    except KeyError:
        return None


class DatasetRoot:
    """Reads regular files inside one dataset root, every symbolic link resolved, and members
    of zip archives there.

    Made per record: the folders it resolves are cached for that record's images only, so a
    folder replaced by a link between two records is seen.
    """

    def __init__(self, root: Path, limits: ImageLimits = ImageLimits()):
        self.real = os.path.realpath(root)
        self.limits = limits
        self._prefix = self.real.rstrip(os.sep) + os.sep
        self._dirs: dict[str, str] = {}

    def _inside(self, path: str) -> bool:
        return path == self.real or path.startswith(self._prefix)

    def _real_dir(self, rel_dir: str) -> str:
        if rel_dir not in self._dirs:
            self._dirs[rel_dir] = os.path.realpath(os.path.join(self.real, rel_dir))
        return self._dirs[rel_dir]

    def read(self, rel: str, rid: str, line: int) -> bytes:
        """The bytes of ``rel`` (a file, or a member of a zip archive), or :class:`RecordError` saying why not."""
        if os.path.isabs(rel) or ".." in Path(rel).parts or "\0" in rel:
            raise RecordError("unsafe_path", f"{rel!r} must be relative to the dataset root", rid, line)
        archive, member = split_archive(rel)
        if archive is not None and not os.path.isdir(os.path.join(self.real, archive)):  # a folder named x.zip is a folder
            return self._read_member(archive, member, rid, line)
        full, info = self._regular_file(rel, rid, line)
        limit = self.limits.max_bytes
        if info.st_size == 0:
            raise RecordError("empty_file", f"{rel} has zero bytes", rid, line)
        if info.st_size > limit:
            raise RecordError("image_too_large", f"{rel} has {info.st_size} bytes, limit {limit}", rid, line)
        try:
            # O_NOFOLLOW and O_NONBLOCK: what was checked above cannot turn into a link or a pipe now
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise RecordError("not_a_file", f"{rel} is {_kind(mode)}", rid, line)
                data = f.read(info.st_size + 1)  # not limit + 1: that would allocate the limit
        except OSError as e:
            raise RecordError("unreadable_file", f"{rel}: {e.strerror or e}", rid, line) from None
        return self._within_limit(data, rel, rid, line)

    def _within_limit(self, data: bytes, rel: str, rid: str, line: int) -> bytes:
        if not data:
            raise RecordError("empty_file", f"{rel} has zero bytes", rid, line)
        if len(data) > self.limits.max_bytes:
            raise RecordError("image_too_large", f"{rel} has more than {self.limits.max_bytes} bytes", rid, line)
        return data

    def _regular_file(self, rel: str, rid: str, line: int) -> tuple[str, os.stat_result]:
        """Resolved path and stat of ``rel``, checked to be a regular file inside the root."""
        folder, name = os.path.split(rel)
        full = os.path.join(self._real_dir(folder), name)
        if not self._inside(full):
            raise RecordError("unsafe_path", f"{rel} is under a symbolic link to {os.path.dirname(full)}, "
                              "outside the dataset root", rid, line)
        try:
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                full = os.path.realpath(full)
                if not self._inside(full):
                    raise RecordError("unsafe_path", f"{rel} is a symbolic link to {full}, outside the dataset root", rid, line)
                try:
                    info = os.stat(full)
                except (FileNotFoundError, NotADirectoryError):
                    raise RecordError("missing_file", f"{rel} is a symbolic link to a missing file", rid, line) from None
        except (FileNotFoundError, NotADirectoryError):
            raise RecordError("missing_file", f"{rel} does not exist", rid, line) from None
        except OSError as e:  # permissions, a link loop
            raise RecordError("unreadable_file", f"{rel}: {e.strerror or e}", rid, line) from None
        if not stat.S_ISREG(info.st_mode):  # reading a pipe or a device could block or never end
            raise RecordError("not_a_file", f"{rel} is {_kind(info.st_mode)}", rid, line)
        return full, info

    def _read_member(self, archive: str, member: str, rid: str, line: int) -> bytes:
        """A member of a zip archive inside the root; nothing is extracted, the member's declared
        size is checked against the limit before a byte of it is inflated."""
        rel = f"{archive}/{member}"
        full, info = self._regular_file(archive, rid, line)
        try:
            zf = _open_archive(full, (info.st_ino, info.st_mtime_ns, info.st_size), os.getpid())
        except (OSError, zipfile.BadZipFile) as e:
            raise RecordError("unreadable_file", f"{archive} is not a readable zip archive: {e}", rid, line) from None
        entry = _member_info(zf, member) or _member_info(zf, member.rstrip("/") + "/")  # a folder's name ends in /
        if entry is None:
            raise RecordError("missing_file", f"{rel} does not exist: {archive} has no member {member!r}", rid, line)
        if entry.is_dir():
            raise RecordError("not_a_file", f"{rel} is a directory in {archive}", rid, line)
        if entry.flag_bits & 0x1:
            raise RecordError("unreadable_file", f"{rel} is encrypted in {archive}", rid, line)
        if entry.file_size > self.limits.max_bytes:
            raise RecordError("image_too_large", f"{rel} has {entry.file_size} bytes, limit {self.limits.max_bytes}",
                              rid, line)
        try:
            with zf.open(entry) as f:
                data = f.read(entry.file_size + 1)
        except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError) as e:  # CRC, truncation, compression kind
            raise RecordError("unreadable_file", f"{rel} cannot be read from {archive}: {e}", rid, line) from None
        return self._within_limit(data, rel, rid, line)


_EXACT = ("1", "L", "RGB")
"""Modes the reader's ``convert("RGB")`` / ``convert("L")`` read exactly."""


def to_exact_mode(img: Image.Image, rel: str, rid: str, line: int) -> tuple[Image.Image, bool]:
    """The decoded image in a mode of :data:`_EXACT` by the rule of docs/data-format.md, and
    whether it changed; :class:`RecordError` where no rule applies."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: keep the high byte, as Pillow does for colour
        a = np.asarray(img)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise RecordError("unsupported_image", f"{rel}: 32-bit greyscale, values beyond 16 bits", rid, line)
        return Image.fromarray((a.astype(np.uint32) >> 8).astype(np.uint8), "L"), True
    if mode in _EXACT and "transparency" not in img.info:
        return img, False
    if mode in ("CMYK", "YCbCr", "RGBX"):
        return img.convert("RGB"), True
    if mode in ("P", "PA") or "transparency" in img.info:  # palette, or a PNG colour key
        img = img.convert("RGBA" if mode != "L" and mode != "1" else "LA")
    elif mode in ("La", "RGBa"):  # premultiplied alpha
        img = img.convert(mode.upper())
    if img.mode in ("LA", "RGBA"):
        alpha = np.asarray(img.getchannel("A"))
        clear = int((alpha < 255).sum())
        if clear:  # what lies behind a transparent pixel is a guess: refuse rather than invent it
            raise RecordError("transparent_image", f"{rel}: {clear} of {alpha.size} pixels are not fully opaque; "
                              "flatten it onto its background", rid, line)
        return img.convert(img.mode[:-1]), True
    raise RecordError("unsupported_image", f"{rel}: colour mode {mode!r} has no conversion rule", rid, line)


def read_image(files: DatasetRoot, rel: str, rid: str, line: int) -> tuple[EncodedImage, Image.Image]:
    """Read one image, check its limits from the header, decode it fully, convert its mode.

    Returns what the shard stores (the original bytes when they already decode to the
    checked pixels, lossless PNG otherwise) and the decoded image.
    """
    data = files.read(rel, rid, line)
    limits = files.limits
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
        w, h = img.size
        if w * h > limits.max_pixels:
            raise RecordError("image_too_large", f"{rel}: header claims {w}x{h} = {w * h} pixels, "
                              f"limit {limits.max_pixels}", rid, line)
        frames = getattr(img, "n_frames", 1)
        if frames > 1 and img.format != "MPO":  # MPO: a camera JPEG with a preview frame; the first is the photo
            raise RecordError("unsupported_image", f"{rel}: {frames} frames (animated)", rid, line)
        img.load()  # every pixel: a corrupt compressed stream behind valid CRCs fails here, not in training
        fmt = img.format or ""
        img, converted = to_exact_mode(img, rel, rid, line)
    except RecordError:
        raise
    except Image.DecompressionBombError as e:
        raise RecordError("image_too_large", f"{rel}: {e}", rid, line) from None
    except UnidentifiedImageError:
        raise RecordError("undecodable_image", f"{rel}: not a {', '.join(FORMATS)} image", rid, line) from None
    except Exception as e:  # noqa: BLE001 -- decoders raise anything (OSError, ValueError, SyntaxError, struct.error, ...)
        raise RecordError("undecodable_image", f"{rel}: {type(e).__name__}: {e}", rid, line) from None
    ext = _EXTENSIONS.get(fmt)
    if fmt == "PNG" and data[24:25] == b"\x10":
        converted = True  # 16-bit samples: store the 8-bit pixels the check saw, for any decoder
    if converted or ext is None:  # lossless PNG of the checked pixels
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        data, ext = buf.getvalue(), "png"
    return EncodedImage(data, ext, img.size), img


def validate(obj: dict, line: int, root: Path, seen_ids: set[str], limits: ImageLimits = ImageLimits()) -> Record:
    """A :class:`Record` from one parsed line, or :class:`RecordError`."""
    check_structure(obj, line, seen_ids)
    return load_images(obj, line, root, limits)


SIZE_MULTIPLE = 16
"""Every side of an input must be a multiple of this: the VAE downsamples 8x and the FLUX
transformer packs 2x2 latent patches."""


def load_images(obj: dict, line: int, root: Path, limits: ImageLimits = ImageLimits()) -> Record:
    """Read and check the images of a record that passed :func:`check_structure`."""
    rid = obj["id"]
    files = DatasetRoot(root, limits)
    source, _ = read_image(files, obj["source"], rid, line)
    mask, mask_img = read_image(files, obj["mask"], rid, line)
    candidates = [read_image(files, c, rid, line)[0] for c in obj["candidates"]]
    truth = read_image(files, obj["ground_truth"], rid, line)[0] if obj.get("ground_truth") is not None else None
    if mask.size != source.size:
        raise RecordError("mask_size_mismatch", f"mask {mask.size} vs source {source.size}", rid, line)
    for i, cand in enumerate(candidates):
        if cand.size != source.size:
            raise RecordError("candidate_size_mismatch", f"candidate {i} {cand.size} vs source {source.size}", rid, line)
    if truth is not None and truth.size != source.size:
        raise RecordError("ground_truth_size_mismatch", f"ground truth {truth.size} vs source {source.size}", rid, line)
    if source.size[0] % SIZE_MULTIPLE or source.size[1] % SIZE_MULTIPLE:
        raise RecordError("size_not_multiple_of_16", f"source is {source.size[0]}x{source.size[1]}; crop or pad it "
                          f"to a multiple of {SIZE_MULTIPLE} (nothing is resized for you)", rid, line)
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
        ground_truth=truth,
        content=obj.get("content"),
    )
