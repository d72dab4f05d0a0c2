"""Data-side benchmarks: sharding against plain tarfile, the reader, and the scale run."""

from __future__ import annotations

import io
import json
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import webdataset as wds

from onereward.data.reader import pair_dataset
from onereward.data.records import RECORDS_FILE, DatasetRoot
from onereward.data.sharding import ShardConfig, shard_dataset
from onereward.data.synthetic import SynthesizeConfig, synthesize


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _plain_tar(root: Path, out: Path) -> None:
    """The baseline: the same image bytes and metadata into one tar, no validation."""
    with tarfile.open(out, "w") as tar:
        for line in open(root / RECORDS_FILE):
            rec = json.loads(line)
            truth = [rec["ground_truth"]] if rec.get("ground_truth") else []  # shard stores it too
            for rel in [rec["source"], rec["mask"], *rec["candidates"], *truth]:
                data = DatasetRoot(root).read(rel, rec["id"], 0)
                info = tarfile.TarInfo(f"{rec['id']}.{Path(rel).name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def untrained_generator(path: Path) -> str:
    """A seeded, untrained tiny FLUX.1-Fill folder: generates as fast as the trained one."""
    from onereward.policy.tiny import build_tiny_pipeline, save_pipeline

    if not path.exists():
        save_pipeline(build_tiny_pipeline(seed=0), path)
    return str(path)


def shard_throughput(inputs: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "raw", SynthesizeConfig(num_inputs=inputs, workers=2), untrained_generator(tmp / "generator"))
        run = iter(range(10**6))

        def shard():
            out = tmp / f"out{next(run)}"
            out.mkdir()
            shard_dataset(tmp / "raw", out / "shards", out / "m.parquet", out / "q.jsonl", ShardConfig(max_samples_per_shard=1000))

        ours = median_time(shard, repeats)
        plain = median_time(lambda: _plain_tar(tmp / "raw", tmp / "plain.tar"), repeats)
        mb = sum(p.stat().st_size for p in (tmp / "raw").rglob("*") if p.is_file() and p.name != RECORDS_FILE) / 1e6
        first = tmp / "out0" / "shards"
        pairs = median_time(lambda: sum(1 for _ in pair_dataset(first, "train")), repeats)
        n_pairs = sum(1 for _ in pair_dataset(first, "train"))
        loader = wds.WebLoader(pair_dataset(first, "train").map(lambda p: p["label"]), batch_size=None, num_workers=2)
        loaded = median_time(lambda: sum(1 for _ in loader), repeats)
    return {
        "inputs": inputs,
        "image_mb": round(mb, 1),
        "shard_s": round(ours, 3),
        "shard_inputs_per_s": round(inputs / ours, 1),
        "shard_mb_per_s": round(mb / ours, 2),
        "plain_tarfile_s": round(plain, 3),
        "shard_vs_plain_tarfile": round(plain / ours, 3),
        "reader_pairs_per_s": round(n_pairs / pairs, 1),
        "webloader_2_workers_pairs_per_s": round(n_pairs / loaded, 1),
    }


def scale_child(phase: str, inputs: int, root: str) -> None:
    """One phase in a fresh process, so that its peak RSS is its own."""
    root = Path(root)
    start = time.perf_counter()
    if phase == "synthesize":
        synthesize(root / "raw", SynthesizeConfig(num_inputs=inputs, workers=2), untrained_generator(root / "generator"))
    else:
        (root / "out").mkdir()
        shard_dataset(root / "raw", root / "out" / "shards", root / "out" / "m.parquet", root / "out" / "q.jsonl",
                      ShardConfig(max_samples_per_shard=5000))
    seconds = time.perf_counter() - start
    # the phase's own process and its largest worker process (kB on Linux)
    peaks = [resource.getrusage(who).ru_maxrss / 1024 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    print(json.dumps({f"{phase}_s": round(seconds, 1), f"{phase}_peak_rss_mb": round(peaks[0], 1),
                      f"{phase}_worker_peak_rss_mb": round(peaks[1], 1)}))


def scale(inputs: int) -> dict:
    """Synthesize then shard ``inputs`` inputs: time and peak memory of each phase."""
    result = {"inputs": inputs}
    with tempfile.TemporaryDirectory() as tmp:
        for phase in ("synthesize", "shard"):
            out = subprocess.run(
                [sys.executable, "-m", "onereward.bench", "scale-child", phase, "--inputs", str(inputs), "--root", tmp],
                capture_output=True, text=True, check=True,
            ).stdout
            result.update(json.loads(out.strip().splitlines()[-1]))
    return result


def _plain_export(root: Path, inputs: int, side: int = 64) -> None:
    """``inputs`` fill records of distinct simple images (fast to make, valid for ``shard``)."""
    import numpy as np
    from PIL import Image

    (root / "img").mkdir(parents=True)
    yy, xx = np.mgrid[0:side, 0:side]
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 255
    Image.fromarray(mask).save(root / "img" / "mask.png")
    with open(root / RECORDS_FILE, "w") as f:
        for i in range(inputs):
            base = np.stack([xx * 4 % 256, yy * 4 % 256, np.full_like(xx, i % 251)], -1).astype(np.uint8)
            names = []
            for k, shift in enumerate((0, 37, 91)):
                Image.fromarray((base + shift).astype(np.uint8)).save(root / "img" / f"{i}_{k}.png")
                names.append(f"img/{i}_{k}.png")
            f.write(json.dumps({"id": f"fill-{i:06d}", "task": "fill", "prompt": "a red circle", "source": names[0],
                                "mask": "img/mask.png", "candidates": names[1:],
                                "labels": {"consistency": {"best": 0, "worst": 1}}}) + "\n")


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc; the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def conditions_child(shards: str, held: bool) -> None:
    """Index the train split (or hold all its pixels, as train_policy did before) and draw 200
    steps; resident memory over the imports' baseline."""
    from onereward.rl.conditions import draw, load_conditions

    base = _rss_mb()
    start = time.perf_counter()
    conds = load_conditions(shards, "train")
    if held:
        conds = conds.subset(range(len(conds)))
    for step in range(200):
        d = draw(conds, 0, step, 0, 4, 1, (2, 6), {"fill": 1.0})
        conds.tensors(d.index, "cpu")
    print(json.dumps({"train_inputs": len(conds), "seconds": round(time.perf_counter() - start, 1),
                      "rss_growth_mb": round(_rss_mb() - base, 1)}))


def conditions_memory(inputs: list[int]) -> list[dict]:
    """train_policy's data side at several dataset sizes: peak memory over the imports' baseline,
    the shard index (what train_policy uses) against every input's pixels held in memory."""
    rows = []
    for n in inputs:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _plain_export(tmp / "raw", n)
            shard_dataset(tmp / "raw", tmp / "shards", tmp / "m.parquet", tmp / "q.jsonl",
                          ShardConfig(split={"train": 1.0, "val": 0.0, "test": 0.0}, max_samples_per_shard=2000))
            row = {"inputs": n}
            for held in (False, True):
                out = subprocess.run([sys.executable, "-m", "onereward.bench", "conditions-child", str(tmp / "shards")]
                                     + (["--held"] if held else []), capture_output=True, text=True, check=True).stdout
                row["held" if held else "index"] = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
    return rows
