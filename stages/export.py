"""Stage `export`: the tuned policy in stock diffusers format, its judge, a model card, checksums.

Reads train_policy's output (``data/models/policy_rl``) and the trained judge; writes
``data/export`` atomically. See onereward/export.py for the layout.
"""

import json
from pathlib import Path

from onereward.config import load_params
from onereward.export import CardInfo, ExportConfig, code_version, data_versions, export, find_tuned
from onereward.io import atomic_path
from onereward.judge.params import judge_section  # any section with per_profile overrides
from onereward.policy.adapter import DTYPES

OUT = Path("data/export")
TUNED = Path("data/models/policy_rl")
JUDGE = Path("data/models/judge")
# Embedded in the model card when present (declared as deps in dvc.yaml).
METRICS = (Path("reports/judge_accuracy.json"), Path("reports/train_policy/metrics.json"))
CARD_SECTIONS = ("profile", "base_model", "train_judge", "train_policy", "export")


def main() -> None:
    params = load_params()
    cfg, profile = judge_section(ExportConfig, "export", params)
    tuned = find_tuned(TUNED, cfg.weights)
    judge = JUDGE if JUDGE.is_dir() else None
    judge_meta = json.loads((JUDGE / "judge.json").read_text()) if judge and (JUDGE / "judge.json").is_file() else {}
    card = CardInfo(
        params={k: params[k] for k in CARD_SECTIONS if k in params},
        code_version=code_version(),
        data_versions=data_versions(),
        metrics={str(p): json.loads(p.read_text()) for p in METRICS if p.is_file()},
        judge_base=judge_meta.get("base") or profile.judge_model,
    )
    with atomic_path(OUT) as tmp:
        meta = export(profile.policy_model, tuned, judge, tmp, cfg, DTYPES[profile.dtype], card)
    print(f"export: {OUT} ({meta['finetune']}, {meta['weights']} weights, full pipeline: {meta['full_pipeline']})")


if __name__ == "__main__":
    main()
