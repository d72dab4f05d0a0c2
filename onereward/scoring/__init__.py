"""Scorers: the judge (the reward), the ground-truth rater and the checks behind one interface."""

from onereward.scoring.base import (
    PairwiseScorer,
    PointwiseScorer,
    Scorer,
    ScoreOutput,
    available_scorers,
    build_scorer,
    register_scorer,
)

__all__ = [
    "PairwiseScorer", "PointwiseScorer", "Scorer", "ScoreOutput",
    "available_scorers", "build_scorer", "register_scorer",
]
