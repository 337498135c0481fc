"""Training samples from episode shards: the observation at step t and the action chunk
that follows it (pi0's action-chunk targets).

A chunk that runs past the episode's end repeats the last action, the usual padding of
LeRobot and openpi LIBERO data; `action_is_pad` marks those steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ript.data.episode_store import EpisodeReader


class NoSuccessfulEpisodes(ValueError):
    """Every episode was left out for failing."""


@dataclass
class _Episode:
    obs: dict[str, np.ndarray]
    actions: np.ndarray
    prompt: str
    attrs: dict
    source: tuple[str, str]  # (shard, demo)


class ChunkDataset:
    """All (episode, step) pairs of the given shards, held in memory."""

    def __init__(
        self,
        shards: list[str | Path],
        *,
        chunk_size: int,
        obs_keys: list[str],
        only_successful: bool = False,
        episodes: set[tuple[str, str]] | None = None,
    ) -> None:
        """`episodes`: only these (shard, demo) pairs (e.g. those a label table keeps)."""
        self.chunk_size = chunk_size
        self.episodes: list[_Episode] = []
        seen = unsuccessful = 0
        for shard in shards:
            with EpisodeReader(shard) as reader:
                for ep in reader:
                    if episodes is not None and (str(shard), ep.demo) not in episodes:
                        continue
                    seen += 1
                    if only_successful and not ep.attrs.get("success", True):
                        unsuccessful += 1
                        continue
                    self.episodes.append(
                        _Episode(
                            ep.observation(obs_keys),
                            ep.actions.astype(np.float32),
                            str(ep.attrs.get("language", "")),
                            ep.attrs,
                            (str(shard), ep.demo),
                        )
                    )
        if not self.episodes:
            names = [str(s) for s in shards]
            if unsuccessful:
                raise NoSuccessfulEpisodes(
                    f"no episodes to train on in {names}: none of their {seen} episodes "
                    "succeeded and only successful ones are used"
                )
            raise ValueError(f"no episodes to train on in {names}: they hold none")
        self.index = np.array(
            [(e, t) for e, ep in enumerate(self.episodes) for t in range(len(ep.actions))]
        )

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: np.ndarray) -> dict:
        """obs (dict of stacked arrays), prompts, actions (B, H, A), action_is_pad (B, H)."""
        obs: dict[str, list[np.ndarray]] = {}
        prompts, chunks, pads = [], [], []
        for e, t in self.index[rows]:
            ep = self.episodes[e]
            for key, value in ep.obs.items():
                obs.setdefault(key, []).append(value[t])
            steps = np.arange(t, t + self.chunk_size)
            pads.append(steps >= len(ep.actions))
            chunks.append(ep.actions[np.minimum(steps, len(ep.actions) - 1)])
            prompts.append(ep.prompt)
        return {
            "obs": {k: np.stack(v) for k, v in obs.items()},
            "prompts": prompts,
            "actions": np.stack(chunks),
            "action_is_pad": np.stack(pads),
        }
