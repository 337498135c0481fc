"""The validated config as frozen sections, one per concern, built in one place.

A step takes the sections it uses, not the config dict, so its signature says what it depends
on; the Snakemake rules pass each job exactly the keys of its step's sections
(`workflow/rules/common.smk`), so a key a step reads cannot be left out of its rule. Keys that
only the workflow reads (the grid, the rounds, the selection schedule, how episodes are split
into jobs) belong to no section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Self


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class Section:
    @classmethod
    def config_keys(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Self:
        """The section's keys of a validated config (lists become tuples)."""
        return cls(**{key: _frozen(config[key]) for key in cls.config_keys()})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Simulation(Section):
    """Which episodes a rollout step runs and how each is simulated."""

    suite: str
    tasks: tuple[int, ...]
    cameras: bool
    image_size: int
    frame_storage: str
    privileged_object_state: bool
    num_steps_wait: int
    max_episode_length: int | None
    replan_steps: int
    hard_reset: bool
    use_init_states: bool
    train_init_states: tuple[int, int]
    eval_init_states: tuple[int, int]
    num_parallel_envs: int
    env_create_retries: int
    worker_timeout_s: float
    rollout_engine: str
    max_wait_ms: float
    seed: int


@dataclasses.dataclass(frozen=True)
class Videos(Section):
    """Which episodes a rollout step records, and how."""

    n_video: int
    video_dir: str | None
    render_source: str
    video_fps: int


@dataclasses.dataclass(frozen=True)
class Expert(Section):
    """The scripted demonstrator's noise and grasp offset."""

    expert_action_noise: float
    expert_grasp_offset: float


@dataclasses.dataclass(frozen=True)
class Inference(Section):
    """Where and how a policy checkpoint runs in a rollout step."""

    device: str
    compile: bool
    tokenizer_path: str | None


@dataclasses.dataclass(frozen=True)
class Collection(Section):
    """Rollouts per init state of a collection (the RLOO group size K)."""

    rollouts_per_init: int


@dataclasses.dataclass(frozen=True)
class Evaluation(Section):
    """Rollouts per init state of an evaluation, and whose protocol it follows."""

    eval_rollouts_per_init: int
    eval_protocol: str


@dataclasses.dataclass(frozen=True)
class Labels(Section):
    """Rewards, advantages and CFG labels of rollouts."""

    suite: str
    max_episode_length: int | None
    reward: str
    weight_mode: str
    advantage_normalization: str
    advantage_temperature: float
    advantage_clip_quantile: float
    label_granularity: str
    window_size: int
    label_discount: float
    dynamic_sampling: bool


@dataclasses.dataclass(frozen=True)
class Model(Section):
    """A fresh model and how it reads observations (camera_keys and state_keys are checked
    against cameras and privileged_object_state)."""

    preset: str
    state_keys: tuple[str, ...]
    camera_keys: tuple[str, ...]
    cameras: bool
    privileged_object_state: bool
    chunk_size: int
    max_state_dim: int
    max_action_dim: int
    normalization: str
    num_inference_steps: int
    label_scheme: str
    seed: int
    tokenizer_path: str | None


@dataclasses.dataclass(frozen=True)
class Optimisation(Section):
    """How the weights are updated, shared by the SFT bootstrap and CFG training."""

    batch_size: int
    frames_in_memory_gb: float
    warmup_steps: int
    final_lr_ratio: float
    weight_decay: float
    adam_betas: tuple[float, float]
    grad_clip_norm: float
    ema_decay: float | None
    p_uncond: float
    checkpoint_every: int
    max_nonfinite_steps: int
    device: str
    seed: int
    precision: str
    save_dtype: str
    finetune: str
    lora_rank: int
    lora_expert_rank: int
    activation_checkpointing: bool


@dataclasses.dataclass(frozen=True)
class SftSchedule(Section):
    """The SFT bootstrap's length, peak learning rate and which demonstrations it uses."""

    sft_steps: int
    sft_learning_rate: float
    sft_only_successful: bool


@dataclasses.dataclass(frozen=True)
class CfgSchedule(Section):
    """CFG training's length and peak learning rate."""

    train_steps: int
    learning_rate: float


@dataclasses.dataclass(frozen=True)
class Grid(Section):
    """The sweep's grid; a training step reads it only without --cond-mode/--alpha-uncond."""

    cond_mode: tuple[str, ...]
    alpha_uncond: tuple[float, ...]
    cfg_scale: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Tracking(Section):
    """Where a job logs besides its own files (`ript.tracking`), and the experiment it is of."""

    experiment: str
    loggers: tuple[str, ...]
    wandb_mode: str
    wandb_project: str


def section_keys(*sections: type[Section], exclude: Iterable[str] = ()) -> list[str]:
    """The config keys of `sections` in order, each once: what a rule passes its job."""
    skip, keys = set(exclude), []
    for section in sections:
        keys += [k for k in section.config_keys() if k not in skip and k not in keys]
    return keys
