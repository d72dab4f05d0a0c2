"""Hostile and messy inputs: every one ends in an accepted image or a quarantine line, the stage
never reads outside the dataset root, and what is accepted decodes to the pixels it showed.

Every case is built here, on the fly, on a dataset of a few 16x16 images (no synthesize run).
"""

import io
import json
import logging
import os
import socket
import stat
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onereward.data import reader
from onereward.data.corruptions import bomb_png, png_bytes
from onereward.data.reader import SkippedSamples, input_dataset, shard_urls
from onereward.data.records import RECORDS_FILE, _kind, record_lines
from onereward.data.sharding import ShardConfig, shard_dataset

SIZE = (16, 16)


def _save(root: Path, rel: str, img: Image.Image, **kw) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    img.save(root / rel, **kw)
    return rel


def _write(root: Path, rel: str, data: bytes) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
    return rel


def _rgb(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8), "RGB")


def good(root: Path, rid: str, seed: int = 0, **changes) -> dict:
    """A valid removal record with its images written under ``root``."""
    mask = np.zeros(SIZE, np.uint8)
    mask[4:12, 4:12] = 255
    rec = {
        "id": rid, "task": "removal", "prompt": None, "tags": [],
        "source": _save(root, f"img/{rid}/source.png", _rgb(seed)),
        "mask": _save(root, f"img/{rid}/mask.png", Image.fromarray(mask, "L")),
        "candidates": [_save(root, f"img/{rid}/cand_{i}.png", _rgb(seed + 1 + i)) for i in range(2)],
        "labels": {"removal_quality": {"best": 0, "worst": 1}},
    }
    return {**rec, **changes}


def _records(root: Path, recs: list, sep: str = "\n", bom: bool = False) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in recs]
    data = (sep.join(lines) + sep).encode("utf-8", "surrogateescape")
    (root / RECORDS_FILE).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)


def _shard(root: Path, out: Path, **cfg):
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"workers": 1, "split": {"train": 1.0, "val": 0.0, "test": 0.0}, **cfg}
    stats = shard_dataset(root, out / "shards", out / "manifest.parquet", out / "quarantine.jsonl", ShardConfig(**cfg))
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert stats["records_in"] == stats["accepted"] + stats["quarantined"]
    return stats, quarantine


def _one(tmp_path: Path, **changes) -> tuple[dict, list]:
    """Shard one good record plus one that differs by ``changes`` (values may be callables of root)."""
    root = tmp_path / "raw"
    bad = good(root, "bad", seed=10)
    bad.update({k: v(root) if callable(v) else v for k, v in changes.items()})
    _records(root, [good(root, "ok"), bad])
    stats, quarantine = _shard(root, tmp_path / "out")
    return stats, quarantine


def _read_back(out: Path) -> dict:
    return {item["key"]: item for item in input_dataset(out / "shards", "train", skips=SkippedSamples())}


def _grey16(values: np.ndarray) -> bytes:
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    return png_bytes(values.shape[1], values.shape[0], 16, 0, zlib.compress(rows))


def _rgb16(values: np.ndarray) -> bytes:
    """``values``: [H, W, 3] in 0..65535."""
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    return png_bytes(values.shape[1], values.shape[0], 16, 2, zlib.compress(rows))


def _corrupt_stream_png() -> bytes:
    """Valid signature, header and CRCs; the deflate stream inside IDAT is garbage."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(range(48)) for _ in range(SIZE[1])))
    broken = raw[:2] + bytes(b ^ 0x5A for b in raw[2:])
    return png_bytes(*SIZE, 8, 2, broken)


# -- sizes and decoders -----------------------------------------------------------------------


def test_a_side_that_is_not_a_multiple_of_16_is_quarantined(tmp_path):
    odd = lambda root, name: _save(root, f"img/bad/{name}.png", Image.new("RGB", (24, 16)))  # noqa: E731
    mask = lambda root: _save(root, "img/bad/mask.png", Image.new("L", (24, 16), 255))  # noqa: E731
    stats, quarantine = _one(tmp_path, source=lambda r: odd(r, "source"), mask=mask,
                             candidates=lambda r: [odd(r, "c0"), odd(r, "c1")])
    assert stats["accepted"] == 1 and [q["reason"] for q in quarantine] == ["size_not_multiple_of_16"]
    assert "24x16" in quarantine[0]["message"]


def test_decompression_bomb_header_is_quarantined_not_a_crash(tmp_path):
    stats, quarantine = _one(tmp_path, source=lambda root: _write(root, "img/bad/bomb.png", bomb_png()))
    assert stats["accepted"] == 1
    assert [(q["reason"], q["id"], q["line"]) for q in quarantine] == [("image_too_large", "bad", 2)]


def test_pixel_and_byte_limits_are_checked_before_decoding(tmp_path):
    root = tmp_path / "raw"
    big = _save(root, "img/big.png", _rgb(3).resize((64, 64)))
    _records(root, [good(root, "ok"), good(root, "big", source=big)])
    _, quarantine = _shard(root, tmp_path / "a", max_image_pixels=16 * 16)
    assert [q["reason"] for q in quarantine] == ["image_too_large"]
    assert "64x64 = 4096 pixels, limit 256" in quarantine[0]["message"]
    _, quarantine = _shard(root, tmp_path / "b", max_image_bytes=200)
    assert {q["reason"] for q in quarantine} == {"image_too_large"} and "bytes, limit 200" in quarantine[0]["message"]


def test_corrupt_stream_behind_valid_crcs_is_rejected_at_shard_time(tmp_path):
    data = _corrupt_stream_png()
    Image.open(io.BytesIO(data)).verify()  # the chunk CRCs alone do not catch it
    _, quarantine = _one(tmp_path, source=lambda root: _write(root, "img/bad/zlib.png", data))
    assert [(q["reason"], q["id"], q["line"]) for q in quarantine] == [("undecodable_image", "bad", 2)]
    assert "img/bad/zlib.png" in quarantine[0]["message"]


def test_garbage_named_like_an_image_and_other_formats_are_refused(tmp_path):
    _, quarantine = _one(tmp_path, mask=lambda root: _write(root, "img/bad/mask.png", b"%!PS-Adobe-3.0 EPSF-3.0\n" * 4))
    assert [q["reason"] for q in quarantine] == ["undecodable_image"]


# -- colour modes and bit depths --------------------------------------------------------------


def test_16_bit_greyscale_and_colour_are_scaled_to_8_bit(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, SIZE, dtype=np.int64)
    grey[0, :3] = [0, 65535, 25650]
    colour = rng.integers(0, 65536, (*SIZE, 3), dtype=np.int64)
    root = tmp_path / "raw"
    g = good(root, "grey16", source=_write(root, "img/g16.png", _grey16(grey)))
    c = good(root, "rgb16", source=_write(root, "img/c16.png", _rgb16(colour)))
    _records(root, [g, c])
    stats, quarantine = _shard(root, tmp_path / "out")
    assert quarantine == [] and stats["accepted"] == 2
    items = _read_back(tmp_path / "out")
    source = np.asarray(items["grey16"]["source"])
    assert source[0, :3, 0].tolist() == [0, 255, 100]  # the high byte: 25650 = 100 * 256 + 50
    assert np.array_equal(source, np.repeat((grey >> 8)[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(items["rgb16"]["source"]), colour >> 8)
    with tarfile.open(shard_urls(tmp_path / "out" / "shards", "train")[0]) as tar:  # stored as 8-bit
        stored = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if ".source." in m.name}
    assert all(data[24] == 8 for data in stored.values())


def test_palette_cmyk_and_greyscale_decode_to_the_pixels_checked(tmp_path):
    root = tmp_path / "raw"
    rgb = _rgb(5)
    palette = rgb.quantize(16)
    grey = rgb.convert("L")
    cmyk = rgb.convert("CMYK")
    recs = [
        good(root, "palette", source=_save(root, "img/p.png", palette)),
        good(root, "grey", source=_save(root, "img/l.png", grey)),
        good(root, "cmyk", source=_save(root, "img/c.jpg", cmyk, quality=95)),
        good(root, "opaque", source=_save(root, "img/a.png", rgb.convert("RGBA"))),
        good(root, "gif", source=_save(root, "img/g.gif", palette)),
    ]
    _records(root, recs)
    _, quarantine = _shard(root, tmp_path / "out")
    assert quarantine == []
    items = _read_back(tmp_path / "out")
    assert np.array_equal(np.asarray(items["palette"]["source"]), np.asarray(palette.convert("RGB")))
    assert np.array_equal(np.asarray(items["grey"]["source"]), np.asarray(grey.convert("RGB")))
    assert np.array_equal(np.asarray(items["opaque"]["source"]), np.asarray(rgb))
    assert np.array_equal(np.asarray(items["gif"]["source"]), np.asarray(palette.convert("RGB")))
    expected_cmyk = np.asarray(Image.open(root / "img/c.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(items["cmyk"]["source"]), expected_cmyk)


def test_transparency_and_modes_without_a_rule_are_quarantined(tmp_path):
    root = tmp_path / "raw"
    rgba = _rgb(6).convert("RGBA")
    rgba.putpixel((0, 0), (1, 2, 3, 0))
    keyed = _rgb(7).quantize(8)
    keyed.info["transparency"] = 0
    frames = [_rgb(8).quantize(8), _rgb(9).quantize(8)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    recs = [
        good(root, "rgba", source=_save(root, "img/rgba.png", rgba)),
        good(root, "keyed", source=_save(root, "img/keyed.png", keyed, transparency=0)),
        good(root, "animated", source=_write(root, "img/anim.gif", animated.getvalue())),
        good(root, "float", source=_save(root, "img/f.tiff", Image.fromarray(np.ones(SIZE, np.float32), "F"))),
    ]
    _records(root, recs)
    _, quarantine = _shard(root, tmp_path / "out")
    got = {q["id"]: (q["reason"], q["message"]) for q in quarantine}
    assert got["rgba"][0] == got["keyed"][0] == "transparent_image"
    assert "1 of 256 pixels are not fully opaque" in got["rgba"][1]
    assert got["animated"][0] == "unsupported_image" and "2 frames" in got["animated"][1]
    assert got["float"][0] == "unsupported_image" and "'F'" in got["float"][1]


# -- paths ------------------------------------------------------------------------------------


def test_symlink_out_of_root_is_refused_and_one_inside_works(tmp_path):
    root = tmp_path / "raw"
    outside = tmp_path / "elsewhere.png"
    _rgb(1).save(outside)
    inside = good(root, "inside")
    os.symlink(Path(inside["source"]).name, root / "img/inside/link.png")  # relative link, inside the root
    (root / "img/out").mkdir(parents=True)
    os.symlink(outside, root / "img/out/link.png")
    os.symlink(tmp_path, root / "up")  # a folder link out of the root: its files are outside too
    recs = [
        {**inside, "source": "img/inside/link.png"},
        good(root, "out", source="img/out/link.png"),
        good(root, "dir_link", mask="up/elsewhere.png"),
    ]
    _records(root, recs)
    stats, quarantine = _shard(root, tmp_path / "out")
    assert stats["accepted"] == 1
    assert [(q["id"], q["reason"]) for q in quarantine] == [("out", "unsafe_path"), ("dir_link", "unsafe_path")]
    assert all("outside the dataset root" in q["message"] for q in quarantine)
    assert np.array_equal(np.asarray(_read_back(tmp_path / "out")["inside"]["source"]), np.asarray(_rgb(0)))


def test_paths_that_are_not_regular_files_are_named(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    recs = [good(root, "ok")]
    os.mkfifo(root / "img/pipe.png")
    (root / "img/folder.png").mkdir()
    monkeypatch.chdir(root / "img")  # AF_UNIX paths are limited to ~100 characters
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.png")
    os.symlink("loop.png", root / "img/loop.png")
    os.symlink("gone.png", root / "img/dangling.png")
    recs += [
        good(root, "pipe", source="img/pipe.png"),
        good(root, "folder", mask="img/folder.png"),
        good(root, "sock", source="img/sock.png"),
        good(root, "loop", source="img/loop.png"),
        good(root, "dangling", source="img/dangling.png"),
        good(root, "missing", source="img/nowhere.png"),
    ]
    _records(root, recs)
    try:
        _, quarantine = _shard(root, tmp_path / "out")
    finally:
        sock.close()
    got = {q["id"]: (q["reason"], q["message"]) for q in quarantine}
    assert got["pipe"] == ("not_a_file", "img/pipe.png is a named pipe")
    assert got["folder"] == ("not_a_file", "img/folder.png is a directory")
    assert got["sock"] == ("not_a_file", "img/sock.png is a socket")
    assert got["loop"][0] == "unreadable_file" and "symbolic links" in got["loop"][1]
    assert got["dangling"] == ("missing_file", "img/dangling.png is a symbolic link to a missing file")
    assert got["missing"] == ("missing_file", "img/nowhere.png does not exist")


def test_devices_are_named(tmp_path):
    assert _kind(stat.S_IFCHR | 0o666) == "a character device"
    assert _kind(stat.S_IFBLK | 0o660) == "a block device"
    root = tmp_path / "raw"
    recs = [good(root, "ok")]
    try:
        os.mknod(root / "img/null.png", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    except (PermissionError, OSError):
        pytest.skip("creating a device node needs CAP_MKNOD")
    _records(root, recs + [good(root, "dev", source="img/null.png")])
    _, quarantine = _shard(root, tmp_path / "out")
    assert [(q["reason"], q["message"]) for q in quarantine] == [("not_a_file", "img/null.png is a character device")]


# -- the records file -------------------------------------------------------------------------


@pytest.mark.parametrize("sep", ["\n", "\r\n", "\r"])
def test_bom_line_endings_and_blank_lines(tmp_path, sep):
    root = tmp_path / "raw"
    recs = [good(root, "first"), "", "   ", good(root, "second"), "\t", good(root, "third")]
    _records(root, recs, sep=sep, bom=True)
    stats, quarantine = _shard(root, tmp_path / "out")
    assert quarantine == []
    assert stats["records_in"] == stats["accepted"] == 3  # blank lines are not records
    assert set(_read_back(tmp_path / "out")) == {"first", "second", "third"}
    assert [n for n, _ in record_lines(root / RECORDS_FILE)] == [1, 4, 6]  # line numbers as an editor shows


def test_bad_utf8_quarantines_its_line_only_and_utf16_is_a_clear_error(tmp_path):
    root = tmp_path / "raw"
    bad = json.dumps(good(root, "latin1", prompt="cafe")).replace("cafe", "caf\udce9")
    _records(root, [good(root, "ok"), bad])
    stats, quarantine = _shard(root, tmp_path / "out")
    assert stats["accepted"] == 1
    assert [(q["reason"], q["id"], q["line"]) for q in quarantine] == [("invalid_encoding", "latin1", 2)]
    assert "byte 0xe9" in quarantine[0]["message"]
    (root / RECORDS_FILE).write_text(json.dumps(good(root, "ok")) + "\n", encoding="utf-16")
    with pytest.raises(UnicodeError, match="UTF-16"):
        _shard(root, tmp_path / "out2")


# -- evaluation-only fields -------------------------------------------------------------------


def test_ground_truth_and_content_are_stored_and_read_back(tmp_path):
    root = tmp_path / "raw"
    content = {"kind": "object", "color": "red", "shape": "circle", "box": [4, 4, 12, 12]}
    with_gt = good(root, "with", ground_truth=_save(root, "img/gt.png", _rgb(42)), content=content)
    small = good(root, "small", ground_truth=_save(root, "img/gt_small.png", _rgb(42).resize((8, 16))))
    not_object = good(root, "listed", content=["red"])
    _records(root, [with_gt, good(root, "without"), small, not_object])
    _, quarantine = _shard(root, tmp_path / "out")
    assert [(q["id"], q["reason"]) for q in quarantine] == [("small", "ground_truth_size_mismatch"),
                                                           ("listed", "schema")]
    items = _read_back(tmp_path / "out")
    assert np.array_equal(np.asarray(items["with"]["ground_truth"]), np.asarray(_rgb(42)))
    assert items["with"]["content"] == content
    assert items["without"]["ground_truth"] is None and items["without"]["content"] is None
    with tarfile.open(shard_urls(tmp_path / "out" / "shards", "train")[0]) as tar:
        names = tar.getnames()
        meta = {m.name: json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")}
    assert "with.ground_truth.png" in names and not any(n.startswith("without.ground") for n in names)
    assert "content" not in meta["without.json"]  # records without the fields keep their bytes


# -- everything at once -----------------------------------------------------------------------


def test_a_folder_with_every_bad_input_finishes_with_a_line_for_each(tmp_path):
    root = tmp_path / "raw"
    (root / "img").mkdir(parents=True)
    os.mkfifo(root / "img/pipe.png")
    (root / "img/folder.png").mkdir()
    outside = tmp_path / "outside.png"
    _rgb(1).save(outside)
    os.symlink(outside, root / "img/escape.png")
    rgba = _rgb(2).convert("RGBA")
    rgba.putpixel((3, 3), (0, 0, 0, 10))
    bad = {
        "bomb": dict(source=_write(root, "img/bomb.png", bomb_png())),
        "escape": dict(source="img/escape.png"),
        "zlib": dict(candidates=[_write(root, "img/zlib.png", _corrupt_stream_png()), "img/ok0/cand_1.png"]),
        "pipe": dict(source="img/pipe.png"),
        "folder": dict(mask="img/folder.png"),
        "alpha": dict(source=_save(root, "img/rgba.png", rgba)),
        "truth": dict(ground_truth=_save(root, "img/gt.png", _rgb(3).resize((8, 8)))),
    }
    good16 = good(root, "deep", source=_write(root, "img/g16.png", _grey16(np.full(SIZE, 40000))))
    recs = [good(root, "ok0"), ""] + [good(root, rid, **changes) for rid, changes in bad.items()]
    recs += [good16, "", good(root, "ok1"), "{not json", json.dumps(good(root, "ok2")).replace("ok2", "caf\udce9")]
    _records(root, recs, sep="\r\n", bom=True)
    stats, quarantine = _shard(root, tmp_path / "out", workers=2)
    assert stats["records_in"] == len([r for r in recs if r != ""]) == 12
    assert stats["accepted"] == 3 and stats["quarantined"] == 9
    reasons = {q["id"]: q["reason"] for q in quarantine if q["id"]}
    assert reasons == {"bomb": "image_too_large", "escape": "unsafe_path", "zlib": "undecodable_image",
                       "pipe": "not_a_file", "folder": "not_a_file", "alpha": "transparent_image",
                       "truth": "ground_truth_size_mismatch"}
    assert [q["reason"] for q in quarantine if not q["id"]] == ["invalid_json", "invalid_encoding"]
    physical = (root / RECORDS_FILE).read_bytes().decode("utf-8-sig", "surrogateescape").split("\r\n")
    for q in quarantine:  # each line points at the physical line that holds the record
        assert q["message"] and q["line"] >= 1
        if q["id"]:
            assert f'"id": "{q["id"]}"' in physical[q["line"] - 1]
    assert set(_read_back(tmp_path / "out")) == {"ok0", "deep", "ok1"}


# -- readers downstream -----------------------------------------------------------------------


def test_reader_skips_logs_and_counts_a_sample_that_does_not_decode(tmp_path, caplog):
    root = tmp_path / "raw"
    _records(root, [good(root, f"in{i}", seed=i) for i in range(4)])
    out = tmp_path / "out"
    _shard(root, out)
    clean = SkippedSamples()
    assert len(list(input_dataset(out / "shards", "train", skips=clean))) == 4 and len(clean) == 0
    url = shard_urls(out / "shards", "train")[0]
    with tarfile.open(url) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(url, "w") as tar:  # damage one member after shard checked it
        for m, data in members:
            data = data[: len(data) // 2] if m.name == "in2.cand_1.png" else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    skips = SkippedSamples()
    with caplog.at_level(logging.WARNING, logger=reader.__name__):
        keys = [item["key"] for item in input_dataset(out / "shards", "train", skips=skips)]
        keys_again = [item["key"] for item in input_dataset(out / "shards", "train", skips=skips)]
    assert keys == keys_again == ["in0", "in1", "in3"]
    assert len(skips) == 1 and "in2" in skips and "cand_1.png" in skips.why["in2"]  # counted once per input
    assert len([r for r in caplog.records if "in2" in r.getMessage()]) == 1


def _damage(url: str, member: str) -> None:
    """Halve one member of a shard after ``shard`` checked it."""
    with tarfile.open(url) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(url, "w") as tar:
        for m, data in members:
            data = data[: len(data) // 2] if m.name == member else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


def test_decoding_in_loader_workers_reads_the_same_inputs_and_counts_skips_here(tmp_path):
    root = tmp_path / "raw"
    _records(root, [good(root, f"in{i}", seed=i) for i in range(6)])
    out = tmp_path / "out"
    _shard(root, out, max_samples_per_shard=2)  # three shards over two workers
    urls = shard_urls(out / "shards", "train")
    assert len(urls) == 3
    _damage(urls[1], "in2.cand_1.png")
    inline, workers = SkippedSamples(), SkippedSamples()
    one = [x["key"] for x in input_dataset(out / "shards", "train", skips=inline)]
    two = [x["key"] for x in input_dataset(out / "shards", "train", skips=workers, workers=2)]
    assert sorted(two) == sorted(one) == ["in0", "in1", "in3", "in4", "in5"]
    assert list(workers.why) == list(inline.why) == ["in2"]


def test_rl_conditions_skip_a_damaged_input_and_count_it(tmp_path, monkeypatch):
    from onereward.rl.conditions import load_conditions

    root = tmp_path / "raw"
    _records(root, [good(root, f"in{i}", seed=i) for i in range(4)])
    out = tmp_path / "out"
    _shard(root, out)
    _damage(shard_urls(out / "shards", "train")[0], "in1.source.png")
    monkeypatch.setattr(reader.SKIPPED, "why", {})
    conds = load_conditions(str(out / "shards"), "train")
    assert conds.keys == ["in0", "in2", "in3"]
    assert list(reader.SKIPPED.why) == ["in1"] and "source.png" in reader.SKIPPED.why["in1"]
    images, masks = conds.tensors([0, 1, 2], "cpu")
    assert images.shape[0] == 3 and masks.max() == 1


def test_judge_scoring_leaves_out_skipped_inputs_and_still_refuses_missing_ones(tmp_path, monkeypatch):
    import torch

    from onereward.judge.metrics import pair_results
    from onereward.judge.train import score_rows

    class FakeJudge:  # P(Yes) = 0.9 for every query: the scoring path without a model
        model = torch.nn.Linear(1, 1)
        def input_size(self, height, width):  # candidates are resized to it once
            return 16, 16

        def score(self, first, second, queries, batch_size=16):
            return torch.full((len(queries),), 0.9)

    monkeypatch.setattr(reader.SKIPPED, "why", {})  # score_rows consults this process's skips
    root = tmp_path / "raw"
    _records(root, [good(root, f"in{i}", seed=i) for i in range(3)])
    out = tmp_path / "out"
    _shard(root, out)
    url = shard_urls(out / "shards", "train")[0]
    with tarfile.open(url) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(url, "w") as tar:
        for m, data in members:
            data = b"\x89PNG broken" if m.name == "in1.source.png" else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    rows = [{"key": f"in{i}", "task": "removal", "dimension": "removal_quality", "order": o, "first": o, "second": 1 - o,
             "label": 1 - o, "query": "q"} for i in range(3) for o in (0, 1)]
    p = score_rows(FakeJudge(), input_dataset(out / "shards", "train"), rows, batch_size=4)
    assert [x is None for x in p] == [False, False, True, True, False, False]
    assert len(reader.SKIPPED) == 1 and [r["key"] for r in pair_results(rows, p)] == ["in0", "in2"]
    with pytest.raises(ValueError, match="no images in the shards"):  # a key the shards never had
        score_rows(FakeJudge(), input_dataset(out / "shards", "train"), rows + [{**rows[0], "key": "nowhere"}], 4)


# ----------------------------------------------------------------------------- zip archives


def _zipped(root: Path, rec: dict, archive: str = "images.zip", compression=None) -> dict:
    """The record's images moved into one zip archive under ``root``; paths name the members."""
    import zipfile

    def move(rel: str, zf) -> str:
        zf.write(root / rel, rel, compress_type=compression if compression is not None else zipfile.ZIP_STORED)
        (root / rel).unlink()
        return f"{archive}/{rel}"

    with zipfile.ZipFile(root / archive, "a") as zf:
        return {**rec, "source": move(rec["source"], zf), "mask": move(rec["mask"], zf),
                "candidates": [move(c, zf) for c in rec["candidates"]]}


def test_images_in_a_zip_archive_shard_to_the_same_bytes_as_files(tmp_path):
    import zipfile

    shards = {}
    for layout in ("files", "stored", "deflated"):
        root = tmp_path / layout
        recs = [good(root, f"r{i}", seed=i) for i in range(3)]
        if layout != "files":
            kind = zipfile.ZIP_STORED if layout == "stored" else zipfile.ZIP_DEFLATED
            recs = [_zipped(root, r, compression=kind) for r in recs]
            assert not list((root / "img").rglob("*.png"))
        _records(root, recs)
        stats, quarantine = _shard(root, tmp_path / f"out-{layout}")
        assert (stats["accepted"], quarantine) == (3, [])
        shards[layout] = {p.name: p.read_bytes() for p in sorted((tmp_path / f"out-{layout}" / "shards").rglob("*.tar"))}
    assert shards["files"] and shards["stored"] == shards["files"] == shards["deflated"]


def test_bad_archive_members_are_quarantined_with_reasons(tmp_path):
    import zipfile

    root = tmp_path / "raw"
    recs = [_zipped(root, good(root, "ok"))]
    with zipfile.ZipFile(root / "images.zip", "a") as zf:
        zf.writestr("img/folder/", b"")
        zf.writestr("img/big.png", b"\0" * 4096)
        zf.writestr("img/crc.png", (root / "img").joinpath("unused").name.encode() * 50)
    # a member whose stored bytes no longer match its CRC
    data = bytearray((root / "images.zip").read_bytes())
    at = data.index(b"unusedunused")
    data[at] ^= 0xFF
    (root / "images.zip").write_bytes(bytes(data))
    _write(root, "notzip.zip", b"this is not a zip archive")
    outside = tmp_path / "outside.zip"
    outside.write_bytes((root / "images.zip").read_bytes())
    os.symlink(outside, root / "link.zip")
    ok = recs[0]
    recs += [
        {**ok, "id": "member-missing", "source": "images.zip/img/nowhere.png"},
        {**ok, "id": "member-folder", "source": "images.zip/img/folder"},
        {**ok, "id": "member-crc", "source": "images.zip/img/crc.png"},
        {**ok, "id": "not-a-zip", "source": "notzip.zip/img/ok/source.png"},
        {**ok, "id": "no-archive", "source": "gone.zip/img/ok/source.png"},
        {**ok, "id": "outside", "source": "link.zip/img/ok/source.png"},
        {**ok, "id": "dotdot", "source": "images.zip/../outside.zip/img/ok/source.png"},
    ]
    _records(root, recs)
    stats, quarantine = _shard(root, tmp_path / "out", max_image_bytes=1024)
    got = {q["id"]: (q["reason"], q["message"]) for q in quarantine}
    assert stats["accepted"] == 1 and "ok" not in got
    assert got["member-missing"] == ("missing_file", "images.zip/img/nowhere.png does not exist: images.zip has no member 'img/nowhere.png'")
    assert got["member-folder"] == ("not_a_file", "images.zip/img/folder is a directory in images.zip")
    assert got["member-crc"][0] == "unreadable_file" and "CRC" in got["member-crc"][1]
    assert got["not-a-zip"][0] == "unreadable_file" and got["not-a-zip"][1].startswith("notzip.zip is not a readable zip archive")
    assert got["no-archive"] == ("missing_file", "gone.zip does not exist")
    assert got["outside"][0] == "unsafe_path" and "outside the dataset root" in got["outside"][1]
    assert got["dotdot"][0] == "unsafe_path"
    big = {**ok, "id": "member-big", "source": "images.zip/img/big.png"}
    _records(root, [ok, big])
    _, quarantine = _shard(root, tmp_path / "out2", max_image_bytes=1024)
    assert [(q["id"], q["reason"], q["message"]) for q in quarantine] == [
        ("member-big", "image_too_large", "images.zip/img/big.png has 4096 bytes, limit 1024")]


def test_a_folder_named_like_an_archive_is_a_folder(tmp_path):
    root = tmp_path / "raw"
    rec = good(root, "ok")
    (root / "photos.zip").mkdir(parents=True)
    moved = {}
    for key in ("source", "mask"):
        target = root / "photos.zip" / Path(rec[key]).name
        (root / rec[key]).rename(target)
        moved[key] = f"photos.zip/{target.name}"
    _records(root, [{**rec, **moved}])
    stats, quarantine = _shard(root, tmp_path / "out")
    assert (stats["accepted"], quarantine) == (1, [])
