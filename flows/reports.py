"""Turn the pipeline's JSON reports into tables and a markdown run summary (no Prefect here)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ReportTable:
    """A JSON report that the flow publishes as a table artifact when it exists."""

    path: str
    """Relative to the workspace."""
    key: str
    """Artifact key: lowercase letters, digits and dashes; versions accumulate under it."""
    title: str


REPORT_TABLES: tuple[ReportTable, ...] = (
    ReportTable("reports/data_stats.json", "data-stats", "Data: records in, accepted, quarantined, pairs per split"),
    ReportTable("reports/judge_accuracy.json", "judge-accuracy", "Judge accuracy per task x dimension (Table 1)"),
    ReportTable("reports/eval_metrics.json", "eval-metrics", "Evaluation: base vs tuned policy (Table 2, GSB)"),
)


@dataclasses.dataclass(frozen=True)
class StageOutcome:
    """How one stage went in a flow run."""

    stage: str
    status: str
    """'ran', 'up to date' (a DVC no-op), 'restored from run-cache', 'failed' or 'not run'."""
    seconds: float = 0.0


def _scalar(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value, sort_keys=True)


def _flatten(data: Any, prefix: str = "") -> Row:
    if isinstance(data, Mapping) and data:
        out: Row = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix or "value": _scalar(data)}


def table_rows(data: Any) -> list[Row]:
    """Rows for a table artifact, whatever the report's shape.

    - a list of records stays a list of rows;
    - ``{row: {column: scalar}}`` (accuracy per task x dimension) becomes a matrix;
    - anything else is flattened into ``metric`` / ``value`` rows with dotted keys.
    """
    if isinstance(data, list) and all(isinstance(r, Mapping) for r in data):
        return [{str(k): _scalar(v) for k, v in r.items()} for r in data]
    if (
        isinstance(data, Mapping)
        and data
        and all(
            isinstance(v, Mapping) and v and not any(isinstance(x, (Mapping, list)) for x in v.values())
            for v in data.values()
        )
    ):
        columns = sorted({str(c) for v in data.values() for c in v})
        return [{"name": str(k), **{c: v.get(c) for c in columns}} for k, v in data.items()]
    return [{"metric": k, "value": v} for k, v in _flatten(data).items()]


def report_link(workspace: Path, rel: str) -> str:
    """A markdown link that opens the file on the machine that ran the flow."""
    return f"[{rel}]({(workspace / rel).resolve().as_uri()})"  # the UI shows no code spans in links


def summary_markdown(
    workspace: Path,
    outcomes: Sequence[StageOutcome],
    target: str | None,
    overrides: Sequence[str],
    experiment: str | None,
    published: Mapping[str, str],
    error: str | None = None,
) -> str:
    """The run's markdown artifact: what ran, what DVC skipped, where the reports are."""
    lines = ["# OneReward pipeline run", ""]
    lines.append(f"- workspace: `{workspace}`")
    lines.append(f"- target: `{target}` and its upstream stages" if target else "- target: all stages")
    if overrides:
        lines.append("- overrides (`dvc exp run --set-param`): " + ", ".join(f"`{o}`" for o in overrides))
    if experiment:
        lines.append(f"- DVC experiment: `{experiment}` (`dvc exp show`)")
    lines += ["", "| # | stage | result | seconds |", "|---|---|---|---|"]
    for i, o in enumerate(outcomes, 1):
        lines.append(f"| {i} | `{o.stage}` | {o.status} | {o.seconds:.1f} |")
    if error:
        lines += ["", "## Error", "", "```", error.strip(), "```"]
    reports = workspace / "reports"
    files = (
        sorted(p for p in reports.rglob("*") if p.is_file() and not p.name.startswith(".")) if reports.is_dir() else []
    )
    lines += ["", "## Reports", ""]
    if not files:
        lines.append("No reports yet.")
    for p in files:
        rel = p.relative_to(workspace).as_posix()
        extra = f" (table artifact `{published[rel]}`)" if rel in published else ""
        lines.append(f"- {report_link(workspace, rel)}{extra}")
    return "\n".join(lines) + "\n"
