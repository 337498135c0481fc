"""Synthetic rollout shards (no simulator): K episodes per group with chosen successes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helpers import make_episode

from ript.data.episode_store import write_shard


def write_rollouts(path: Path, successes: dict[str, list[bool]], length: int = 6) -> Path:
    """One shard; `successes` maps a group id to the success of each of its K rollouts."""
    episodes = []
    for g, (group, outcomes) in enumerate(successes.items()):
        for k, success in enumerate(outcomes):
            ep = make_episode(len(episodes), t=length + k, cameras=False, success=success)
            spec = dataclasses.replace(ep.spec, group_id=group, init_state_index=g, rollout_index=k)
            episodes.append(dataclasses.replace(ep, spec=spec))
    write_shard(path, episodes, policy_id="synthetic")
    return path
