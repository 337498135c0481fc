"""Settings that would ask for more than the machine or the data has are capped with a
warning, and two processes never write one output."""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import pytest
from helpers import run_ript
from micro import sft_args

from ript.data.episode_store import read_index

pytestmark = pytest.mark.sim


def test_more_simulators_than_episodes_cores_or_memory_are_capped(micro_run, tmp_path):
    out = tmp_path / "rollouts.h5"
    result = run_ript(
        "collect", "--config", str(micro_run / "micro.yaml"), "--policy", "expert",
        "--init-states", "0:2", "--rollouts-per-init", "1", "--num-parallel-envs", "64",
        "--max-episode-length", "20", "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "num_parallel_envs 64 capped to 2: 2 episodes" in result.stderr
    assert "num_parallel_envs=2," in result.stderr  # the pool started two workers
    assert len(read_index(out)) == 2


def test_a_batch_larger_than_the_data_is_clamped_with_a_warning(micro_run, tmp_path):
    res = micro_run / "results/micro"
    out = tmp_path / "base"
    settings = ("--set", "batch_size=1000000", "--set", "sft_steps=2")
    result = run_ript(*sft_args(micro_run, out, *settings))
    assert result.returncode == 0, result.stderr[-2000:]
    samples = int(read_index(res / "demos/task0.h5").query("success")["length"].sum())
    assert f"batch_size 1000000 is larger than the {samples} training samples" in result.stderr
    assert pd.read_json(out / "train_settings.json", typ="series")["batch_size"] == samples


def test_a_second_collect_into_the_same_output_is_refused(micro_run, tmp_path):
    out = tmp_path / "rollouts.h5"
    args = [
        sys.executable, "-m", "ript.cli", "collect", "--config", str(micro_run / "micro.yaml"),
        "--policy", "expert", "--init-states", "0:2", "--rollouts-per-init", "2",
        "--max-episode-length", "60", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while "[EnvPool]" not in (tmp_path / "first.log").read_text():  # it is simulating
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert second.returncode == 2, second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and f"{out}: another process (pid {first.pid})" in errors[0]
    assert len(read_index(out)) == 4  # the first one's shard, whole
