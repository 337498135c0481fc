"""The micro config and a Snakemake runner, shared by the workflow, SLURM and reliability
tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir, *args, env=None):
    return subprocess.run(
        ["snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        env=env,
    )


MICRO = {
    "experiment": "micro",
    "tasks": [0],
    "train_init_states": [0, 4],
    "eval_init_states": [25, 27],
    "max_episode_length": 160,
    "num_parallel_envs": 1,
    # a base that succeeds on some rollouts but not all, so RLOO finds positives (measured:
    # 6 of 16 rollouts succeed, 3 of 4 groups mixed): three noisy demos per init state
    "demos_per_init": 3,
    "expert_action_noise": 0.2,
    "rollouts_per_init": 4,
    "collect_init_chunk": 1,
    "state_keys": ["state", "privileged_object_state", "privileged_object_relative"],
    "max_state_dim": 64,
    "chunk_size": 10,
    "batch_size": 32,
    "sft_steps": 1000,
    "train_steps": 10,
    "cond_mode": ["bias"],
    "alpha_uncond": [0.1],
    "cfg_scale": [1.0, 2.0],
    "device": "cpu",
}


# what the shared `micro_run` adds to MICRO: the first two episodes of every collection and
# evaluation are recorded as videos, so the report can show a success and a failure of a
# policy (a rerun of its copy must pass the same, or the changed keys rerun the jobs). Each
# recorded step costs an offscreen render (~50 ms on Mesa): about 2 of the suite's minutes.
MICRO_RUN = {"n_video": 2, "render_source": "render"}
# and on its command line (not in micro.yaml, which tests also hand to steps they run by
# themselves): every job logs to TensorBoard and to W&B offline (test_tracking reads them back)
MICRO_RUN_LOGGERS = ("--config", "loggers=[csv,tensorboard,wandb]")


def sft_args(micro_run: Path, out: Path, *settings: str) -> list[str]:
    """The arguments (after `ript`) of SFT on a finished micro run's demonstrations."""
    res = micro_run / "results/micro"
    return [
        "train", "--mode", "sft", "--demos", str(res / "demos/task0.h5"),
        "--norm-stats", str(res / "norm_stats.json"), "--config", str(micro_run / "micro.yaml"),
        "--out", str(out), "--no-progress", *settings,
    ]  # fmt: skip


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Job stats of a dry run: rule name -> count."""
    lines = dry_run_output.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def run_micro(
    workdir: Path, *args: str, env: dict[str, str] | None = None, **overrides
) -> subprocess.CompletedProcess:
    """`snakemake all` of the micro config (plus `overrides`) in `workdir`, on 2 cores."""
    micro = workdir / "micro.yaml"
    micro.write_text(yaml.safe_dump(MICRO | overrides))
    return snakemake(workdir, "all", "--cores", "2", "--configfile", str(micro), *args, env=env)
