"""`ript collect`: roll a policy out on LIBERO and write one episode shard."""

from __future__ import annotations

import logging
from pathlib import Path

from ript.data.episode_store import write_shard
from ript.envs.episode import Episode
from ript.envs.pool import RolloutStats
from ript.envs.video import write_videos
from ript.evaluation.evaluate import rollout_metrics, video_entries
from ript.files import claim
from ript.rollouts import load_rollout_policy, parse_init_states, run_rollouts
from ript.settings import Expert, Inference, Simulation, Videos
from ript.tracking import Tracker, log_videos, rollout_values

log = logging.getLogger(__name__)


def collect(
    sim: Simulation,
    videos: Videos,
    *,
    policy_name: str,
    out: str | Path,
    rollouts_per_init: int,
    expert: Expert | None = None,
    inference: Inference | None = None,
    init_states: str = "train",
    cfg_scale: float | None = None,
    progress: bool = True,
    tracker: Tracker | None = None,
) -> tuple[list[Episode], RolloutStats]:
    """`policy_name` 'expert' rolls out the scripted demonstrator (`expert` settings), else a
    checkpoint directory (`inference` settings). `rollouts_per_init` is the config's K
    (`Collection`) or this shard's own (demonstrations), outside config validation, which
    insists on K >= 2 for RLOO. `tracker` gets what an evaluation logs (`ript.tracking`)."""
    out = Path(out)
    if rollouts_per_init < 1:
        raise ValueError(f"--rollouts-per-init {rollouts_per_init}: expected >= 1")
    init_range = parse_init_states(init_states, sim)
    with claim(out):
        policy = load_rollout_policy(
            policy_name, expert=expert, inference=inference, cfg_scale=cfg_scale
        )
        episodes, stats = run_rollouts(
            sim,
            policy,
            init_states=init_range,
            rollouts_per_init=rollouts_per_init,
            videos=videos,
            progress=progress,
            desc=f"collect {out.name}",
        )
        write_shard(out, episodes, policy_id=policy.policy_id, frame_codec=sim.frame_storage)
        video_dir = Path(videos.video_dir) if videos.video_dir else out.parent / "videos"
        written = write_videos(episodes, video_dir, videos.video_fps)
        for _, path in written:
            log.info("video: %s", path)
    if tracker is not None:
        tracker.log(rollout_values(rollout_metrics(episodes, stats, policy)))
        log_videos(tracker, video_entries(written), videos.video_fps)
    return episodes, stats
