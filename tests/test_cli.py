"""`ript collect` as users run it: a real subprocess on the real simulator."""

import os
import subprocess
import sys

import pandas as pd
import pytest
from helpers import run_ript

from ript.data.episode_store import EpisodeReader, read_index

pytestmark = pytest.mark.sim


def test_collect_writes_a_shard_its_index_and_videos(tmp_path):
    out = tmp_path / "rollouts" / "shard.h5"
    result = run_ript(
        "collect",
        "--policy",
        "expert",
        "--tasks",
        "0",
        "--init-states",
        "3:5",
        "--rollouts-per-init",
        "2",
        "--num-parallel-envs",
        "2",
        "--max-episode-length",
        "40",
        "--n-video",
        "1",
        "--set",
        "render_source=render",
        "--set",
        "image_size=64",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stdout.splitlines() if line.startswith("collect:")]
    assert len(summary) == 1
    assert "episodes=4 successes=0" in summary[0] and "env_steps_per_s=" in summary[0]
    assert "Traceback" not in result.stderr  # clean worker shutdown, no EGL teardown noise
    assert "start method spawn" in result.stderr
    index = read_index(out)
    assert (
        list(index["group_id"])
        == ["libero_object/task0/init3"] * 2 + ["libero_object/task0/init4"] * 2
    )
    assert list(index["length"]) == [40] * 4  # the configured limit, not the suite's 280
    assert index["policy_id"].str.startswith("expert").all()
    with EpisodeReader(out) as reader:
        assert len(reader) == 4
        assert reader.read("demo_0").attrs["init_state_index"] == 3
    videos = sorted((out.parent / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["libero_object_task00_init03_k0_ep0000_failure.mp4"]
    assert not list(out.parent.glob("*.tmp-*"))


def test_bad_input_fails_before_any_simulation(tmp_path):
    result = run_ript("collect", "--set", "suite=libero_moon", "--out", str(tmp_path / "x.h5"))
    assert result.returncode == 2
    assert "'suite'" in result.stderr and "libero_moon" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_ript("collect", "--init-states", "7-9", "--out", str(tmp_path / "x.h5"))
    assert result.returncode == 2 and "START:STOP" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_libero_never_asks_for_a_path_on_stdin(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LIBERO_CONFIG_PATH"}
    env["HOME"] = str(tmp_path)  # no LIBERO config anywhere
    code = (
        "from ript.envs.libero_env import task_info;print(task_info('libero_object', 3).language)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "pick up the bbq sauce and place it in the basket" in result.stdout


def test_index_is_a_plain_parquet_table(tmp_path):
    out = tmp_path / "s.h5"
    result = run_ript(
        "collect",
        "--tasks",
        "3",
        "--init-states",
        "0:1",
        "--rollouts-per-init",
        "1",
        "--num-parallel-envs",
        "1",
        "--max-episode-length",
        "5",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out.with_name("s.index.parquet"))
    assert table.loc[0, "task_id"] == 3 and table.loc[0, "shard"] == "s.h5"


def test_collect_with_a_policy_checkpoint(tmp_path):
    import numpy as np

    from ript.data.norm_stats import NormStats, Stats
    from ript.models.policy import PolicySettings, new_policy

    def stats(dim):
        return Stats(
            np.zeros(dim, np.float32),
            np.ones(dim, np.float32),
            -np.ones(dim, np.float32),
            np.ones(dim, np.float32),
        )

    keys = ["state", "privileged_object_state", "privileged_object_relative"]
    policy = new_policy(
        "tiny",
        NormStats(stats(8 + 28 + 12), stats(7)),
        PolicySettings(state_keys=keys, num_steps=2),
        chunk_size=5,
        max_state_dim=64,
        max_action_dim=8,
    )
    policy.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "s.h5"
    result = run_ript(
        "collect",
        "--policy",
        str(tmp_path / "ckpt"),
        "--cfg-scale",
        "1.5",
        "--tasks",
        "0",
        "--init-states",
        "0:1",
        "--rollouts-per-init",
        "2",
        "--num-parallel-envs",
        "1",
        "--max-episode-length",
        "8",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    index = read_index(out)
    assert list(index["length"]) == [8, 8]
    assert index["policy_id"].iloc[0].endswith("/ckpt(cfg_scale=1.5)")
    with EpisodeReader(out) as reader:
        first, second = reader.read("demo_0"), reader.read("demo_1")
    assert not np.array_equal(first.actions, second.actions)  # each rollout has its own noise
