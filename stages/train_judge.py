"""Stage `train_judge`: fine-tune the judge with Eq. 3 (both orders), log with DVCLive.

Writes the trained judge to ``data/models/judge`` (a LoRA adapter or a full model, plus
``judge.json``); checkpoints go to ``data/models/judge_ckpt`` and a rerun resumes from them.
"""

from contextlib import nullcontext
from pathlib import Path

import torch

from onereward.data.reader import SKIPPED, input_dataset
from onereward.io import atomic_path
from onereward.judge.data import read_query_table
from onereward.judge.model import Judge, JudgeMeta
from onereward.judge.params import judge_section
from onereward.judge.train import TrainJudgeConfig, clear_checkpoints, save_judge, train
from onereward.launch import data_parallel

BASE = Path("data/models/judge_base")
QUERIES = Path("data/queries.parquet")
SHARDS = Path("data/shards")
OUT = Path("data/models/judge")
CKPT = Path("data/models/judge_ckpt")
LIVE = Path("dvclive/train_judge")


def main() -> None:
    cfg, _ = judge_section(TrainJudgeConfig, "train_judge")
    data_parallel(run, cfg.processes)


def run() -> None:
    """The stage in one process (of ``train_judge.processes``); the main process writes the outputs."""
    from accelerate import PartialState
    from dvclive import Live

    cfg, profile = judge_section(TrainJudgeConfig, "train_judge")
    rows = read_query_table(QUERIES)
    train_rows = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    versions = sorted({r["template_version"] for r in rows})
    judge = Judge.load(BASE, device=profile.device, dtype=getattr(torch, profile.dtype),
                       attn_implementation=profile.attn_implementation)
    meta = JudgeMeta.read(BASE)
    base = meta.base if meta and meta.base else str(BASE)

    decoded: dict[str, dict] = {"train": {}, "val": {}}

    def inputs(split: str, shuffle: bool, seed: int):
        # every process reads every batch and trains on its share of the pairs
        return input_dataset(SHARDS, split, shuffle=shuffle, seed=seed, by_process=False, workers=cfg.loader_workers,
                             keep=decoded[split] if cfg.keep_inputs else None)

    main_process = PartialState(cpu=profile.device == "cpu").is_main_process  # cpu: gloo over processes
    # dvcyaml=None: dvc.yaml is written by people, not by the logger
    with (Live(str(LIVE), dvcyaml=None, save_dvc_exp=False, report=None) if main_process else nullcontext()) as live:

        def log(step: int, metrics: dict) -> None:
            live.step = step
            for k, v in metrics.items():
                live.log_metric(k, v)
            live.log_metric("skipped_samples", len(SKIPPED))  # inputs the reader could not decode
            live.next_step()

        history = train(judge, cfg, inputs, train_rows, val_rows, ckpt_dir=CKPT, log=log)
    if not main_process:
        return
    with atomic_path(OUT) as tmp:
        save_judge(judge, cfg, base, tmp, template_version=",".join(versions))
    # A finished run is not resumed: the next run (new queries or params) starts fresh. The folder
    # is no stage output (as train_policy's checkpoints are not): an output that is neither in git
    # nor in the cache makes `dvc exp run --temp` retrain the judge for an RL-only change.
    clear_checkpoints(CKPT)
    last = history[-1] if history else {}
    print(f"train_judge: {cfg.finetune} fine-tuning, {cfg.steps} steps, last {last}, skipped samples {len(SKIPPED)}")


if __name__ == "__main__":
    main()
