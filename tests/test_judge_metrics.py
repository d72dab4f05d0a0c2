"""Table 1's cells: accuracy, pairs and the 95% interval a reader needs to weigh a small cell."""

from onereward.judge.metrics import pair_results, summarize, table1_markdown


def rows_and_scores(task: str, dim: str, right: int, n: int) -> tuple[list[dict], list[float]]:
    """Both orders of ``n`` pairs; the first ``right`` are judged correctly in both orders."""
    rows, p = [], []
    for i in range(n):
        for order in (0, 1):
            rows.append({"key": f"{task}{dim}{i}", "task": task, "dimension": dim, "order": order})
            correct = i < right
            p.append((0.8 if correct else 0.2) if order == 0 else (0.2 if correct else 0.8))
    return rows, p


def test_each_cell_carries_its_wilson_interval_and_the_table_prints_it():
    r1, p1 = rows_and_scores("extend", "text_alignment", 5, 10)
    r2, p2 = rows_and_scores("fill", "consistency", 90, 100)
    summary = summarize(pair_results(r1 + r2, p1 + p2))
    small, large = summary["cells"]["extend"]["text_alignment"], summary["cells"]["fill"]["consistency"]
    assert (small["accuracy"], small["pairs"]) == (50.0, 10)
    assert small["interval"] == [23.66, 76.34]  # 5 of 10: a cell that cannot tell 60% from 40%
    assert large["interval"][0] < 90.0 < large["interval"][1] and large["interval"][1] - large["interval"][0] < 13
    table = table1_markdown(summary)
    assert "95% interval" in table
    assert "| image extend | 23.7-76.3 | - | - | - | - |" in table


def test_a_summary_without_intervals_still_makes_the_table():
    """judge_accuracy.json files written before cells carried an interval."""
    cell = {"accuracy": 60.0, "accuracy_single_order": 60.0, "order_consistency": 90.0, "pairs": 5}
    summary = {"cells": {"fill": {"consistency": cell}}, "mean_accuracy": 60.0, "min_cell_accuracy": 60.0,
               "pair_accuracy": 60.0, "order_consistency": 90.0, "pairs": 5}
    assert "| image fill | - | - | - | - | - |" in table1_markdown(summary).split("95% interval")[1]
