"""`ript evaluate`: roll a policy out on the evaluation init states -> metrics.json.

The policy is a checkpoint directory (a trained or the base policy) or the scripted expert.
metrics.json holds successes, n and the success rate with a 95% Wilson interval, overall and
per task, every episode's outcome (task, init state, rollout: the key that pairs two policies'
evaluations in the sweep table), the mean episode length, the mean inference time per policy
call and per chunk, and the exact settings of the run; the rollouts themselves can be kept as a
shard, and the first `n_video` episodes as videos (in videos/ beside metrics.json, or in a
folder per policy under `video_dir`).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ript.checkpoint import SETTINGS_FILE
from ript.config import SamplingSwitches, sampling_switches
from ript.data.episode_store import write_shard
from ript.envs.episode import Episode, RolloutPolicy
from ript.envs.pool import RolloutStats
from ript.envs.video import write_videos
from ript.evaluation.metrics import success_summary
from ript.files import claim, write_text_atomic
from ript.rollouts import load_rollout_policy, parse_init_states, run_rollouts
from ript.settings import Evaluation, Expert, Inference, Simulation, Videos
from ript.tracking import Tracker, log_videos, rollout_values


def episode_key(episode: Episode) -> dict[str, Any]:
    """What pairs an episode with another policy's run of it (`paired_counts`)."""
    s = episode.spec
    return {"task": s.task_id, "init_state": s.init_state_index, "rollout": s.rollout_index}


def episode_metrics(episodes: list[Episode]) -> dict[str, Any]:
    """Overall and per-task success with Wilson intervals, and mean episode lengths."""

    def block(eps: list[Episode]) -> dict[str, Any]:
        return {
            **success_summary(sum(e.success for e in eps), len(eps)),
            "mean_episode_length": float(np.mean([e.length for e in eps])) if eps else 0.0,
        }

    tasks = sorted({e.spec.task_id for e in episodes})
    return {
        "overall": block(episodes),
        "per_task": {str(t): block([e for e in episodes if e.spec.task_id == t]) for t in tasks},
        "episodes": [
            {
                **episode_key(e),
                "success": bool(e.success),
                "length": e.length,
            }
            for e in sorted(episodes, key=lambda e: e.spec.episode_index)
        ],
    }


def video_entries(written: list[tuple[Episode, Path]]) -> list[dict[str, Any]]:
    """Each saved video with its episode, so a report can pick a success and a failure."""
    return [{**episode_key(e), "success": bool(e.success), "path": str(p)} for e, p in written]


def rollout_metrics(episodes: list[Episode], stats: RolloutStats, policy: Any) -> dict[str, Any]:
    """`episode_metrics`, the policy's inference time and the pool's throughput: what an
    evaluation's metrics.json and a collection's tracked values share."""
    calls = getattr(policy, "inference_calls", 0)
    seconds = getattr(policy, "inference_seconds", 0.0)
    chunks = getattr(policy, "inference_chunks", 0)
    return {
        **episode_metrics(episodes),
        "inference": {
            "calls": calls,
            "mean_ms_per_call": 1e3 * seconds / calls if calls else None,
            "mean_ms_per_chunk": 1e3 * seconds / chunks if chunks else None,
        },
        "env": {
            "env_steps": stats.env_steps,
            "wall_s": stats.wall_seconds,
            "worker_restarts": stats.worker_restarts,
        },
    }


def policy_settings(policy: Any, policy_dir: str) -> dict[str, Any]:
    """The sampling settings (the scale the policy was loaded to sample at, PI0_* switches
    included), and the training run's (mode, cond_mode, alpha_uncond)."""
    model = getattr(policy, "model", None)
    if model is None:
        return {"policy_kind": "expert", "cfg_scale": None, "dual": False}
    scale = policy.cfg_scale
    trained = Path(policy_dir) / SETTINGS_FILE
    training = json.loads(trained.read_text()) if trained.is_file() else None
    return {
        "training": training,
        "policy_kind": "checkpoint",
        "cond_mode": model.config.cond_mode,
        "label_scheme": model.config.label_scheme,
        "cfg_scale": scale,
        "dual": scale != 1.0,
        "num_steps": policy.settings.num_steps,
    }


# openpi's examples/libero/main.py seeds every task's simulator with 7
OPENPI_SEED = 7


def evaluate(
    sim: Simulation,
    videos: Videos,
    evaluation: Evaluation,
    *,
    policy_name: str,
    out: str | Path,
    expert: Expert | None = None,
    inference: Inference | None = None,
    cfg_scale: float | None = None,
    init_states: str = "eval",
    shard: str | Path | None = None,
    progress: bool = True,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Run the evaluation and write metrics.json to `out` (and the episodes to `shard`);
    `policy_name` 'expert' evaluates the scripted demonstrator (`expert` settings), else a
    checkpoint directory (`inference` settings). `tracker` gets the rollouts/ values and the
    videos (`ript.tracking`)."""
    init_range = parse_init_states(init_states, sim)
    with claim(out), claim(shard) if shard is not None else contextlib.nullcontext():
        switches = sampling_switches()  # read once: the policy samples, metrics.json records
        policy = load_rollout_policy(
            policy_name, expert=expert, inference=inference, cfg_scale=cfg_scale, switches=switches
        )
        return _evaluate(
            sim,
            videos,
            evaluation,
            policy,
            policy_name=policy_name,
            out=out,
            switches=switches,
            init_range=init_range,
            shard=shard,
            progress=progress,
            tracker=tracker,
        )


def _evaluate(
    sim: Simulation,
    videos: Videos,
    evaluation: Evaluation,
    policy: RolloutPolicy,
    *,
    policy_name: str,
    out: str | Path,
    switches: SamplingSwitches,
    init_range: tuple[int, int],
    shard: str | Path | None,
    progress: bool,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    reset_seed = OPENPI_SEED if evaluation.eval_protocol == "openpi" else None
    episodes, stats = run_rollouts(
        sim,
        policy,
        init_states=init_range,
        rollouts_per_init=evaluation.eval_rollouts_per_init,
        reset_seed=reset_seed,
        videos=videos,
        progress=progress,
        keep_observations=shard is not None,
        desc=f"evaluate {Path(out).parent.name}",
    )
    video_dir = Path(out).parent / "videos"
    if videos.video_dir:  # one folder per policy: the grid's evaluations share file names
        video_dir = Path(videos.video_dir) / re.sub(r"[^\w.=-]+", "_", policy.policy_id)
    written = write_videos(episodes, video_dir, videos.video_fps)
    metrics = {
        **rollout_metrics(episodes, stats, policy),
        "settings": {
            "policy": str(policy_name),
            "policy_id": policy.policy_id,
            **policy_settings(policy, policy_name),
            "env_switches": dict(switches.set_variables),
            "seed": sim.seed,
            "suite": sim.suite,
            "tasks": list(sim.tasks),
            "init_states": list(init_range),
            "rollouts_per_init": evaluation.eval_rollouts_per_init,
            "max_episode_length": sim.max_episode_length,
            "replan_steps": sim.replan_steps,
            "eval_protocol": evaluation.eval_protocol,
            "hard_reset": sim.hard_reset,
            "reset_seed": reset_seed,
        },
        "videos": video_entries(written),
    }
    if shard is not None:
        write_shard(shard, episodes, policy_id=policy.policy_id, frame_codec=sim.frame_storage)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(metrics, indent=2) + "\n")
    if tracker is not None:
        tracker.log(rollout_values(metrics))
        log_videos(tracker, metrics["videos"], videos.video_fps)
    return metrics
