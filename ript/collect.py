"""`ript collect`: roll a policy out on LIBERO and write one episode shard."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ript.data.episode_store import write_shard
from ript.envs.episode import Episode
from ript.envs.pool import RolloutStats
from ript.envs.video import write_videos
from ript.files import claim
from ript.rollouts import load_rollout_policy, parse_init_states, run_rollouts

log = logging.getLogger(__name__)


def collect(
    config: dict[str, Any],
    *,
    policy_name: str,
    out: str | Path,
    init_states: str = "train",
    rollouts_per_init: int | None = None,
    cfg_scale: float | None = None,
    progress: bool = True,
) -> tuple[list[Episode], RolloutStats]:
    """`rollouts_per_init` overrides the config's K for this shard (demonstrations,
    evaluation), outside config validation, which insists on K >= 2 for RLOO."""
    out = Path(out)
    if rollouts_per_init is not None and rollouts_per_init < 1:
        raise ValueError(f"--rollouts-per-init {rollouts_per_init}: expected >= 1")
    init_range = parse_init_states(init_states, config)
    with claim(out):
        policy = load_rollout_policy(policy_name, config, cfg_scale)
        episodes, stats = run_rollouts(
            config,
            policy,
            init_states=init_range,
            rollouts_per_init=rollouts_per_init or config["rollouts_per_init"],
            n_video=config["n_video"],
            progress=progress,
            desc=f"collect {out.name}",
        )
        write_shard(out, episodes, policy_id=policy.policy_id, frame_codec=config["frame_storage"])
        video_dir = Path(config["video_dir"]) if config["video_dir"] else out.parent / "videos"
        for path in write_videos(episodes, video_dir, config["video_fps"]):
            log.info("video: %s", path)
    return episodes, stats
