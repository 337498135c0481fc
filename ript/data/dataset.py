"""Training samples from episode shards: the observation at step t and the action chunk
that follows it (pi0's action-chunk targets).

A chunk that runs past the episode's end repeats the last action, the usual padding of
LeRobot and openpi LIBERO data; the flow-matching loss counts those steps like any other.

Actions and prompts are held in memory. Observations are read an episode at a time when a
batch first needs them and kept: all of them when the set's decoded camera frames fit in
`frames_in_memory_bytes` (a vision SFT step otherwise spends most of its time decoding the 128
frames of a two-camera batch of 64: 383 ms a step on an H200 whose GPU sat half idle), else
only the low-dim arrays, through a cache of `cache_episodes` episodes, with camera frames read
one at a time for every batch (each is its own chunk in a shard), so memory stays bounded
whatever the number and size of the episodes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ript.data.episode_store import IMAGE_KEYS, EpisodeReader

log = logging.getLogger(__name__)


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
        frames_in_memory_bytes: int = 0,
    ) -> None:
        """`episodes`: only these (shard, demo) pairs (e.g. those a label table keeps)."""
        self.chunk_size = chunk_size
        self.obs_keys = obs_keys
        self.camera_keys = [k for k in obs_keys if k in IMAGE_KEYS]
        self.lowdim_keys = [k for k in obs_keys if k not in IMAGE_KEYS]
        self.cache_episodes = cache_episodes
        self._readers: dict[str, EpisodeReader] = {}
        self._held: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
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
        self.frame_bytes = self._frame_bytes()
        fits = self.frame_bytes <= frames_in_memory_bytes
        self.frames_in_memory = bool(self.camera_keys) and fits
        if self.camera_keys:
            log.info(
                "camera frames of %d episodes: %.2f GiB decoded, %s",
                len(self.episodes),
                self.frame_bytes / 2**30,
                "held in memory once read"
                if self.frames_in_memory
                else f"read per batch (more than the {frames_in_memory_bytes / 2**30:.2f} GiB "
                "allowed in memory)",
            )

    def __len__(self) -> int:
        return len(self.index)

    def _reader(self, shard: str) -> EpisodeReader:
        if shard not in self._readers:
            self._readers[shard] = EpisodeReader(shard)
        return self._readers[shard]

    def _frame_bytes(self) -> int:
        """Decoded size of every camera frame of the set, from one frame per camera."""
        if not self.camera_keys:
            return 0
        shard, demo = self.episodes[0].source
        reader = self._reader(shard)
        per_step = sum(reader.read_frame(demo, key, 0).nbytes for key in self.camera_keys)
        return per_step * len(self.index)

    def _held_of(self, e: int) -> dict[str, np.ndarray]:
        """Episode `e`'s whole observation arrays that stay in memory: low-dim ones always,
        camera frames when the set's frames fit (then nothing is ever evicted)."""
        if e in self._held:
            self._held.move_to_end(e)
            return self._held[e]
        shard, demo = self.episodes[e].source
        reader = self._reader(shard)
        held = reader.read_lowdim(demo, self.lowdim_keys)
        if self.frames_in_memory:
            held |= {key: reader.read_frames(demo, key) for key in self.camera_keys}
        self._held[e] = held
        while not self.frames_in_memory and len(self._held) > self.cache_episodes:
            self._held.popitem(last=False)
        return held

    def batch(self, rows: np.ndarray) -> dict:
        """obs (dict of stacked arrays), prompts, actions (B, H, A)."""
        obs: dict[str, list[np.ndarray]] = {k: [] for k in self.obs_keys}
        prompts, chunks = [], []
        for e, t in self.index[rows]:
            ep = self.episodes[e]
            held = self._held_of(e)
            shard, demo = ep.source
            for key in self.obs_keys:
                if key in held:
                    obs[key].append(held[key][t])
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
