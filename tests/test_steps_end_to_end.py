"""The chain of `ript` steps on the real simulator, as the pipeline runs them: expert demos ->
norm stats -> SFT base -> K rollouts of the base -> labels -> CFG training -> evaluation at
two guidance scales."""

import json
import os

import pandas as pd
import pytest
import yaml
from helpers import run_ript
from micro import MICRO

from ript.evaluation.metrics import wilson_interval

pytestmark = pytest.mark.sim

# the workflow's micro config with another condition mode, and a reward that also ranks the
# successes of a group by length, so that RLOO finds a positive unless every rollout fails
CONFIG = MICRO | {
    "experiment": "e2e",
    "num_parallel_envs": 2,
    "checkpoint_every": 5,
    "cond_mode": ["concat"],
    "alpha_uncond": [0.2],
    "reward": "fast_success",
}


def ok(*args):
    result = run_ript(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_demos_to_evaluation(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    c = ["--config", str(config), "--no-progress"]
    demos, stats = tmp_path / "demos.h5", tmp_path / "norm_stats.json"
    ok("collect", *c, "--policy", "expert", "--out", str(demos))
    ok(
        "norm-stats",
        "--shards",
        str(demos),
        "--out",
        str(stats),
        "--state-keys",
        *CONFIG["state_keys"],
    )
    out = ok(
        "train",
        *c,
        "--mode",
        "sft",
        "--demos",
        str(demos),
        "--norm-stats",
        str(stats),
        "--out",
        str(tmp_path / "base"),
    )
    base = tmp_path / "base/policy"
    assert f"train: {base}" in out
    rollouts = tmp_path / "rollouts.h5"
    ok("collect", *c, "--policy", str(base), "--out", str(rollouts))
    index = pd.read_parquet(tmp_path / "rollouts.index.parquet")
    assert len(index) == 16 and index.groupby("group_id").size().eq(4).all()  # 4 inits x K=4
    labels = tmp_path / "labels.parquet"
    out = ok("label", "--config", str(config), "--rollouts", str(rollouts), "--out", str(labels))
    assert "groups kept" in out and "(0 positive)" not in out, out
    short = ["--set", "max_episode_length=30"]
    ok(
        "train",
        *c,
        "--mode",
        "cfg",
        "--labels",
        str(labels),
        "--init",
        str(base),
        "--cond-mode",
        "concat",
        "--alpha-uncond",
        "0.2",
        "--out",
        str(tmp_path / "cfg"),
    )
    metrics_csv = pd.read_csv(tmp_path / "cfg/metrics.csv")
    assert metrics_csv["step"].tolist() == list(range(1, 11))
    assert (metrics_csv["loss_uncond"] > 0).all()
    for scale in (1.0, 2.0):
        path = tmp_path / f"eval_{scale}.json"
        out = ok(
            "evaluate",
            *c,
            *short,
            "--policy",
            str(tmp_path / "cfg/policy"),
            "--cfg-scale",
            str(scale),
            "--out",
            str(path),
        )
        m = json.loads(path.read_text())
        o = m["overall"]
        assert o["n"] == 2 and 0 <= o["successes"] <= 2
        assert (o["ci95_low"], o["ci95_high"]) == pytest.approx(
            wilson_interval(o["successes"], o["n"])
        )
        s = m["settings"]
        assert s["cfg_scale"] == scale and s["dual"] == (scale != 1.0)
        assert s["cond_mode"] == "concat" and s["num_steps"] == 10 and s["seed"] == 0
        assert s["training"]["alpha_uncond"] == 0.2 and s["training"]["mode"] == "cfg"
        assert s["init_states"] == [25, 27]
        assert m["inference"]["mean_ms_per_chunk"] > 0
        assert f"evaluate: {path}: success" in out
        assert s["env_switches"] == {}
    # the notes' switch, read where the step builds its policy and recorded
    path = tmp_path / "eval_switched.json"
    switched = run_ript(
        "evaluate", *c, *short, "--policy", str(tmp_path / "cfg/policy"), "--cfg-scale", "1",
        "--out", str(path), env={**os.environ, "PI0_CFG_SCALE": "2"},
    )  # fmt: skip
    assert switched.returncode == 0, switched.stderr[-3000:]
    s = json.loads(path.read_text())["settings"]
    assert s["cfg_scale"] == 2.0 and s["env_switches"] == {"PI0_CFG_SCALE": "2"}


def test_evaluate_the_scripted_expert(tmp_path):
    path = tmp_path / "expert.json"
    ok(
        "evaluate",
        "--policy",
        "expert",
        "--out",
        str(path),
        "--no-progress",
        "--set",
        "tasks=[0]",
        "--set",
        "eval_init_states=[25,27]",
        "--set",
        "max_episode_length=30",
        "--set",
        "n_video=1",
        "--set",
        'render_source="render"',
        "--shard",
        str(tmp_path / "eval.h5"),
    )
    m = json.loads(path.read_text())
    (video,) = (tmp_path / "videos").glob("*.mp4")  # the first episode's, beside metrics.json
    (entry,) = m["videos"]
    assert entry["path"] == str(video) and video.stat().st_size > 1000
    assert (entry["task"], entry["init_state"], entry["rollout"]) == (0, 25, 0)
    assert entry["success"] == m["episodes"][0]["success"]
    assert m["settings"]["policy_kind"] == "expert" and m["settings"]["cfg_scale"] is None
    assert m["overall"]["n"] == 2 and m["inference"]["calls"] == 0
    assert len(pd.read_parquet(tmp_path / "eval.index.parquet")) == 2


def test_evaluate_under_openpi_s_protocol(tmp_path):
    """Its keys reach the episodes: every reset seeded with 7, hard resets, the suite's
    episode length, one rollout per init state; metrics.json records the protocol."""
    path = tmp_path / "openpi.json"
    ok(
        "evaluate", "--policy", "expert", "--out", str(path), "--no-progress",
        "--init-states", "0:2", "--set", "tasks=[0]", "--set", 'eval_protocol="openpi"',
    )  # fmt: skip
    s = json.loads(path.read_text())["settings"]
    assert s["eval_protocol"] == "openpi" and s["reset_seed"] == 7 and s["hard_reset"] is True
    assert s["max_episode_length"] is None and s["rollouts_per_init"] == 1
    assert s["init_states"] == [0, 2]
    m = json.loads(path.read_text())
    assert m["overall"]["n"] == 2 and max(e["length"] for e in m["episodes"]) <= 280
