"""What a job needs from a cluster node, from the experiment config: memory and GPUs.

The estimates are upper bounds built from measured parts, so that a SLURM job asks for what
its config will use rather than a fixed size that is too small at full scale and wasteful
on the CPU default:

- a LIBERO simulator worker holds ~1.8 GiB (`ript.envs.pool.WORKER_MEMORY_BYTES`);
- a collected step holds its camera frames (uint8), and writing a shard builds it in memory
  first (gzip keeps ~60% of camera frames);
- loading a checkpoint holds its weights once more on the CPU; a training job's rank 0
  gathers whole fp32 weights, both AdamW moments and the EMA to the CPU for a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ript.envs.pool import WORKER_MEMORY_BYTES
from ript.envs.suites import max_episode_length

MB = 2**20
BASE_MB = 2000  # Python, torch, transformers and MuJoCo imported
PRESET_PARAMETERS = {"tiny": 0.7e6, "small": 64e6, "pi0": 3.5e9}


def model_parameters(config: dict[str, Any]) -> float:
    """Parameters of the policy the experiment trains: its preset's, or those a pretrained
    checkpoint's weights file holds (at 2 bytes each, the smallest dtype it could use)."""
    path = config["pretrained_path"]
    if path is not None and (Path(path) / "model.safetensors").is_file():
        return (Path(path) / "model.safetensors").stat().st_size / 2
    return PRESET_PARAMETERS[config["preset"]]


def step_bytes(config: dict[str, Any]) -> int:
    """One stored step: both camera frames when rendered, plus low-dim data."""
    frames = 2 * config["image_size"] ** 2 * 3 if config["cameras"] else 0
    return frames + 4096


def rollout_memory_mb(config: dict[str, Any], episodes: int, store: bool) -> int:
    """A collection or evaluation job: the workers, the policy, and (when stored) the
    episodes and the shard built from them."""
    workers = config["num_parallel_envs"] * WORKER_MEMORY_BYTES
    policy = 2 * 4 * model_parameters(config)
    steps = episodes * max_episode_length(config["suite"], config["max_episode_length"])
    data = 1.6 * steps * step_bytes(config) if store else 0
    return int(BASE_MB + (workers + policy + data) / MB)


def training_memory_mb(config: dict[str, Any]) -> int:
    """A training job: the model loaded on the CPU, then (rank 0, at every checkpoint) fp32
    weights, two AdamW moments and the EMA gathered whole."""
    copies = 1 + 1 + 2 + (1 if config["ema_decay"] is not None else 0)
    return int(BASE_MB + copies * 4 * model_parameters(config) / MB)


def job_memory_mb(config: dict[str, Any], rule: str) -> int:
    """mem_mb of one job of `rule` (the rules of workflow/rules)."""
    tasks, (start, stop) = 1, config["train_init_states"]
    chunk = min(config["collect_init_chunk"], stop - start)
    if rule == "demos":
        return rollout_memory_mb(config, tasks * (stop - start) * config["demos_per_init"], True)
    if rule == "collect":
        return rollout_memory_mb(config, tasks * chunk * config["rollouts_per_init"], True)
    if rule in ("evaluate", "evaluate_base", "evaluate_selection", "evaluate_chosen"):
        return rollout_memory_mb(config, 0, False)
    if rule in ("bootstrap", "train"):
        return training_memory_mb(config)
    return BASE_MB
