"""Shared fixtures: small real LIBERO pools and test policies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from ript.envs.episode import PolicyRequest
from ript.envs.libero_env import prepare_process_environment
from ript.envs.pool import EnvPool

prepare_process_environment()


class RandomPolicy:
    """Seeded random chunks: deterministic per (episode seed, step), like a real policy."""

    policy_id = "random"

    def __init__(self, chunk_len: int = 5, scale: float = 0.5) -> None:
        self.chunk_len = chunk_len
        self.scale = scale
        self.calls = 0

    def act(self, requests: list[PolicyRequest]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(requests), self.chunk_len, 7))
        for i, req in enumerate(requests):
            rng = np.random.default_rng([req.episode.seed, req.step])
            out[i] = rng.uniform(-self.scale, self.scale, size=(self.chunk_len, 7))
        return out


class KillingPolicy(RandomPolicy):
    """Kills a simulator worker with SIGKILL on one call, mid-episode."""

    def __init__(
        self, pool: EnvPool, kill_on_call: int, worker: int = 0, until_dead: bool = False
    ) -> None:
        super().__init__()
        self.pool = pool
        self.kill_on_call = kill_on_call
        self.worker = worker
        self.until_dead = until_dead
        self.killed_pid: int | None = None

    def act(self, requests: list[PolicyRequest]) -> np.ndarray:
        out = super().act(requests)
        if self.calls == self.kill_on_call:
            self.killed_pid = self.pool.worker_pids[self.worker]
            os.kill(self.killed_pid, signal.SIGKILL)
            if self.until_dead:  # the pool's next send then meets a closed pipe
                victim, deadline = psutil.Process(self.killed_pid), time.monotonic() + 30
                while victim.status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped
                    assert time.monotonic() < deadline, f"worker {self.killed_pid} outlived SIGKILL"
                    time.sleep(0.01)
        return out


def small_pool(num_workers: int = 1, **overrides) -> EnvPool:
    """A low-dim pool with 64 px offscreen renders for videos; keyword args override."""
    settings = dict(
        max_episode_length=130,
        num_steps_wait=10,
        replan_steps=5,
        cameras=False,
        image_size=64,
        privileged_object_state=True,
        render_source="render",
    )
    return EnvPool(num_workers, **{**settings, **overrides})


@pytest.fixture(scope="session")
def lowdim_pool():
    """Two workers on LIBERO-Object; episodes long enough for the expert to finish task 0."""
    with small_pool(2) as pool:
        yield pool


@pytest.fixture(scope="session")
def async_pool():
    """Like lowdim_pool, served by the async engine with no wait budget (ready episodes are
    sent to the policy at once)."""
    with small_pool(2, engine="async", max_wait_ms=0.0) as pool:
        yield pool


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """A work directory in which `snakemake all` ran the micro config to completion; tests
    that change it work on a copy (`shutil.copytree(micro_run, ..., symlinks=True)`)."""
    from micro import MICRO_RUN, MICRO_RUN_LOGGERS, run_micro

    from ript.config import RECORD_KEYS_ENV

    workdir = tmp_path_factory.mktemp("micro_run")
    # every step records the config keys it read and those its rule passed
    record = {**os.environ, RECORD_KEYS_ENV: str(workdir / "config_keys.jsonl")}
    result = run_micro(workdir, *MICRO_RUN_LOGGERS, env=record, **MICRO_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir
