"""Atomic, deterministic file output shared by every stage."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``final`` in one rename.

    A stage killed half-way leaves only a ``.tmp-*`` sibling, never something that looks
    complete. Works for files and directories alike.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dumps_json(obj: Any) -> str:
    """JSON with sorted keys and a trailing newline: stable bytes for DVC metrics."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(dumps_json(obj))


def canonical_safetensors(path: str | Path) -> None:
    """Rewrite a safetensors file with its ``__metadata__`` keys sorted.

    safetensors keeps metadata in a Rust hash map whose iteration order changes from process to
    process, so a file saved with two or more metadata entries (diffusers' LoRA files: ``format``
    and ``lora_adapter_metadata``) differs in bytes between identical runs. Tensor entries and
    data are kept as they are; offsets count from the end of the header, so only it changes.
    """
    path = Path(path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with atomic_path(path) as tmp:
        tmp.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
