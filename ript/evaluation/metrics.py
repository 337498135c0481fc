"""Success rates with 95% Wilson score intervals (sound at 0 or n successes and small n)."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson score interval; (0, 1) when n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def success_summary(successes: int, n: int) -> dict[str, float | int]:
    low, high = wilson_interval(successes, n)
    return {
        "successes": int(successes),
        "n": int(n),
        "success_rate": successes / n if n else 0.0,
        "ci95_low": low,
        "ci95_high": high,
    }
