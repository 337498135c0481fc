"""The rollout library the steps share: which episodes to run (init-state ranges, specs), which
policy runs them (the expert or a checkpoint), the configured env pool, and their summaries.
`ript collect`, `ript demos` and `ript evaluate` are thin steps over it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ript.config import SamplingSwitches, sampling_switches
from ript.envs.episode import Episode, EpisodeSpec, RolloutPolicy, derive_seed
from ript.envs.expert import ScriptedExpert
from ript.envs.pool import EnvPool, RolloutStats, usable_workers
from ript.envs.suites import NUM_FIXED_INIT_STATES, check_suite_task, max_episode_length
from ript.gpus import egl_device_id
from ript.settings import Expert, Inference, Simulation, Videos


def parse_init_states(value: str, sim: Simulation) -> tuple[int, int]:
    """'train', 'eval' or 'START:STOP' (half-open) -> (start, stop)."""
    if value in ("train", "eval"):
        start, stop = sim.train_init_states if value == "train" else sim.eval_init_states
        return int(start), int(stop)
    try:
        start_s, stop_s = value.split(":")
        start, stop = int(start_s), int(stop_s)
    except ValueError:
        raise ValueError(
            f"--init-states {value!r}: expected 'train', 'eval' or START:STOP, e.g. 0:25"
        ) from None
    if not 0 <= start < stop:
        raise ValueError(f"--init-states {value!r}: need 0 <= START < STOP")
    if sim.use_init_states and stop > NUM_FIXED_INIT_STATES:
        raise ValueError(
            f"--init-states {value!r}: {sim.suite} has {NUM_FIXED_INIT_STATES} fixed init "
            f"states (0..{NUM_FIXED_INIT_STATES - 1}); STOP must be <= {NUM_FIXED_INIT_STATES} "
            "(or set use_init_states: false for seeded random resets)"
        )
    return start, stop


def episode_specs(
    *,
    suite: str,
    tasks: list[int],
    init_states: tuple[int, int],
    rollouts_per_init: int,
    seed: int,
    use_init_states: bool,
    n_video: int = 0,
    reset_seed: int | None = None,
) -> list[EpisodeSpec]:
    """K rollouts per (task, init state); the K share a group id and a reset.

    With fixed init states the group starts from init state i; with random resets it starts
    from the placement drawn with the group's reset seed, so an RLOO group always shares
    its start either way. `reset_seed` seeds every reset alike (openpi's env.seed(7)).
    """
    specs = []
    for task_id in tasks:
        check_suite_task(suite, task_id)
        for init in range(*init_states):
            group_reset = derive_seed(seed, task_id, init) if reset_seed is None else reset_seed
            start = f"init{init}" if use_init_states else f"random{init}"
            for k in range(rollouts_per_init):
                idx = len(specs)
                specs.append(
                    EpisodeSpec(
                        episode_index=idx,
                        suite=suite,
                        task_id=task_id,
                        init_state_index=init if use_init_states else None,
                        rollout_index=k,
                        seed=derive_seed(seed, task_id, init, k, 1),
                        reset_seed=group_reset,
                        group_id=f"{suite}/task{task_id}/{start}",
                        record_video=idx < n_video,
                    )
                )
    return specs


def load_rollout_policy(
    name: str,
    *,
    expert: Expert | None = None,
    inference: Inference | None = None,
    cfg_scale: float | None = None,
    switches: SamplingSwitches | None = None,
) -> RolloutPolicy:
    """'expert' (the scripted demonstrator, with the `expert` settings) or a policy checkpoint
    directory (run as `inference` says), sampling at `cfg_scale` (default: the checkpoint's
    own, see `PolicySettings.cfg_scale`) under the PI0_* `switches` (default: read from the
    environment now)."""
    if name == "expert":
        if expert is None:
            raise ValueError("--policy expert: no expert settings given")
        return ScriptedExpert(expert.expert_action_noise, expert.expert_grasp_offset)
    if not Path(name).is_dir():
        raise ValueError(f"--policy {name!r}: neither 'expert' nor a checkpoint directory")
    if inference is None:
        raise ValueError(f"--policy {name}: no inference settings given")
    import torch

    from ript.models.policy import Policy, default_dtype, resolve_device

    device = resolve_device(inference.device)
    if device.type == "cpu":
        # The policy shares the cores with the env workers, and a batch of a few observations
        # gains nothing from intra-op threads (10 evaluation episodes: 67 instead of 78 CPU s).
        torch.set_num_threads(1)
    return Policy.from_pretrained(
        name,
        device=device,
        dtype=default_dtype(device),
        cfg_scale=cfg_scale,
        compile=inference.compile,
        tokenizer_path=inference.tokenizer_path,
        switches=sampling_switches() if switches is None else switches,
    )


def make_pool(
    sim: Simulation, num_episodes: int, render_source: str = "obs", render_gpu: str | None = None
) -> EnvPool:
    """The configured pool, with no more workers than the episodes, cores and memory serve;
    `render_source` is where recorded episodes take their video frames from."""
    return EnvPool(
        usable_workers(sim.num_parallel_envs, num_episodes),
        max_episode_length=max_episode_length(sim.suite, sim.max_episode_length),
        num_steps_wait=sim.num_steps_wait,
        replan_steps=sim.replan_steps,
        cameras=sim.cameras,
        image_size=sim.image_size,
        privileged_object_state=sim.privileged_object_state,
        render_source=render_source,
        env_create_retries=sim.env_create_retries,
        worker_timeout_s=sim.worker_timeout_s,
        engine=sim.rollout_engine,
        max_wait_ms=sim.max_wait_ms,
        hard_reset=sim.hard_reset,
        render_gpu=render_gpu,
    )


def rendering_gpu(policy: RolloutPolicy) -> str | None:
    """The EGL device of the GPU the policy runs on, so that a job's simulators render where
    its policy infers (jobs spread over the GPUs, `ript.gpus`); None for a CPU policy."""
    device = getattr(policy, "device", None)
    if getattr(device, "type", None) != "cuda":
        return None
    return egl_device_id(device.index or 0)


def per_task_success(episodes: list[Episode]) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "task_id": [e.spec.task_id for e in episodes],
            "success": [e.success for e in episodes],
            "length": [e.length for e in episodes],
        }
    )
    return df.groupby("task_id").agg(
        episodes=("success", "size"),
        successes=("success", "sum"),
        success_rate=("success", "mean"),
        mean_length=("length", "mean"),
    )


def summary_line(stats: RolloutStats) -> str:
    return (
        f"episodes={stats.episodes} successes={stats.successes} "
        f"success_rate={stats.successes / max(stats.episodes, 1):.3f} "
        f"env_steps={stats.env_steps} env_steps_per_s={stats.env_steps_per_second:.1f} "
        f"wall_s={stats.wall_seconds:.1f} worker_restarts={stats.worker_restarts}"
    )


def run_rollouts(
    sim: Simulation,
    policy: RolloutPolicy,
    *,
    init_states: tuple[int, int],
    rollouts_per_init: int,
    videos: Videos | None = None,
    progress: bool = True,
    desc: str = "rollouts",
    keep_observations: bool = True,
    reset_seed: int | None = None,
) -> tuple[list[Episode], RolloutStats]:
    """K rollouts of `policy` per init state of the configured tasks, on a fresh env pool
    (see `EnvPool.run` for `keep_observations`), the first `videos.n_video` recorded."""
    specs = episode_specs(
        suite=sim.suite,
        tasks=list(sim.tasks),
        init_states=init_states,
        rollouts_per_init=rollouts_per_init,
        seed=sim.seed,
        use_init_states=sim.use_init_states,
        n_video=videos.n_video if videos else 0,
        reset_seed=reset_seed,
    )
    render_source = videos.render_source if videos else "obs"
    with make_pool(sim, len(specs), render_source, rendering_gpu(policy)) as pool:
        episodes = pool.run(
            specs, policy, progress=progress, desc=desc, keep_observations=keep_observations
        )
        return episodes, pool.stats
