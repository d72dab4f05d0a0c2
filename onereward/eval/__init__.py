"""Evaluation: base vs tuned on a held-out benchmark, judge-scored GSB and a Table 2 analogue."""
