"""Normalisation statistics in openpi's `norm_stats.json` format.

    {"norm_stats": {"state":   {"mean": [...], "std": [...], "q01": [...], "q99": [...]},
                    "actions": {"mean": [...], "std": [...], "q01": [...], "q99": [...]}}}

Vectors have the unpadded dimensions. pi0 normalises with z-scores
`(x - mean) / (std + 1e-6)`; the quantile mode maps q01..q99 to -1..1 (openpi's pi0-FAST).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

    def to_json(self) -> dict[str, list[float]]:
        return {f: getattr(self, f).astype(float).tolist() for f in FIELDS}


@dataclass(frozen=True)
class NormStats:
    state: Stats
    actions: Stats

    def save(self, path: str | Path) -> None:
        path = Path(path)
        payload = {"norm_stats": {"state": self.state.to_json(), "actions": self.actions.to_json()}}
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)

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
