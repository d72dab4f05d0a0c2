"""Rater-scored evaluation: the stand-in for the paper's human raters, and checks on the rater.

The rater (``onereward.scoring.rater``) scores each output against its input's ground truth
per dimension; it never enters training, so these numbers can show what the judge cannot: a
rising reward that is reward hacking. Beside it, masked PSNR and SSIM against the ground truth
(``onereward.scoring.checks``), measures neither the annotator nor the rater uses, check the
rater itself; and the judge's agreement with the rater on (tuned, base) says how far the
training objective tracks the ruler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from onereward.eval.benchmark import Item, to_tensor
from onereward.eval.scoring import MODELS, OUTCOMES, InputScores
from onereward.eval.stats import mean_ci, rounded, wilson
from onereward.tasks import EVAL_SETTINGS, dimensions_for

RATER = "rater"
CHECKS = ("masked_psnr", "masked_ssim")


@dataclass
class RatedInput:
    """The rater's (and the checks') numbers for one benchmark input."""

    key: str
    task: str
    settings: list[str]
    dims: list[str]
    scores: dict[str, dict[str, float]]
    """model -> dimension -> rater score in [0, 1]."""
    checks: dict[str, dict[str, float]]
    """model -> check -> value (PSNR in dB, SSIM in [-1, 1])."""
    candidates: dict[str, list[float]]
    """dimension -> rater score of each annotated candidate."""

    def diff(self, dim: str | None = None) -> float:
        """Rater score of tuned minus base: on one dimension, or the mean over the task's."""
        dims = [dim] if dim else self.dims
        return sum(self.scores["tuned"][d] - self.scores["base"][d] for d in dims) / len(dims)

    def outcome(self, margin: float) -> str:
        d = self.diff()
        return "good" if d > margin else "bad" if d < -margin else "same"

    def usable(self, model: str, share: float) -> bool:
        """Rated at least as well as ``share`` of the input's candidates on every dimension."""
        return all(sum(c <= self.scores[model][d] for c in self.candidates[d]) / len(self.candidates[d]) >= share
                   for d in self.dims)


def _fields(items: list[Item]) -> dict:
    return {
        "ground_truth": torch.stack([to_tensor(it.ground_truth) for it in items]),
        "mask": torch.cat([it.mask_tensor() for it in items]),
        "source": torch.cat([it.image_tensor() for it in items]),
        "task": [it.task for it in items],
        "content": [it.content for it in items],
    }


def rate(items: list[Item], outputs: dict[str, dict[str, object]]) -> list[RatedInput]:
    """Rater and checks for every input with a ground truth (others are left out)."""
    from onereward.scoring import build_scorer

    items = [it for it in items if it.ground_truth is not None]
    if not items:
        return []
    rater = build_scorer(RATER)
    checks = {name: build_scorer(name) for name in CHECKS}
    fields = _fields(items)
    per_model, per_check = {}, {}
    with torch.no_grad():
        for m in MODELS:
            images = torch.stack([to_tensor(outputs[m][it.key]) for it in items])
            per_model[m] = rater(images, **fields).scores
            per_check[m] = {name: c(images, **fields).scores for name, c in checks.items()}
        cand = candidate_scores(items, rater, fields)
    out = []
    for i, it in enumerate(items):
        dims = list(dimensions_for(it.task, it.prompt))
        out.append(RatedInput(
            it.key, it.task, list(it.settings), dims,
            {m: {d: float(per_model[m][d][i]) for d in dims} for m in MODELS},
            {m: {name: _first_value(per_check[m][name], i) for name in CHECKS} for m in MODELS},
            cand[i],
        ))
    return out


def candidate_scores(items: list[Item], rater, fields: dict | None = None) -> list[dict[str, list[float]]]:
    """Per input (each with a ground truth), the rater's score of every candidate per judged dimension."""
    fields = _fields(items) if fields is None else fields
    n_cand = [len(it.candidates) for it in items]
    rep = lambda v: [x for x, k in zip(v, n_cand) for _ in range(k)]  # noqa: E731
    cand_fields = {k: (torch.repeat_interleave(v, torch.tensor(n_cand), 0) if torch.is_tensor(v) else rep(v))
                   for k, v in fields.items()}
    with torch.no_grad():
        cand = rater(torch.cat([it.candidate_tensor() for it in items]), **cand_fields).scores
    out, offset = [], 0
    for it, k in zip(items, n_cand):
        out.append({d: [float(v) for v in cand[d][offset : offset + k]] for d in dimensions_for(it.task, it.prompt)})
        offset += k
    return out


def _first_value(scores: dict[str, torch.Tensor], i: int) -> float:
    """A check reports one measure; its only key."""
    (v,) = scores.values()
    return float(v[i])


def _ci_pct(successes: int, n: int) -> list[float]:
    lo, hi = wilson(successes, n)
    return [round(100 * lo, 2), round(100 * hi, 2)]


def aggregate_rated(rated: list[RatedInput], judged: list[InputScores], margin: float, usable_share: float) -> dict:
    """Per evaluation setting: rater GSB with intervals, per-dimension scores, usability, checks, agreement."""
    judge_by_key = {s.key: s for s in judged}
    out = {}
    for name in EVAL_SETTINGS:
        rows = [r for r in rated if name in r.settings]
        if not rows:
            out[name] = {"n": 0}
            continue
        n = len(rows)
        outcomes = [r.outcome(margin) for r in rows]
        counts = {o: outcomes.count(o) for o in OUTCOMES}
        signed = [1.0 if o == "good" else -1.0 if o == "bad" else 0.0 for o in outcomes]
        dims = sorted({d for r in rows for d in r.dims})
        entry = {
            "n": n,
            "gsb": {o: round(100 * counts[o] / n, 2) for o in OUTCOMES},
            "gsb_ci": {o: _ci_pct(counts[o], n) for o in OUTCOMES},
            "good_minus_bad": rounded([100 * v for v in mean_ci(signed)], 2),
            "score": {},
            "usability": {m: round(100 * sum(r.usable(m, usable_share) for r in rows) / n, 2) for m in MODELS},
            "usability_ci": {m: _ci_pct(sum(r.usable(m, usable_share) for r in rows), n) for m in MODELS},
            "checks": {},
        }
        for d in dims:
            having = [r for r in rows if d in r.dims]
            entry["score"][d] = {
                **{m: rounded(mean_ci([r.scores[m][d] for r in having])) for m in MODELS},
                "diff": rounded(mean_ci([r.diff(d) for r in having])),
            }
        for c in CHECKS:
            vals = {m: [r.checks[m][c] for r in rows if math.isfinite(r.checks[m][c])] for m in MODELS}
            both = [r.checks["tuned"][c] - r.checks["base"][c] for r in rows
                    if math.isfinite(r.checks["tuned"][c]) and math.isfinite(r.checks["base"][c])]
            entry["checks"][c] = {**{m: rounded(mean_ci(vals[m]), 3) for m in MODELS}, "diff": rounded(mean_ci(both), 3)}
        entry["agreement"] = agreement(rows, judge_by_key, margin)
        out[name] = entry
    return out


def agreement(rows: list[RatedInput], judge_by_key: dict[str, InputScores], margin: float) -> dict:
    """How often the judge's preference for tuned over base has the rater's sign, per (input, dimension)
    where the rater sees a difference larger than ``margin``."""
    agree, total = 0, 0
    for r in rows:
        judged = judge_by_key.get(r.key)
        if judged is None:
            continue
        for d in r.dims:
            delta = r.diff(d)
            if abs(delta) > margin and d in judged.preference:
                total += 1
                agree += (judged.preference[d] > 0.5) == (delta > 0)
    return {"pairs": total, "agree": round(100 * agree / total, 2) if total else None,
            "agree_ci": _ci_pct(agree, total) if total else None}
