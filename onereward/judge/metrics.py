"""Pairwise accuracy of the judge, per task and dimension, and the paper's Table 1."""

from __future__ import annotations

from collections import defaultdict

from onereward.eval.stats import wilson
from onereward.markdown import dimension_table_header
from onereward.tasks import TASKS

# OneReward (arXiv 2508.21066) Table 1: accuracy (%) of the reward model against human labels.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "fill": {"text_alignment": 83.77, "consistency": 74.23, "structure": 74.63, "aesthetics": 72.10},
    "extend": {"text_alignment": 80.36, "consistency": 72.50, "structure": 74.29, "aesthetics": 71.10},
    "removal": {"removal_quality": 84.93},
}
TABLE1_COLUMNS = ("text_alignment", "consistency", "structure", "aesthetics", "removal_quality")


def pair_results(rows: list[dict], p_yes: list[float]) -> list[dict]:
    """Join both orders of each pair: symmetric score, per-order correctness, agreement.

    A pair counts as correct when its order-symmetric score, mean(P(Yes | w, l), P(No | l, w)),
    is above 0.5. Orders agree when both single-order answers name the same winner.
    """
    by_pair: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    meta = {}
    for r, p in zip(rows, p_yes):
        if p is None:  # an input the reader skipped (counted as skipped_samples)
            continue
        by_pair[(r["key"], r["dimension"])][r["order"]] = float(p)
        meta[(r["key"], r["dimension"])] = r["task"]
    out = []
    for (key, dim), orders in sorted(by_pair.items()):
        if set(orders) != {0, 1}:
            raise ValueError(f"pair {key}/{dim} lacks one of its two orders")
        p_wl, p_lw = orders[0], orders[1]
        out.append(
            {
                "key": key, "task": meta[(key, dim)], "dimension": dim,
                "score": 0.5 * (p_wl + 1.0 - p_lw),
                "correct": 0.5 * (p_wl + 1.0 - p_lw) > 0.5,
                "correct_wl": p_wl > 0.5,
                "correct_lw": p_lw < 0.5,
                "consistent": (p_wl > 0.5) == (p_lw < 0.5),
            }
        )
    return out


def summarize(pairs: list[dict]) -> dict:
    """Accuracy (%) per task x dimension, means, and order consistency."""
    cells: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for p in pairs:
        cells[p["task"]][p["dimension"]].append(p)

    def pct(items, field):
        return round(100.0 * sum(bool(i[field]) for i in items) / len(items), 2) if items else None

    table = {
        task: {
            dim: {
                "accuracy": pct(items, "correct"),
                "accuracy_single_order": round((pct(items, "correct_wl") + pct(items, "correct_lw")) / 2, 2),
                "order_consistency": pct(items, "consistent"),
                "pairs": len(items),
                "interval": [round(100.0 * x, 2) for x in wilson(sum(bool(i["correct"]) for i in items), len(items))],
            }
            for dim, items in sorted(dims.items())
        }
        for task, dims in sorted(cells.items())
    }
    accs = [c["accuracy"] for dims in table.values() for c in dims.values()]
    return {
        "cells": table,
        "mean_accuracy": round(sum(accs) / len(accs), 2) if accs else None,
        "min_cell_accuracy": min(accs) if accs else None,
        "pair_accuracy": pct(pairs, "correct"),
        "order_consistency": pct(pairs, "consistent"),
        "pairs": len(pairs),
    }


def table1_markdown(summary: dict, title: str = "Table 1: reward-model accuracy (%)") -> str:
    """The paper's Table 1 layout; each cell is ``ours (paper)``, '-' where not judged."""
    cols = TABLE1_COLUMNS
    lines = [
        f"## {title}",
        "",
        "Each cell: ours (paper). Ours: test-split pairwise accuracy of the order-symmetric score "
        "mean(P(Yes | winner, loser), P(No | loser, winner)) > 0.5; paper: OneReward Table 1.",
        "",
        *dimension_table_header(["task"], cols),
    ]
    for name, task in TASKS.items():
        cells = []
        for c in cols:
            ours = summary["cells"].get(name, {}).get(c)
            paper = PAPER_TABLE1.get(name, {}).get(c)
            if c not in task.dimensions:
                cells.append("-")
            else:
                o = f"{ours['accuracy']:.2f}" if ours else "n/a"
                cells.append(f"{o} ({paper:.2f})" if paper is not None else o)
        lines.append(f"| {task.title} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Mean over filled cells: {summary['mean_accuracy']:.2f} (paper: "
        f"{sum(v for d in PAPER_TABLE1.values() for v in d.values()) / sum(len(d) for d in PAPER_TABLE1.values()):.2f}); "
        f"over all {summary['pairs']} test pairs: {summary['pair_accuracy']:.2f}.",
        "",
        "## Order consistency (%) and test pairs per cell",
        "",
        "Order consistency: how often P(Yes | a, b) and P(Yes | b, a) name the same winner.",
        "",
        *dimension_table_header(["task"], cols),
    ]
    lines += _cell_rows(summary, cols, lambda cell: f"{cell['order_consistency']:.2f} (n={cell['pairs']})")
    lines += [
        "",
        f"Overall order consistency: {summary['order_consistency']:.2f}.",
        "",
        "## 95% interval of each cell's accuracy (Wilson, %)",
        "",
        "A cell of a few pairs says little: 5 of 10 right is anywhere from about 24 to 76.",
        "",
        *dimension_table_header(["task"], cols),
    ]
    # summaries written before cells carried an interval show '-' there
    lines += _cell_rows(summary, cols,
                        lambda cell: f"{cell['interval'][0]:.1f}-{cell['interval'][1]:.1f}" if "interval" in cell else "-")
    lines.append("")
    return "\n".join(lines)


def _cell_rows(summary: dict, cols: tuple[str, ...], show) -> list[str]:
    """A markdown row per task: ``show(cell)`` for each judged cell, '-' elsewhere."""
    rows = []
    for name, task in TASKS.items():
        cells = [summary["cells"].get(name, {}).get(c) for c in cols]
        rows.append(f"| {task.title} | " + " | ".join(show(cell) if cell else "-" for cell in cells) + " |")
    return rows
