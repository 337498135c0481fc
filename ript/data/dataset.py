"""Training samples from episode shards: the observation at step t and the action chunk
that follows it (pi0's action-chunk targets).

A chunk that runs past the episode's end repeats the last action, the usual padding of
LeRobot and openpi LIBERO data; the flow-matching loss counts those steps like any other.

Only actions and prompts are held in memory. Observations are read when a batch needs them:
camera frames one at a time (each is its own gzip chunk in a shard), low-dim arrays a whole
episode at a time through a cache of `cache_episodes` episodes, so memory stays bounded
whatever the number and size of the episodes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ript.data.episode_store import IMAGE_KEYS, EpisodeReader


class NoSuccessfulEpisodes(ValueError):
    """Every episode was left out for failing."""


@dataclass
class _Episode:
    actions: np.ndarray
    prompt: str
    source: tuple[str, str]  # (shard, demo)


class ChunkDataset:
    """All (episode, step) pairs of the given shards."""

    def __init__(
        self,
        shards: list[str | Path],
        *,
        chunk_size: int,
        obs_keys: list[str],
        only_successful: bool = False,
        episodes: set[tuple[str, str]] | None = None,
        cache_episodes: int = 256,
    ) -> None:
        """`episodes`: only these (shard, demo) pairs (e.g. those a label table keeps)."""
        self.chunk_size = chunk_size
        self.obs_keys = obs_keys
        self.lowdim_keys = [k for k in obs_keys if k not in IMAGE_KEYS]
        self.cache_episodes = cache_episodes
        self._readers: dict[str, EpisodeReader] = {}
        self._lowdim: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.episodes: list[_Episode] = []
        seen = unsuccessful = 0
        for shard in shards:
            reader = self._reader(str(shard))
            for demo in reader.demos:
                if episodes is not None and (str(shard), demo) not in episodes:
                    continue
                seen += 1
                if only_successful and not reader.attributes(demo).get("success", True):
                    unsuccessful += 1
                    continue
                actions, prompt, keys = reader.read_actions(demo)
                missing = [k for k in obs_keys if k != "state" and k not in keys]
                if missing:
                    raise KeyError(f"episode {demo} has no observation {missing[0]!r}; has {keys}")
                self.episodes.append(
                    _Episode(actions.astype(np.float32), prompt, (str(shard), demo))
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

    def _reader(self, shard: str) -> EpisodeReader:
        if shard not in self._readers:
            self._readers[shard] = EpisodeReader(shard)
        return self._readers[shard]

    def _lowdim_of(self, e: int) -> dict[str, np.ndarray]:
        if e in self._lowdim:
            self._lowdim.move_to_end(e)
        else:
            shard, demo = self.episodes[e].source
            self._lowdim[e] = self._reader(shard).read_lowdim(demo, self.lowdim_keys)
            while len(self._lowdim) > self.cache_episodes:
                self._lowdim.popitem(last=False)
        return self._lowdim[e]

    def batch(self, rows: np.ndarray) -> dict:
        """obs (dict of stacked arrays), prompts, actions (B, H, A)."""
        obs: dict[str, list[np.ndarray]] = {k: [] for k in self.obs_keys}
        prompts, chunks = [], []
        for e, t in self.index[rows]:
            ep = self.episodes[e]
            lowdim = self._lowdim_of(e)
            shard, demo = ep.source
            for key in self.obs_keys:
                if key in lowdim:
                    obs[key].append(lowdim[key][t])
                else:
                    obs[key].append(self._reader(shard).read_frame(demo, key, t))
            steps = np.arange(t, t + self.chunk_size)
            chunks.append(ep.actions[np.minimum(steps, len(ep.actions) - 1)])
            prompts.append(ep.prompt)
        return {
            "obs": {k: np.stack(v) for k, v in obs.items()},
            "prompts": prompts,
            "actions": np.stack(chunks),
        }
