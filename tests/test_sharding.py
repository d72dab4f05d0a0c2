"""Splits, shard bytes, the manifest and the reader."""

import collections
import filecmp
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from onereward.data.reader import pair_dataset, shard_urls
from onereward.data.records import RECORDS_FILE
from onereward.data.sharding import SPLITS, ShardConfig, shard_dataset, split_of


def _shard(root, out, **cfg):
    out.mkdir(parents=True)
    stats = shard_dataset(root, out / "shards", out / "manifest.parquet", out / "quarantine.jsonl", ShardConfig(**cfg))
    return stats


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, micro_dataset):
    out = tmp_path_factory.mktemp("sharded")
    stats = _shard(micro_dataset, out / "a", max_samples_per_shard=3, split={"train": 0.5, "val": 0.25, "test": 0.25})
    return out / "a", stats


def test_split_is_a_function_of_id_and_seed_only():
    cfg = ShardConfig()
    ids = [f"id-{i}" for i in range(5000)]
    first = {i: split_of(i, cfg) for i in ids}
    assert {i: split_of(i, cfg) for i in reversed(ids)} == first
    counts = collections.Counter(first.values())
    assert abs(counts["train"] / 5000 - 0.8) < 0.03 and abs(counts["test"] / 5000 - 0.1) < 0.03
    other = {i: split_of(i, ShardConfig(seed=1)) for i in ids}
    assert other != first  # the seed reshuffles


def test_no_input_in_two_splits_and_manifest_matches_shards(sharded):
    out, stats = sharded
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    split_of_key = collections.defaultdict(set)
    for row in manifest:
        split_of_key[row["key"]].add(row["split"])
        assert row["shard"].startswith(row["split"] + "/")
        assert row["winner"] != row["loser"]
    assert all(len(s) == 1 for s in split_of_key.values())
    for split in SPLITS:
        keys_in_shards = []
        for url in shard_urls(out / "shards", split):
            names = tarfile.open(url).getnames()
            keys_in_shards += sorted({n.split(".")[0] for n in names})
        assert len(keys_in_shards) == len(set(keys_in_shards)) == stats["inputs_per_split"][split]
        assert {k for k, s in split_of_key.items() if s == {split}} <= set(keys_in_shards)
    assert len(manifest) == sum(stats["pairs_per_split"].values())


def test_shard_size_limit_and_tar_listing(sharded):
    out, _ = sharded
    for split in SPLITS:
        for url in shard_urls(out / "shards", split):
            listing = subprocess.run(["tar", "-tf", url], capture_output=True, text=True, check=True).stdout.split()
            members = [tarfile.open(url).getmember(n) for n in listing]
            assert len({n.split(".")[0] for n in listing}) <= 3
            assert all(m.mtime == 0 for m in members)
            assert any(n.endswith(".json") for n in listing) and any(".cand_0." in n for n in listing)


def test_two_runs_give_identical_bytes(tmp_path, micro_dataset, sharded):
    out, _ = sharded
    # The second run also checks images in-process instead of in a worker pool.
    _shard(micro_dataset, tmp_path / "b", max_samples_per_shard=3, split={"train": 0.5, "val": 0.25, "test": 0.25}, workers=1)
    cmp = filecmp.dircmp(out, tmp_path / "b")
    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert files
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert not cmp.left_only and not cmp.right_only


def test_stock_webdataset_decodes_shards(sharded):
    out, _ = sharded
    sample = next(iter(wds.WebDataset(shard_urls(out / "shards", "train"), shardshuffle=False).decode("pil")))
    assert sample["source.png"].size == sample["mask.png"].size == sample["cand_0.png"].size
    assert set(sample["json"]) >= {"task", "prompt", "labels", "num_candidates"}


def test_pair_reader_yields_both_orders(sharded):
    out, _ = sharded
    manifest = [r for r in pq.read_table(out / "manifest.parquet").to_pylist() if r["split"] == "train"]
    pairs = list(pair_dataset(out / "shards", "train"))
    assert len(pairs) == 2 * len(manifest)
    by_key_dim = collections.defaultdict(list)
    for p in pairs:
        by_key_dim[(p["key"], p["dimension"])].append(p)
    for (key, dim), (a, b) in by_key_dim.items():
        assert (a["label"], b["label"]) == (1, 0)
        assert np.array_equal(np.asarray(a["first"]), np.asarray(b["second"]))
        assert a["mask"].mode == "L" and a["first"].mode == "RGB"
    assert len(list(pair_dataset(out / "shards", "train", both_orders=False))) == len(manifest)


def test_reader_splits_shards_across_workers(sharded, monkeypatch):
    import webdataset.utils

    out, _ = sharded
    single = sorted(p["key"] for p in pair_dataset(out / "shards", "train", both_orders=False))
    per_worker = []
    for worker in range(2):  # what each of two DataLoader workers would see
        monkeypatch.setattr(webdataset.utils, "pytorch_worker_info", lambda group=None, w=worker: (0, 1, w, 2))
        per_worker.append([p["key"] for p in pair_dataset(out / "shards", "train", both_orders=False)])
    assert per_worker[0] and per_worker[1]
    assert not set(per_worker[0]) & set(per_worker[1])  # each shard read by exactly one worker
    assert sorted(per_worker[0] + per_worker[1]) == single


def test_synthesize_output_does_not_depend_on_workers(tmp_path, tiny_generator):
    from onereward.data.synthetic import SynthesizeConfig, synthesize

    for workers, name in ((1, "one"), (2, "two")):
        synthesize(tmp_path / name, SynthesizeConfig(num_inputs=12, workers=workers, bad_records=2, batch_size=8),
                   tiny_generator)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert one == two and Path(RECORDS_FILE) in one
    assert all((tmp_path / "one" / r).read_bytes() == (tmp_path / "two" / r).read_bytes() for r in one)
