"""Alg. 1 beside Alg. 2 (or any runs of the pipeline), rater-scored, as the paper compares them.

Each run's ``reports/eval_metrics.json`` is read at a git revision or DVC experiment name
(``dvc.api.read``), so a variant made with ``dvc exp run --temp -n alg2 -S train_policy.algorithm=dynamic``
is compared with the workspace without applying it::

    python -m onereward.eval.compare workspace alg2 --labels "Alg. 1" "Alg. 2" -o reports/algorithms.md

``workspace`` reads the file as it is on disk.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from onereward.eval.report import _ci, _gsb_cell
from onereward.tasks import DIMENSIONS, EVAL_SETTINGS

METRICS = "reports/eval_metrics.json"
WORKSPACE = "workspace"


def read_metrics(rev: str, repo: str = ".") -> dict:
    """``reports/eval_metrics.json`` at ``rev`` (git revision or experiment name, or ``workspace``)."""
    if rev == WORKSPACE:
        return json.loads((Path(repo) / METRICS).read_text())
    import dvc.api

    return json.loads(dvc.api.read(METRICS, repo=repo, rev=rev))


def comparison_table(runs: list[tuple[str, dict]]) -> str:
    """Markdown: per eval setting and run, the rater's Good / Same / Bad with good - bad and its
    95% interval, and the judge's Good / Same / Bad (the training objective) beside it."""
    lines = [
        "## Rater-scored Good / Same / Bad against the base, per run (%)",
        "",
        "| setting | run | n | rater: good / same / bad | good - bad [95% interval] | judge (training objective): good / same / bad |",
        "|---|---|---|---|---|---|",
    ]
    for name, setting in EVAL_SETTINGS.items():
        for label, m in runs:
            s = m.get(name)
            if not s:
                continue
            rater = s.get("rater") or {}
            g = rater.get("gsb") or {}
            j = s.get("gsb") or {}
            lines.append(
                f"| {setting.title} | {label} | {rater.get('n', s.get('n', 0))} "
                f"| {_gsb_cell([g[k] for k in ('good', 'same', 'bad')] if g else None)} "
                f"| {_ci(rater.get('good_minus_bad'))} "
                f"| {_gsb_cell([j[k] for k in ('good', 'same', 'bad')] if j else None)} |"
            )
    lines += [
        "",
        "## Rater: mean score of tuned minus base per dimension [95% interval]",
        "",
        "| setting | run | " + " | ".join(DIMENSIONS[d].title for d in DIMENSIONS) + " |",
        "|---|---|" + "---|" * len(DIMENSIONS),
    ]
    for name, setting in EVAL_SETTINGS.items():
        for label, m in runs:
            score = ((m.get(name) or {}).get("rater") or {}).get("score") or {}
            if score:
                cells = [_ci(score[d]["diff"], 3) if d in score else "-" for d in DIMENSIONS]
                lines.append(f"| {setting.title} | {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Rater: the ground-truth rater (`onereward.scoring.rater`), which no training step sees; "
        "judge: the reward model the policy was trained against. Same inputs, seeds and sampling for every run.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m onereward.eval.compare", description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="+", help=f"git revisions or DVC experiment names; {WORKSPACE!r} for the files on disk")
    ap.add_argument("--labels", nargs="+", help="a label per revision (default: the revisions)")
    ap.add_argument("-o", "--out", help="write the markdown here instead of printing it")
    ap.add_argument("--repo", default=".")
    args = ap.parse_args(argv)
    labels = args.labels or args.revs
    if len(labels) != len(args.revs):
        ap.error(f"{len(labels)} labels for {len(args.revs)} revisions")
    runs = []
    for rev, label in zip(args.revs, labels):
        try:
            runs.append((label, read_metrics(rev, args.repo)))
        except Exception as e:  # noqa: BLE001 -- dvc and git raise many kinds; one line says which run
            raise SystemExit(f"compare: cannot read {METRICS} at {rev!r}: {type(e).__name__}: {e}") from None
    text = "# Runs compared\n\n" + comparison_table(runs)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
