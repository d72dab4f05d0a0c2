"""Stage `evaluate`: base vs tuned on the held-out benchmark, judge-scored, with the paper's tables.

Writes reports/eval_metrics.json (DVC metrics), reports/paper_tables.md, reports/eval_gsb.csv
(DVC plot), reports/eval_scores.json and reports/eval/ (grids and GSB bars as PNG).
"""

from onereward.eval.config import EvaluateConfig
from onereward.eval.run import EvalPaths, run, write_reports
from onereward.judge.params import judge_section  # any section with per_profile overrides


def main() -> None:
    cfg, profile = judge_section(EvaluateConfig, "evaluate")
    paths = EvalPaths()
    items, outputs, scores, metrics = run(cfg, profile, paths)
    write_reports(cfg, profile, paths, items, outputs, scores, metrics)
    for name, m in metrics.items():
        if m.get("n"):
            g = m["gsb"]
            print(f"evaluate: {name}: n={m['n']} GSB {g['good']:.1f}/{g['same']:.1f}/{g['bad']:.1f} "
                  f"usability base {m['base']['usability']:.1f} tuned {m['tuned']['usability']:.1f}")


if __name__ == "__main__":
    main()
