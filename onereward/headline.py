"""A few named numbers per stage for ``dvc metrics show`` / ``dvc metrics diff`` at terminal width.

The stages' JSON reports hold every detail (per task, dimension, split and setting); as DVC
metrics they made one table thousands of characters wide. The ``headline`` stage picks the
numbers a reader compares first into ``reports/headline.json``, the pipeline's one metrics file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPORTS = {
    "data": Path("reports/data_stats.json"),
    "base": Path("reports/policy_base.json"),
    "judge": Path("reports/judge_accuracy.json"),
    "rl": Path("reports/train_policy/metrics.json"),
    "eval": Path("reports/eval_metrics.json"),
}
"""Where each group's numbers come from (the writing stage's own report)."""


def _weighted(settings: Mapping[str, Any], pick) -> float | None:
    pairs = [(s.get("n") or 0, pick(s)) for s in settings.values()]
    pairs = [(n, v) for n, v in pairs if n and v is not None]
    total = sum(n for n, _ in pairs)
    return round(sum(n * v for n, v in pairs) / total, 2) if total else None


def _gsb(setting: Mapping[str, Any]) -> Mapping[str, Any]:
    return (setting.get("rater") or setting).get("gsb", {})


def _usable_tuned(setting: Mapping[str, Any]) -> Any:
    rater = setting.get("rater") or {}
    return rater["usability"].get("tuned") if "usability" in rater else setting.get("tuned", {}).get("usability")


def headline(reports: Mapping[str, Any]) -> dict[str, Any]:
    """Flat, short-named numbers from the reports that exist (``reports[group]``: its JSON)."""
    out: dict[str, Any] = {}
    if data := reports.get("data"):
        out["records"] = data.get("records_in")
        out["quarantined"] = data.get("quarantined")
    if base := reports.get("base"):
        out["flow_loss"] = base.get("flow_loss")  # base_model: the tiny policy's pre-training loss
    if judge := reports.get("judge"):
        out["judge_acc"] = judge.get("mean_accuracy")  # Table 1: mean over task x dimension cells (%)
        out["order_cons"] = judge.get("order_consistency")  # both orders name the same winner (%)
    if rl := reports.get("rl"):
        out["val_reward"] = rl.get("val_reward_end")  # judge reward on validation inputs, last step
    if ev := reports.get("eval"):  # Figure 7 / Table 2 over all settings, weighted by inputs; the rater's if any
        out["gsb_good"] = _weighted(ev, lambda s: _gsb(s).get("good"))
        out["gsb_bad"] = _weighted(ev, lambda s: _gsb(s).get("bad"))
        out["usable"] = _weighted(ev, _usable_tuned)
    return out


def read_reports(root: Path = Path(".")) -> dict[str, Any]:
    return {group: json.loads((root / p).read_text()) for group, p in REPORTS.items() if (root / p).is_file()}
