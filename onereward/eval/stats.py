"""95% intervals for the evaluation's shares and means (normal approximation, Wilson for shares)."""

from __future__ import annotations

import math

Z95 = 1.959964


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a share, in [0, 1]: sensible at 0 or n successes and small n."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(xs: list[float], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): mean +- z standard errors (sample standard deviation); no interval for n < 2."""
    n = len(xs)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    m = sum(xs) / n
    if n < 2:
        return (m, math.nan, math.nan)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return (m, m - half, m + half)


def rounded(values, nd: int = 4) -> list[float | None]:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else round(v, nd) for v in values]
