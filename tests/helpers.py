"""Helpers the test modules share: run the CLI, build episodes, metrics files and fake
checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from ript.checkpoint import CHECKPOINT_FILES, POLICY_FILE
from ript.envs.episode import Episode, EpisodeSpec
from ript.evaluation.metrics import success_summary


def run_ript(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "ript.cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
        **kw,
    )


def make_episode(i: int, t: int = 6, cameras: bool = True, success: bool = True) -> Episode:
    rng = np.random.default_rng(i)
    obs = {
        "state": rng.normal(size=(t, 8)).astype(np.float32),
        "ee_pos": rng.normal(size=(t, 3)).astype(np.float32),
        "ee_ori": rng.normal(size=(t, 3)).astype(np.float32),
        "gripper_states": rng.normal(size=(t, 2)).astype(np.float32),
        "joint_states": rng.normal(size=(t, 7)).astype(np.float32),
        "privileged_object_state": rng.normal(size=(t, 28)).astype(np.float32),
    }
    if cameras:
        obs["agentview_rgb"] = rng.integers(0, 255, size=(t, 16, 16, 3), dtype=np.uint8)
        obs["eye_in_hand_rgb"] = rng.integers(0, 255, size=(t, 16, 16, 3), dtype=np.uint8)
    dones = np.zeros(t, dtype=np.uint8)
    dones[-1] = 1
    spec = EpisodeSpec(i, "libero_object", 3, 7, i % 2, 100 + i, 55, "libero_object/task3/init7")
    return Episode(
        spec=spec,
        language="pick up the bbq sauce and place it in the basket",
        obs=obs,
        actions=rng.uniform(-1, 1, size=(t, 7)).astype(np.float32),
        rewards=np.eye(t, dtype=np.float32)[-1] * float(success),
        dones=dones,
        states=rng.normal(size=(t, 110)),
        success=success,
    )


def episodes(successes: list[bool]) -> list[dict]:
    return [
        {"task": i % 2, "init_state": i // 2, "rollout": 0, "success": s, "length": 10}
        for i, s in enumerate(successes)
    ]


def write_metrics(path, successes, training=None, cfg_scale=None, with_episodes=True, policy=""):
    m = {
        "overall": {**success_summary(sum(successes), len(successes)), "mean_episode_length": 10},
        "per_task": {"0": {"success_rate": 0.5}, "1": {"success_rate": 0.5}},
        "inference": {"mean_ms_per_chunk": 1.0},
        "settings": {"training": training, "cfg_scale": cfg_scale, "policy": str(policy)},
    }
    if with_episodes:
        m["episodes"] = episodes(successes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(m))
    return str(path)


def fake_policy(path, cfg_scale=1.0):
    path.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        (path / name).write_text(name)
    (path / POLICY_FILE).write_text(json.dumps({"num_steps": 10, "cfg_scale": cfg_scale}))
    return path


def moving_frames(t: int) -> np.ndarray:
    """A static shaded scene with a bright square moving over it, (t, 32, 32, 3)."""
    y, x = np.mgrid[0:32, 0:32]
    scene = np.stack([x * 7, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)
    frames = np.repeat(scene[None], t, axis=0)
    for i in range(t):
        frames[i, i % 24 : i % 24 + 8, 4:12] = 250
    return frames
