"""Every kind of bad record is quarantined with its own reason, and the run still finishes."""

import io
import json
import shutil

import pytest

from onereward.data.corruptions import MAKERS
from onereward.data.records import REASONS, RECORDS_FILE, DatasetRoot, RecordError
from onereward.data.sharding import ShardConfig, shard_dataset


def _dataset_with(tmp_path, micro_dataset, reason):
    root = tmp_path / "raw"
    shutil.copytree(micro_dataset, root)
    lines = (root / RECORDS_FILE).read_text().splitlines()
    base = next(r for r in map(json.loads, lines) if r["task"] == "fill" and r["labels"] and r["prompt"])
    bad = MAKERS[reason](root, base, "bad-record")
    (root / RECORDS_FILE).write_bytes(("\n".join(lines + [bad]) + "\n").encode("utf-8", "surrogateescape"))
    return root, len(lines)


def _shard(root, tmp_path, **cfg):
    out = tmp_path / "out"
    out.mkdir()
    stats = shard_dataset(root, out / "shards", out / "manifest.parquet", out / "quarantine.jsonl", ShardConfig(**cfg))
    quarantined = [json.loads(l) for l in (out / "quarantine.jsonl").read_text().splitlines()]
    return stats, quarantined


def test_every_reason_has_a_maker():
    assert set(MAKERS) == set(REASONS)


@pytest.mark.parametrize("reason", sorted(MAKERS))
def test_bad_record_is_quarantined_with_its_reason(tmp_path, micro_dataset, reason):
    root, n_good = _dataset_with(tmp_path, micro_dataset, reason)
    stats, quarantined = _shard(root, tmp_path)
    assert [q["reason"] for q in quarantined] == [reason]
    assert quarantined[0]["line"] == n_good + 1
    assert quarantined[0]["message"]
    if reason != "unsafe_id":  # an unsafe id is not repeated as an id; unparsed lines give the id they show
        assert quarantined[0]["id"] in ("bad-record", "fill-000000")
    assert stats["records_in"] == n_good + 1
    assert stats["accepted"] == n_good
    assert stats["quarantined_by_reason"] == {reason: 1}
    assert stats["records_in"] == stats["accepted"] + stats["quarantined"]


def test_garbage_bytes_are_undecodable(tmp_path, micro_dataset):
    root, _ = _dataset_with(tmp_path, micro_dataset, "missing_file")
    (root / "images" / "bad-record").mkdir(parents=True)
    (root / "images" / "bad-record" / "nowhere.png").write_bytes(b"this is not a png" * 10)
    _, quarantined = _shard(root, tmp_path)
    assert [q["reason"] for q in quarantined] == ["undecodable_image"]


def test_strict_mode_stops_at_first_bad_record_naming_it(tmp_path, micro_dataset):
    root, _ = _dataset_with(tmp_path, micro_dataset, "mask_size_mismatch")
    with pytest.raises(RecordError) as err:
        _shard(root, tmp_path, strict=True)
    assert err.value.reason == "mask_size_mismatch"
    assert "bad-record" in str(err.value) and "mask_size_mismatch" in str(err.value)


def test_missing_records_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="records.jsonl"):
        _shard(tmp_path, tmp_path)


@pytest.mark.parametrize("keep", [1.0, 0.5])
def test_jpeg_is_accepted_and_truncated_jpeg_is_undecodable(tmp_path, micro_dataset, keep):
    from PIL import Image

    root, _ = _dataset_with(tmp_path, micro_dataset, "missing_file")
    folder = root / "images" / "bad-record"
    folder.mkdir(parents=True)
    base = json.loads((root / RECORDS_FILE).read_text().splitlines()[-1])
    Image.open(io.BytesIO(DatasetRoot(root).read(base["candidates"][0], "x", 0))).convert("RGB").save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "nowhere.png").write_bytes(data[: int(len(data) * keep)])  # the name does not decide the format
    stats, quarantined = _shard(root, tmp_path)
    assert [q["reason"] for q in quarantined] == ([] if keep == 1.0 else ["undecodable_image"])
