"""RLOO advantages and the labels CFG training reads: `w_pos` and `is_positive`.

Rewards live per episode. For K rollouts sharing (task, init state) with rewards r_i the
leave-one-out advantage is `A_i = r_i - mean_{j != i} r_j` (RLOO; RIPT-VLA). RIPT's dynamic
sampling drops groups whose K rewards are all equal: every A_i is 0, they carry no signal.

Granularity decides which steps of an episode carry its advantage:

- `episode`: every step carries A_i (the notes' original scheme);
- `window`: the episode is cut into windows of `window_size` consecutive steps; a window
  ending at step t_end carries `A_i * discount ** (T_i - 1 - t_end)`, so credit fades with
  the distance from the outcome (success-to-go of a terminal reward, discounted);
- `timestep`: windows of one step, `A_i * discount ** (T_i - 1 - t)`.

Weights: `binary` is `w_pos = 1[A > 0]`; `continuous` normalises the advantages of all kept
rows (`std`: A / std(A); `rank`: sign(A) times the rank of |A| scaled onto (0, 1], robust to
outliers and never turning a negative advantage positive), clips them to their [1 - q, q]
quantiles, divides by a temperature and keeps the positive part.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

GRANULARITIES = ("episode", "window", "timestep")
WEIGHT_MODES = ("binary", "continuous")
NORMALIZATIONS = ("std", "rank")


def success_reward(episodes: pd.DataFrame, max_episode_length: int) -> np.ndarray:
    """1 for a successful episode, 0 otherwise."""
    return episodes["success"].to_numpy(dtype=np.float64)


def fast_success_reward(episodes: pd.DataFrame, max_episode_length: int) -> np.ndarray:
    """Success discounted by time taken: 1 - 0.5 * length / max_episode_length if successful,
    else 0, so quicker successes rank higher within a group."""
    length = episodes["length"].to_numpy(dtype=np.float64)
    return success_reward(episodes, max_episode_length) * (1 - 0.5 * length / max_episode_length)


REWARDS: dict[str, Callable[[pd.DataFrame, int], np.ndarray]] = {
    "success": success_reward,
    "fast_success": fast_success_reward,
}


def rloo_advantages(rewards: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """A_i = r_i - mean of the other rewards of i's group; every group needs K >= 2."""
    rewards = np.asarray(rewards, dtype=np.float64)
    groups = np.asarray(groups)
    out = np.empty_like(rewards)
    for group in np.unique(groups):
        members = groups == group
        k = int(members.sum())
        if k < 2:
            raise ValueError(
                f"group {str(group)!r} has {k} rollout; RLOO needs at least 2 per group "
                "(rollouts_per_init >= 2)"
            )
        r = rewards[members]
        out[members] = r - (r.sum() - r) / (k - 1)
    return out


def informative_groups(rewards: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Mask of rows whose group's rewards are not all equal (RIPT dynamic sampling)."""
    frame = pd.DataFrame({"group": groups, "reward": rewards})
    spread = frame.groupby("group")["reward"].transform(lambda r: r.max() - r.min())
    return spread.to_numpy() > 0


def spans(length: int, granularity: str, window_size: int) -> list[tuple[int, int]]:
    """[start, stop) step spans of an episode of `length` steps that carry one weight."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r}: expected one of {GRANULARITIES}")
    size = {"episode": max(length, 1), "window": window_size, "timestep": 1}[granularity]
    return [(s, min(s + size, length)) for s in range(0, length, size)]


def span_advantage(
    advantage: float, length: int, stop: int, granularity: str, discount: float
) -> float:
    """The episode's advantage, discounted by the steps from the span's end to the outcome."""
    if granularity == "episode":
        return advantage
    return advantage * discount ** (length - stop)


def positive_weights(
    advantages: np.ndarray,
    mode: str,
    *,
    normalization: str = "std",
    temperature: float = 1.0,
    clip_quantile: float = 0.95,
) -> np.ndarray:
    """w_pos >= 0 per row: binary 1[A > 0] or the clipped, tempered, normalised advantage."""
    a = np.asarray(advantages, dtype=np.float64)
    if mode == "binary":
        return (a > 0).astype(np.float64)
    if mode != "continuous":
        raise ValueError(f"weight mode {mode!r}: expected one of {WEIGHT_MODES}")
    if a.size == 0:
        return a
    if normalization == "std":
        std = a.std()
        z = a / std if std > 0 else np.zeros_like(a)
    elif normalization == "rank":
        z = np.sign(a) * pd.Series(np.abs(a)).rank(method="average").to_numpy() / a.size
    else:
        raise ValueError(f"normalization {normalization!r}: expected one of {NORMALIZATIONS}")
    low, high = np.quantile(z, [1 - clip_quantile, clip_quantile])
    return np.clip(np.clip(z, low, high) / temperature, 0, None)
