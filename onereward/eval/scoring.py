"""Judge-scored comparisons: tuned vs base (GSB) and each model vs the annotated candidates (Table 2).

Every comparison is order-symmetric (``Judge.symmetric_score``):
``s(a, b, q) = 1/2 [P(Yes | a, b, q) + P(No | b, a, q)]``, the judge's preference for ``a`` in
[0, 1]; 0.5 means no preference. Queries come from ``render_query(task, dimension, prompt)``
for the dimensions the registry gives the input (``dimensions_for``).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from onereward.judge.queries import render_query
from onereward.tasks import EVAL_SETTINGS, dimensions_for

MODELS = ("base", "tuned")
OUTCOMES = ("good", "same", "bad")


@dataclass
class InputScores:
    """All judge numbers of one benchmark input."""

    key: str
    task: str
    settings: list[str]
    dimensions: list[str]
    preference: dict[str, float]
    """dimension -> s(tuned, base): the judge's preference for tuned over base."""
    beaten: dict[str, dict[str, float]]
    """model -> dimension -> share of the input's candidates with s(model output, candidate) > 0.5."""

    @property
    def mean_preference(self) -> float:
        return sum(self.preference.values()) / len(self.preference)

    def outcome(self, margin: float) -> str:
        """Good / Same / Bad of tuned against base on this input (mean over dimensions)."""
        p = self.mean_preference
        return "good" if p > 0.5 + margin else "bad" if p < 0.5 - margin else "same"

    def usable(self, model: str, share: float) -> bool:
        return all(v >= share for v in self.beaten[model].values())


def score_input(judge, key: str, task: str, prompt: str | None, settings: list[str],
                outputs: dict[str, Image.Image], candidates: list[Image.Image], batch_size: int) -> InputScores:
    """One batched judge call (both orders) for every comparison of one input."""
    dims = list(dimensions_for(task, prompt))
    queries = {d: render_query(task, d, prompt) for d in dims}
    first, second, qs, slots = [], [], [], []

    def add(a, b, d, slot):
        first.append(a)
        second.append(b)
        qs.append(queries[d])
        slots.append((slot, d))

    for d in dims:
        add(outputs["tuned"], outputs["base"], d, "gsb")
    for m in MODELS:
        for d in dims:
            for c in candidates:
                add(outputs[m], c, d, m)
    s = judge.symmetric_score(first, second, qs, batch_size=batch_size).tolist()
    preference = {d: v for (kind, d), v in zip(slots, s) if kind == "gsb"}
    beaten = {m: {} for m in MODELS}
    for m in MODELS:
        for d in dims:
            wins = [v > 0.5 for (kind, dd), v in zip(slots, s) if kind == m and dd == d]
            beaten[m][d] = sum(wins) / len(wins) if wins else 0.0
    return InputScores(key, task, settings, dims, preference, beaten)


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def aggregate(scores: list[InputScores], margin: float, usable_share: float) -> dict:
    """Per evaluation setting: GSB (Figure 7 analogue) and per-model win rates/usability (Table 2)."""
    out = {}
    for name in EVAL_SETTINGS:
        rows = [s for s in scores if name in s.settings]
        if not rows:
            out[name] = {"n": 0}
            continue
        dims = sorted({d for r in rows for d in r.dimensions})
        counts = {o: sum(r.outcome(margin) == o for r in rows) for o in OUTCOMES}
        entry = {
            "n": len(rows),
            "gsb": {o: _pct(counts[o] / len(rows)) for o in OUTCOMES},
            "preference": {d: round(_mean([r.preference[d] for r in rows if d in r.preference]), 4) for d in dims},
            "mean_preference": round(_mean([r.mean_preference for r in rows]), 4),
        }
        for m in MODELS:
            entry[m] = {
                "win_rate": {d: _pct(_mean([r.beaten[m][d] for r in rows if d in r.beaten[m]])) for d in dims},
                "usability": _pct(_mean([float(r.usable(m, usable_share)) for r in rows])),
            }
        out[name] = entry
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0
