"""Success rates and their differences: 95% Wilson score intervals (sound at 0 or n successes
and small n), Newcombe's intervals for a difference (independent or paired episodes), and
the paired episodes a difference needs."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

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


def newcombe_difference(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float, float]:
    """p1 - p2 and its 95% interval (Newcombe 1998, method 10)."""
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1)
    l2, u2 = wilson_interval(s2, n2)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def paired_newcombe_difference(
    both: int, only_1: int, only_2: int, neither: int
) -> tuple[float, float, float]:
    """p1 - p2 of paired binary outcomes and its 95% interval.

    Newcombe (1998), "Improved confidence intervals for the difference between binomial
    proportions based on paired data", Stat. Med. 17:2635, method 10: the Wilson intervals of
    both margins combined with the phi correlation of the 2x2 table. With phi = 0 it is the
    independent interval of `newcombe_difference` with n1 = n2.
    """
    n = both + only_1 + only_2 + neither
    p1, p2 = (both + only_1) / n, (both + only_2) / n
    l1, u1 = wilson_interval(both + only_1, n)
    l2, u2 = wilson_interval(both + only_2, n)
    margins = (both + only_1) * (only_2 + neither) * (both + only_2) * (only_1 + neither)
    phi = (both * neither - only_1 * only_2) / math.sqrt(margins) if margins else 0.0
    d = p1 - p2
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    low = d - math.sqrt(max(0.0, dl1**2 - 2 * phi * dl1 * du2 + du2**2))
    high = d + math.sqrt(max(0.0, du1**2 - 2 * phi * du1 * dl2 + dl2**2))
    return d, low, high


def paired_episodes_needed(
    both: int, only_1: int, only_2: int, neither: int, power: float = 0.8
) -> float:
    """Paired episodes that a difference as large as the observed one, with the observed
    discordance, needs to be resolved by a two-sided 5% McNemar test with `power`
    (Connor 1987, Biometrics 43:207). Infinite when the observed difference is 0."""
    n = both + only_1 + only_2 + neither
    discordance = (only_1 + only_2) / n
    d = (only_1 - only_2) / n
    if d == 0:
        return math.inf
    z_alpha, z_power = NormalDist().inv_cdf(0.975), NormalDist().inv_cdf(power)
    root = z_alpha * math.sqrt(discordance) + z_power * math.sqrt(max(discordance - d * d, 0.0))
    return math.ceil(root**2 / d**2)


def paired_counts(
    episodes_1: list[dict[str, Any]], episodes_2: list[dict[str, Any]]
) -> tuple[int, int, int, int] | None:
    """(both, only 1, only 2, neither) succeeded, or None unless the episodes pair one to one."""

    def outcomes(episodes: list[dict[str, Any]]) -> dict[tuple, bool]:
        return {(e["task"], e["init_state"], e["rollout"]): e["success"] for e in episodes}

    o1, o2 = outcomes(episodes_1), outcomes(episodes_2)
    duplicates = len(o1) != len(episodes_1) or len(o2) != len(episodes_2)
    if not o1 or duplicates or o1.keys() != o2.keys():
        return None
    pairs = [(o1[k], o2[k]) for k in o1]
    return (
        sum(a and b for a, b in pairs),
        sum(a and not b for a, b in pairs),
        sum(b and not a for a, b in pairs),
        sum(not a and not b for a, b in pairs),
    )
