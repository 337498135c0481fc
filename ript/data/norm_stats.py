"""Normalisation statistics in openpi's `norm_stats.json` format.

    {"norm_stats": {"state":   {"mean": [...], "std": [...], "q01": [...], "q99": [...]},
                    "actions": {"mean": [...], "std": [...], "q01": [...], "q99": [...]}}}

Vectors have the unpadded dimensions. pi0 normalises with z-scores
`(x - mean) / (std + 1e-6)`; the quantile mode maps q01..q99 to -1..1 (openpi's pi0-FAST).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np

from ript.files import write_text_atomic

log = logging.getLogger(__name__)

EPS = 1e-6
FIELDS = ("mean", "std", "q01", "q99")
MODES = ("zscore", "quantile")


class NormStatsError(ValueError):
    """A norm_stats.json that is missing, malformed or of the wrong width."""


@dataclass(frozen=True)
class Stats:
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.mean)

    def normalize(self, x: np.ndarray, mode: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if mode == "zscore":
            return (x - self.mean) / (self.std + EPS)
        return (x - self.q01) / (self.q99 - self.q01 + EPS) * 2.0 - 1.0

    def unnormalize(self, x: np.ndarray, mode: str) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if mode == "zscore":
            return x * (self.std + EPS) + self.mean
        return (x + 1.0) / 2.0 * (self.q99 - self.q01 + EPS) + self.q01

    @classmethod
    def identity(cls, dim: int) -> Stats:
        """Statistics that leave z-scores unchanged (fresh policies in benchmarks)."""
        zeros, ones = np.zeros(dim, np.float32), np.ones(dim, np.float32)
        return cls(zeros, ones, -ones, ones)

    def to_json(self) -> dict[str, list[float]]:
        return {f: getattr(self, f).astype(float).tolist() for f in FIELDS}


@dataclass(frozen=True)
class NormStats:
    state: Stats
    actions: Stats

    def save(self, path: str | Path) -> None:
        path = Path(path)
        payload = {"norm_stats": {"state": self.state.to_json(), "actions": self.actions.to_json()}}
        write_text_atomic(path, json.dumps(payload, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        path = Path(path)
        if not path.is_file():
            raise NormStatsError(f"{path}: norm stats file not found")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise NormStatsError(f"{path}: not valid JSON: {e}") from e
        body = raw.get("norm_stats") if isinstance(raw, dict) else None
        if not isinstance(body, dict):
            raise NormStatsError(
                f"{path}: expected a top-level 'norm_stats' mapping (openpi format)"
            )
        return cls(state=_stats(body, "state", path), actions=_stats(body, "actions", path))


def _stats(body: dict, key: str, path: Path) -> Stats:
    entry = body.get(key)
    if not isinstance(entry, dict):
        raise NormStatsError(f"{path}: norm_stats lacks '{key}'")
    arrays = {}
    for field in FIELDS:
        if field not in entry:
            raise NormStatsError(f"{path}: norm_stats.{key} lacks '{field}'")
        try:
            value = np.asarray(entry[field], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise NormStatsError(
                f"{path}: norm_stats.{key}.{field} is not a list of numbers"
            ) from e
        if value.ndim != 1 or not np.isfinite(value).all():
            raise NormStatsError(f"{path}: norm_stats.{key}.{field} must be a finite 1-d list")
        arrays[field] = value
    dims = {f: len(v) for f, v in arrays.items()}
    if len(set(dims.values())) != 1:
        raise NormStatsError(f"{path}: norm_stats.{key} fields differ in length: {dims}")
    if (arrays["std"] < 0).any():
        raise NormStatsError(f"{path}: norm_stats.{key}.std has negative entries")
    return Stats(**arrays)


# --- computing them: `ript norm-stats` -----------------------------------------------------
# Two passes over the episodes, one episode at a time, so nothing is held in memory beyond
# one episode: the first merges per-episode moments (Chan et al.'s parallel mean/variance)
# and finds each dimension's range; the second fills a fixed-range histogram per dimension,
# from which q01/q99 are read: the bin that holds the inverted-CDF quantile (the
# ceil(q n)-th smallest value), interpolated inside it, so the error is at most one bin.
# Dimensions whose spread is below `min_std` are reported and guarded (std 1, q01/q99 at
# mean -/+ 1), so normalising never divides by ~0.


@dataclass
class _Moments:
    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        n, mean = len(x), x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            self.low, self.high = x.min(0), x.max(0)
            return
        if x.shape[1] != len(self.mean):
            raise ValueError(f"width changed from {len(self.mean)} to {x.shape[1]} dims")
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total
        self.low, self.high = np.minimum(self.low, x.min(0)), np.maximum(self.high, x.max(0))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count)


@dataclass
class _Histogram:
    low: np.ndarray
    high: np.ndarray
    bins: int
    counts: np.ndarray = dataclass_field(init=False)

    def __post_init__(self) -> None:
        self.width = np.where(self.high > self.low, (self.high - self.low) / self.bins, 1.0)
        self.counts = np.zeros((len(self.low), self.bins), dtype=np.int64)

    def add(self, x: np.ndarray) -> None:
        idx = np.clip(((x - self.low) / self.width).astype(np.int64), 0, self.bins - 1)
        for d in range(x.shape[1]):
            self.counts[d] += np.bincount(idx[:, d], minlength=self.bins)

    def quantile(self, q: float) -> np.ndarray:
        out = np.empty(len(self.low))
        for d, counts in enumerate(self.counts):
            cum = np.cumsum(counts)
            target = q * cum[-1]
            b = int(np.searchsorted(cum, target, side="left"))
            before = cum[b - 1] if b > 0 else 0
            frac = (target - before) / counts[b] if counts[b] else 0.0
            out[d] = self.low[d] + (b + frac) * self.width[d]
        return out


def _arrays(shards: list[Path], state_keys: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    from ript.data.episode_store import EpisodeReader  # the store imports the env layer

    for shard in shards:
        with EpisodeReader(shard) as reader:
            for ep in reader:
                try:
                    parts = list(ep.observation(state_keys).values())
                except KeyError as e:
                    raise ValueError(f"{shard}: {e.args[0]}") from None
                state = np.concatenate(parts, axis=-1).astype(np.float64)
                yield state, ep.actions.astype(np.float64)


def compute_norm_stats(
    shards: list[str | Path],
    state_keys: list[str],
    *,
    bins: int = 5000,
    min_std: float = 1e-6,
) -> tuple[NormStats, dict[str, list[int]]]:
    """Norm stats of `shards` and, per field, the guarded (near-constant) dimensions."""
    paths = [Path(s) for s in shards]
    if not paths:
        raise ValueError("no episode shards given")
    moments = {"state": _Moments(), "actions": _Moments()}
    for state, actions in _arrays(paths, state_keys):
        moments["state"].add(state)
        moments["actions"].add(actions)
    hists = {k: _Histogram(m.low, m.high, bins) for k, m in moments.items()}
    for state, actions in _arrays(paths, state_keys):
        hists["state"].add(state)
        hists["actions"].add(actions)
    result, guarded = {}, {}
    for key, m in moments.items():
        std = m.std
        q01, q99 = hists[key].quantile(0.01), hists[key].quantile(0.99)
        flat = np.flatnonzero(std < min_std)
        guarded[key] = flat.tolist()
        if len(flat):
            log.warning(
                "%s dims %s have (near-)zero spread (std < %g); guarded: std=1, q01/q99=mean-/+1",
                key,
                guarded[key],
                min_std,
            )
            std[flat] = 1.0
            q01[flat], q99[flat] = m.mean[flat] - 1.0, m.mean[flat] + 1.0
        result[key] = Stats(*(a.astype(np.float32) for a in (m.mean, std, q01, q99)))
    return NormStats(result["state"], result["actions"]), guarded
