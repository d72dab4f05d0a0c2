"""``python -m onereward.bench {shard,scale,conditions,dvc-noop,repro,judge,rl,defects,spread,bits}``: see BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time


def dvc_noop(repeats: int) -> dict:
    from onereward.bench.data import median_time

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    seconds = median_time(lambda: subprocess.run(["dvc", "repro"], check=True, capture_output=True, env=env), repeats)
    return {"dvc_repro_noop_s": round(seconds, 3), "repeats": repeats}


def repro_by_stage() -> dict:
    """Wall time of every stage of the default pipeline, forced, in DAG order."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    stages = subprocess.run(["dvc", "stage", "list", "--name-only"], check=True, capture_output=True, text=True, env=env).stdout.split()
    order = _dag_order(stages, env)
    seconds = {}
    for stage in order:
        start = time.perf_counter()
        subprocess.run(["dvc", "repro", "--force", "--single-item", stage], check=True, capture_output=True, env=env)
        seconds[stage] = round(time.perf_counter() - start, 1)
    return {"stage_s": seconds, "total_s": round(sum(seconds.values()), 1)}


def _dag_order(stages: list[str], env: dict) -> list[str]:
    """Stages sorted so that each comes after what it depends on (from `dvc dag --dot`)."""
    dot = subprocess.run(["dvc", "dag", "--dot"], check=True, capture_output=True, text=True, env=env).stdout
    edges = [tuple(part.strip().strip('";') for part in line.split("->")) for line in dot.splitlines() if "->" in line]
    order, placed = [], set()
    while len(order) < len(stages):
        for s in stages:
            if s not in placed and all(a in placed for a, b in edges if b == s):
                order.append(s)
                placed.add(s)
    return order


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m onereward.bench", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True)
    p = sub.add_parser("shard", help="shard throughput against plain tarfile, and the reader")
    p.add_argument("--inputs", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("scale", help="synthesize + shard N inputs: time and peak memory")
    p.add_argument("--inputs", type=int, nargs="+", default=[10_000, 100_000])
    p = sub.add_parser("scale-child", help=argparse.SUPPRESS)
    p.add_argument("phase", choices=["synthesize", "shard"])
    p.add_argument("--inputs", type=int, required=True)
    p.add_argument("--root", required=True)
    p = sub.add_parser("conditions", help="train_policy's data-side peak memory at several dataset sizes")
    p.add_argument("--inputs", type=int, nargs="+", default=[1_000, 10_000])
    p = sub.add_parser("conditions-child", help=argparse.SUPPRESS)
    p.add_argument("shards")
    p.add_argument("--held", action="store_true")
    p = sub.add_parser("dvc-noop", help="a `dvc repro` with nothing to do")
    p.add_argument("--repeats", type=int, default=5)
    sub.add_parser("repro", help="forced `dvc repro` of every stage, timed by stage")
    p = sub.add_parser("judge", help="judge rows/s: one at a time against batched (after `dvc repro`)")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("rl", help="one RL iteration by part, and the Alg. 1 reference cache's saving")
    p.add_argument("--iterations", type=int, default=5)
    p = sub.add_parser("spread", help="the trained judge's accuracy by how clear the annotator's pair is (after `dvc repro`)")
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    sub.add_parser("bits", help="fingerprints of every layer that decides CPU bits, to compare two machines")
    p = sub.add_parser("defects", help="the judge's preference for defects of the base's outputs, beside the rater's")
    p.add_argument("--inputs", type=int, default=48, help="validation inputs per task")
    args = parser.parse_args()

    from onereward.bench import data

    if args.name == "shard":
        print(json.dumps(data.shard_throughput(args.inputs, args.repeats)))
    elif args.name == "scale":
        for n in args.inputs:
            print(json.dumps(data.scale(n)), flush=True)
    elif args.name == "scale-child":
        data.scale_child(args.phase, args.inputs, args.root)
    elif args.name == "conditions":
        for row in data.conditions_memory(args.inputs):
            print(json.dumps(row), flush=True)
    elif args.name == "conditions-child":
        data.conditions_child(args.shards, args.held)
    elif args.name == "judge":
        from onereward.bench import models

        print(json.dumps(models.judge_throughput(args.rows, args.batch_size, args.repeats)))
    elif args.name == "rl":
        from onereward.bench import models

        print(json.dumps(models.rl_iteration(args.iterations)))
    elif args.name == "defects":
        from onereward.bench import models

        for row in models.defect_preference(args.inputs):
            print(json.dumps(row), flush=True)
    elif args.name == "spread":
        from onereward.bench import models

        for row in models.judge_by_spread(tuple(args.splits)):
            print(json.dumps(row), flush=True)
    elif args.name == "bits":
        from onereward.bench import bits

        print(json.dumps(bits.report(), indent=1))
    elif args.name == "dvc-noop":
        print(json.dumps(dvc_noop(args.repeats)))
    else:
        print(json.dumps(repro_by_stage()))


if __name__ == "__main__":
    main()
