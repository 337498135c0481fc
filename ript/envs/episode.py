"""What an episode is: its spec (everything that decides it), the policy's request at each
step, and the recorded episode; plus the seed derivation they use. A module of its own so that
the episode store, the expert, video writing, training and `Policy.act` need no worker pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part and on nothing else (not on sharding)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything that decides an episode; the same spec always gives the same rollout."""

    episode_index: int
    suite: str
    task_id: int
    init_state_index: int | None  # None: seeded random reset
    rollout_index: int  # k in 0..K-1 within its group
    seed: int  # the policy's randomness in this episode
    reset_seed: int  # the simulator's reset (shared by a group)
    group_id: str  # rollouts sharing (task, init state): the RLOO group
    record_video: bool = False


@dataclass
class PolicyRequest:
    obs: dict[str, np.ndarray]
    prompt: str
    episode: EpisodeSpec
    step: int  # policy steps already taken in this episode


class RolloutPolicy(Protocol):
    policy_id: str

    def act(self, requests: list[PolicyRequest]) -> np.ndarray:
        """Return action chunks of shape (len(requests), chunk_len, 7)."""


@dataclass
class Episode:
    spec: EpisodeSpec
    language: str
    obs: dict[str, np.ndarray]  # each (T, ...), the observation before each action
    actions: np.ndarray  # (T, 7)
    rewards: np.ndarray  # (T,)
    dones: np.ndarray  # (T,), 1 at the last step
    states: np.ndarray  # (T, S) flattened simulator state before each action
    success: bool
    frames: list[np.ndarray] | None = None

    @property
    def length(self) -> int:
        return len(self.actions)
