"""Stage `evaluate`: base vs tuned on the held-out benchmark, rater-scored (the stand-in for the
paper's human raters) with the judge's scores beside it, and the paper's tables.

Writes reports/eval_metrics.json (DVC metrics), reports/paper_tables.md, reports/eval_gsb.csv
(DVC plot), reports/eval_scores.json and reports/eval/ (grids and GSB bars as PNG).
"""

from onereward.config import section
from onereward.eval.config import EvaluateConfig
from onereward.eval.run import EvalPaths, run, write_reports
from onereward.judge.params import judge_section  # any section with per_profile overrides
from onereward.policy.known import GenerationConfig


def main() -> None:
    cfg, profile = judge_section(EvaluateConfig, "evaluate")
    paths = EvalPaths()
    items, outputs, scores, metrics = run(cfg, profile, paths, section(GenerationConfig, "generation"))
    write_reports(cfg, profile, paths, items, outputs, scores, metrics)
    for name, m in metrics.items():
        if m.get("n"):
            g = m["gsb"]
            r = m.get("rater", {}).get("gsb")
            rated = f"rater GSB {r['good']:.1f}/{r['same']:.1f}/{r['bad']:.1f}; " if r else ""
            print(f"evaluate: {name}: n={m['n']} {rated}judge GSB {g['good']:.1f}/{g['same']:.1f}/{g['bad']:.1f} "
                  f"usability base {m['base']['usability']:.1f} tuned {m['tuned']['usability']:.1f}")


if __name__ == "__main__":
    main()
