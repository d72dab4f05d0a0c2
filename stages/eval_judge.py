"""Stage `eval_judge`: the paper's Table 1 on the test split, with order consistency."""

from dataclasses import dataclass
from pathlib import Path

import torch

from onereward.data.reader import SKIPPED, input_dataset
from onereward.io import atomic_path, write_json
from onereward.judge.data import read_query_table
from onereward.judge.metrics import pair_results, summarize, table1_markdown
from onereward.judge.model import Judge
from onereward.judge.params import judge_section
from onereward.judge.train import score_rows

JUDGE = Path("data/models/judge")
QUERIES = Path("data/queries.parquet")
SHARDS = Path("data/shards")
TABLE = Path("reports/table1_judge_accuracy.md")
METRICS = Path("reports/judge_accuracy.json")


@dataclass(frozen=True)
class EvalJudgeConfig:
    """params.yaml `eval_judge`."""

    split: str = "test"
    """Split the table is computed on."""
    batch_size: int = 64
    """Query rows per forward pass."""


def main() -> None:
    cfg, profile = judge_section(EvalJudgeConfig, "eval_judge")
    rows = read_query_table(QUERIES, split=cfg.split)
    judge = Judge.load(JUDGE, device=profile.device, dtype=getattr(torch, profile.dtype),
                       attn_implementation=profile.attn_implementation)
    p = score_rows(judge, input_dataset(SHARDS, cfg.split), rows, cfg.batch_size, desc="eval_judge")
    summary = summarize(pair_results(rows, p))
    with atomic_path(TABLE) as tmp:
        tmp.write_text(table1_markdown(summary))
    write_json(METRICS, {**summary, "skipped_samples": len(SKIPPED)})  # inputs the reader could not decode
    print(f"eval_judge: mean accuracy {summary['mean_accuracy']} over {summary['pairs']} {cfg.split} pairs, "
          f"order consistency {summary['order_consistency']}")


if __name__ == "__main__":
    main()
