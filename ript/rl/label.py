"""`ript label`: rollout shards -> a parquet table of RLOO advantages and CFG labels.

One row per episode (granularity `episode`) or per step span (`window`, `timestep`) with the
episode's reward and advantage, the span's advantage, `w_pos`, `is_positive` (A > 0), the
group and the shard/demo it came from. Groups dropped by dynamic sampling are left out;
the table's parquet metadata and the printed summary say how many were kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ript.data.episode_store import read_index
from ript.envs.suites import max_episode_length
from ript.files import atomic_output, claim
from ript.rl.advantages import (
    REWARDS,
    informative_groups,
    positive_weights,
    rloo_advantages,
    span_advantage,
    spans,
)
from ript.settings import Labels
from ript.tracking import Tracker

EPISODE_COLUMNS = [  # copied from the episode index
    "shard",
    "demo",
    "episode_index",
    "group_id",
    "task_id",
    "init_state_index",
    "rollout_index",
    "length",
]
SPAN_COLUMNS = ["step_start", "step_stop", "reward", "episode_advantage", "advantage"]
LABEL_COLUMNS = EPISODE_COLUMNS + SPAN_COLUMNS + ["w_pos", "is_positive"]
METADATA_KEY = b"ript_label_summary"


@dataclass
class LabelSummary:
    episodes: int
    groups: int
    groups_kept: int
    episodes_kept: int
    rows: int
    positive_rows: int
    mean_reward: float

    def line(self) -> str:
        return (
            f"groups kept {self.groups_kept}/{self.groups} (dynamic sampling), episodes kept "
            f"{self.episodes_kept}/{self.episodes}, rows {self.rows} "
            f"({self.positive_rows} positive), mean reward {self.mean_reward:.3f}"
        )


def read_rollouts(shards: list[str | Path]) -> pd.DataFrame:
    """The episode indexes of all shards; a group split over two shards is an error."""
    frames = []
    for shard in shards:
        index = read_index(shard)
        index["shard"] = str(shard)
        frames.append(index)
    episodes = pd.concat(frames, ignore_index=True)
    split = episodes.groupby("group_id")["shard"].nunique()
    if (split > 1).any():
        group = split[split > 1].index[0]
        raise ValueError(
            f"group {group!r} appears in several shards; an RLOO group must be collected "
            "in one shard"
        )
    return episodes


def label_rollouts(episodes: pd.DataFrame, labels: Labels) -> tuple[pd.DataFrame, LabelSummary]:
    """The label table for the reward, weights, granularity and dynamic sampling of `labels`."""
    horizon = max_episode_length(labels.suite, labels.max_episode_length)
    rewards = REWARDS[labels.reward](episodes, horizon)
    groups = episodes["group_id"].to_numpy()
    advantages = rloo_advantages(rewards, groups)
    keep = (
        informative_groups(rewards, groups)
        if labels.dynamic_sampling
        else np.ones(len(rewards), dtype=bool)
    )
    rows = []
    for i in episodes.index[keep]:
        ep = episodes.loc[i]
        length = int(ep["length"])
        for start, stop in spans(length, labels.label_granularity, labels.window_size):
            rows.append(
                {
                    **{k: ep[k] for k in EPISODE_COLUMNS},
                    "step_start": start,
                    "step_stop": stop,
                    "reward": rewards[i],
                    "episode_advantage": advantages[i],
                    "advantage": span_advantage(
                        advantages[i],
                        length,
                        stop,
                        labels.label_granularity,
                        labels.label_discount,
                    ),
                }
            )
    table = pd.DataFrame(rows, columns=EPISODE_COLUMNS + SPAN_COLUMNS)
    table["w_pos"] = positive_weights(
        table["advantage"].to_numpy(),
        labels.weight_mode,
        normalization=labels.advantage_normalization,
        temperature=labels.advantage_temperature,
        clip_quantile=labels.advantage_clip_quantile,
    )
    table["is_positive"] = table["advantage"] > 0
    summary = LabelSummary(
        episodes=len(episodes),
        groups=int(pd.Series(groups).nunique()),
        groups_kept=int(pd.Series(groups[keep]).nunique()),
        episodes_kept=int(keep.sum()),
        rows=len(table),
        positive_rows=int(table["is_positive"].sum()),
        mean_reward=float(rewards.mean()) if len(rewards) else 0.0,
    )
    return table, summary


def write_labels(table: pd.DataFrame, summary: LabelSummary, out: str | Path) -> None:
    """Atomic parquet write; the summary goes into the file's metadata. Shard paths are
    stored relative to the table's directory, so a results folder can be moved whole."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    here = out.resolve().parent
    table = table.assign(shard=[os.path.relpath(Path(s).resolve(), here) for s in table["shard"]])
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = {**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(asdict(summary)).encode()}
    with atomic_output(out) as tmp:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)


def read_labels(path: str | Path) -> tuple[pd.DataFrame, LabelSummary]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label table not found")
    try:
        arrow = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise ValueError(f"{path}: not a readable parquet file: {e}") from e
    missing = [c for c in LABEL_COLUMNS if c not in arrow.column_names]
    if missing or METADATA_KEY not in (arrow.schema.metadata or {}):
        raise ValueError(f"{path}: not a ript label table (missing {missing or 'metadata'})")
    summary = LabelSummary(**json.loads(arrow.schema.metadata[METADATA_KEY]))
    table = arrow.to_pandas()
    table["shard"] = [os.path.normpath(path.parent / s) for s in table["shard"]]
    return table, summary


def label(
    labels: Labels, shards: list[str | Path], out: str | Path, tracker: Tracker | None = None
) -> LabelSummary:
    """Label the shards' episodes into `out`; the summary and the rows' advantages also go
    to `tracker` (label/...)."""
    with claim(out):
        table, summary = label_rollouts(read_rollouts(shards), labels)
        write_labels(table, summary, out)
    if tracker is not None:
        tracker.log({f"label/{k}": v for k, v in asdict(summary).items()})
        tracker.histogram("label/advantage", table["advantage"].to_numpy())
    return summary
