"""The pipeline's reports as the Prefect UI shows them, and the run summary (no Prefect here).

Every table the markdown reports have is published twice: as a table artifact with one row
per task or setting and one column per dimension (built from the JSON report, so numbers
sort and compare), and as the report's own markdown (built by the stage, so the UI shows
exactly what ``reports/*.md`` says). Nothing links to files: a browser does not open a
``file://`` link from the UI, and the flow may have run on another machine.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from onereward.tasks import DIMENSIONS, EVAL_SETTINGS, TASKS

Row = dict[str, Any]
MISSING = "-"
"""A cell the task does not have (as in the markdown reports)."""


def _pct(value: Any) -> Any:
    return MISSING if value is None else value


def table1_rows(accuracy: Mapping[str, Any]) -> list[Row]:
    """Table 1 from ``reports/judge_accuracy.json``: task rows, one accuracy (%) column per dimension."""
    cells = accuracy.get("cells", {})
    rows = []
    for name, task in TASKS.items():
        by_dim = cells.get(name, {})
        row: Row = {"task": task.title}
        for dim, spec in DIMENSIONS.items():
            row[spec.title] = _pct(by_dim.get(dim, {}).get("accuracy")) if dim in task.dimensions else MISSING
        rows.append(row)
    return rows


def _headline_gsb(setting: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The rater's Good/Same/Bad when the evaluation has a rater, else the judge's."""
    rater = setting.get("rater")
    return (rater["gsb"], "rater") if rater else (setting.get("gsb", {}), "judge")


def figure7_rows(metrics: Mapping[str, Any]) -> list[Row]:
    """Figure 7 from ``reports/eval_metrics.json``: Good / Same / Bad (%) of tuned vs base per setting."""
    rows = []
    for name, setting in EVAL_SETTINGS.items():
        if name not in metrics:
            continue
        m = metrics[name]
        gsb, scorer = _headline_gsb(m)
        rows.append(
            {
                "setting": setting.title,
                "scored by": scorer,
                "n": m.get("n"),
                "good %": _pct(gsb.get("good")),
                "same %": _pct(gsb.get("same")),
                "bad %": _pct(gsb.get("bad")),
                "mean preference for tuned": _pct(m.get("mean_preference")),
            }
        )
    return rows


def table2_rows(metrics: Mapping[str, Any]) -> list[Row]:
    """Table 2 from ``reports/eval_metrics.json``: per setting and model, usability (the rater's when
    there is one) and the judge's win rate (%) per dimension."""
    rows = []
    for name, setting in EVAL_SETTINGS.items():
        if name not in metrics:
            continue
        dims = TASKS[setting.task].dimensions
        rater = metrics[name].get("rater") or {}
        for model in ("base", "tuned"):
            m = metrics[name].get(model, {})
            usability = rater["usability"].get(model) if "usability" in rater else m.get("usability")
            row: Row = {"setting": setting.title, "model": model, "usability %": _pct(usability)}
            for dim, spec in DIMENSIONS.items():
                row[spec.title] = _pct(m.get("win_rate", {}).get(dim)) if dim in dims else MISSING
            rows.append(row)
    return rows


def data_rows(stats: Mapping[str, Any]) -> list[Row]:
    """``reports/data_stats.json``: per split, inputs and pairs (all, then per task)."""
    rows = []
    for split, inputs in stats.get("inputs_per_split", {}).items():
        row: Row = {"split": split, "inputs": inputs, "pairs": stats.get("pairs_per_split", {}).get(split)}
        for name, task in TASKS.items():
            row[f"{task.title} pairs"] = sum(stats.get("pairs", {}).get(split, {}).get(name, {}).values())
        rows.append(row)
    return rows


def data_description(stats: Mapping[str, Any]) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in stats.get("quarantined_by_reason", {}).items()) or "none"
    return (
        f"{stats.get('records_in')} records in, {stats.get('accepted')} accepted, "
        f"{stats.get('quarantined')} quarantined ({reasons})"
    )


@dataclasses.dataclass(frozen=True)
class ReportTable:
    """A table artifact built from a JSON report, published when the report is fresh."""

    path: str
    """Relative to the workspace."""
    key: str
    """Artifact key: lowercase letters, digits and dashes; versions accumulate under it."""
    title: str
    rows: Callable[[Any], list[Row]]
    """Report JSON -> rows (one dict per row, same keys in every row)."""
    description: Callable[[Any], str] | None = None
    """Extra words for the artifact's description."""


@dataclasses.dataclass(frozen=True)
class ReportMarkdown:
    """A markdown report the stage writes, published as a markdown artifact."""

    path: str
    key: str
    title: str


REPORT_TABLES: tuple[ReportTable, ...] = (
    ReportTable("reports/data_stats.json", "data-stats", "Data: inputs and pairs per split", data_rows, data_description),
    ReportTable("reports/judge_accuracy.json", "judge-accuracy", "Table 1: judge accuracy (%), task x dimension", table1_rows),
    ReportTable("reports/eval_metrics.json", "eval-gsb", "Figure 7: Good / Same / Bad of tuned vs base (%)", figure7_rows),
    ReportTable(
        "reports/eval_metrics.json", "eval-usability", "Table 2: usability and win rate per dimension (%)", table2_rows
    ),
)
REPORT_MARKDOWN: tuple[ReportMarkdown, ...] = (
    ReportMarkdown("reports/table1_judge_accuracy.md", "table1-report", "Table 1 report"),
    ReportMarkdown("reports/paper_tables.md", "paper-tables", "Paper tables beside this run (Figure 7, Table 2, Table 1)"),
)

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def artifact_markdown(text: str, path: str) -> str:
    """A report's markdown for the UI: images named instead of linked (they are files, not URLs)."""
    folder = path.rsplit("/", 1)[0]
    return _IMAGE.sub(lambda m: f"{m.group(1)} (image `{folder}/{m.group(2)}`)", text)


@dataclasses.dataclass(frozen=True)
class StageOutcome:
    """How one stage went in a flow run."""

    stage: str
    status: str
    """'ran', 'up to date' (a DVC no-op), 'restored from run-cache', 'failed' or 'not run'."""
    seconds: float = 0.0


def summary_markdown(
    workspace: str,
    outcomes: Sequence[StageOutcome],
    target: str | None,
    overrides: Sequence[str],
    experiment: str | None,
    published: Mapping[str, list[str]],
    reports: Sequence[str],
    error: str | None = None,
) -> str:
    """The run's markdown artifact: what ran, what DVC skipped, where each report is shown."""
    lines = ["# OneReward pipeline run", ""]
    lines.append(f"- workspace: `{workspace}`")
    lines.append(f"- target: `{target}` and its upstream stages" if target else "- target: all stages")
    if overrides:
        lines.append("- overrides (`dvc exp run --set-param`): " + ", ".join(f"`{o}`" for o in overrides))
    if experiment:
        lines.append(
            f"- DVC experiment `{experiment}`, run in a temporary copy: the workspace is unchanged; "
            f"`dvc exp show` lists it, `dvc exp apply {experiment}` brings its results into the workspace"
        )
    lines += ["", "| # | stage | result | seconds |", "|---|---|---|---|"]
    for i, o in enumerate(outcomes, 1):
        lines.append(f"| {i} | `{o.stage}` | {o.status} | {o.seconds:.1f} |")
    if error:
        lines += ["", "## Error", "", "```", error.strip(), "```"]
    lines += ["", "## Reports", ""]
    if not reports:
        lines.append("No reports yet.")
    for rel in reports:
        keys = published.get(rel)
        shown = ("artifacts " + ", ".join(f"`{k}`" for k in keys)) if keys else "not published: not written by this run"
        lines.append(f"- `{rel}`: {shown}")
    return "\n".join(lines) + "\n"

