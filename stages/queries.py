"""Stage `queries`: the judge query table, both orders of every manifest pair.

Depends on the template file, so editing a template reruns the judge stages and nothing
upstream of them.
"""

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from onereward.io import atomic_path
from onereward.judge.data import render_rows, write_query_table
from onereward.judge.params import judge_section
from onereward.judge.queries import load_templates

MANIFEST = Path("data/manifest.parquet")
OUT = Path("data/queries.parquet")


@dataclass(frozen=True)
class QueriesConfig:
    """params.yaml `queries`."""

    templates: str = "templates/judge_queries.yaml"
    """The versioned query template file (one template per task x dimension)."""


def main() -> None:
    cfg, _ = judge_section(QueriesConfig, "queries")
    templates = load_templates(cfg.templates)
    rows = render_rows(pq.read_table(MANIFEST).to_pylist(), templates)
    with atomic_path(OUT) as tmp:
        write_query_table(rows, tmp)
    print(f"queries: {len(rows)} rows (both orders) from {MANIFEST}, templates v{templates.version}")


if __name__ == "__main__":
    main()
