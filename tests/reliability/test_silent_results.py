"""Inputs that used to give a wrong result with exit 0 (or fail late, losing work) are refused
up front with one line saying why and what to change."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import run_ript
from micro import MICRO, sft_args

from ript.data.episode_store import read_index

pytestmark = pytest.mark.sim


def one_error(result: subprocess.CompletedProcess, *texts: str) -> str:
    """Exit 2 with one `ript <step>: error:` line holding every text, and no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr[-2000:]
    for text in texts:
        assert text in errors[0], (text, errors[0])
    assert "Traceback" not in result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def failed_rollouts(micro_run, tmp_path_factory) -> Path:
    """Two RLOO groups of the micro task whose rollouts all fail (5 policy steps each)."""
    shard = tmp_path_factory.mktemp("failed") / "rollouts.h5"
    result = run_ript(
        "collect", "--config", str(micro_run / "micro.yaml"), "--policy", "expert",
        "--init-states", "0:2", "--rollouts-per-init", "2", "--max-episode-length", "5",
        "--out", str(shard), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert not read_index(shard)["success"].any()
    return shard


def cfg_train(micro_run: Path, labels: Path, out: Path, *settings: str):
    res = micro_run / "results/micro"
    return run_ript(
        "train", "--mode", "cfg", "--labels", str(labels), "--init", str(res / "base/policy"),
        "--config", str(micro_run / "micro.yaml"), "--out", str(out), "--no-progress",
        "--set", "train_steps=3", *settings,
    )  # fmt: skip


@pytest.mark.parametrize("alpha_uncond", [0.0, 0.1])
def test_cfg_training_without_a_single_positive_label_is_refused(
    micro_run, failed_rollouts, tmp_path, alpha_uncond
):
    labels = tmp_path / "labels.parquet"
    label = run_ript(
        "label", "--config", str(micro_run / "micro.yaml"), "--rollouts", str(failed_rollouts),
        "--set", "dynamic_sampling=false", "--out", str(labels),
    )  # fmt: skip
    assert label.returncode == 0 and "(0 positive)" in label.stdout, label.stderr[-2000:]
    out = tmp_path / "train"
    result = cfg_train(micro_run, labels, out, "--alpha-uncond", str(alpha_uncond))
    one_error(result, str(labels), "no positive label among 4 episodes", "rollouts_per_init")
    assert not (out / "policy").exists()


def test_the_advice_when_every_group_is_dropped_does_not_lead_to_the_same_place(
    micro_run, failed_rollouts, tmp_path
):
    labels = tmp_path / "labels.parquet"
    label = run_ript(
        "label", "--config", str(micro_run / "micro.yaml"), "--rollouts", str(failed_rollouts),
        "--out", str(labels),
    )  # fmt: skip
    assert label.returncode == 0, label.stderr[-2000:]
    line = one_error(cfg_train(micro_run, labels, tmp_path / "train"), "no labelled episodes")
    assert "dynamic_sampling: false" not in line


@pytest.mark.parametrize("chunk_size", [5, 20])
def test_a_chunk_size_other_than_the_checkpoints_is_refused(micro_run, tmp_path, chunk_size):
    res = micro_run / "results/micro"
    out = tmp_path / "train"
    result = cfg_train(micro_run, res / "labels.parquet", out, "--set", f"chunk_size={chunk_size}")
    one_error(
        result,
        str(res / "base/policy"),
        f"chunks of {MICRO['chunk_size']} actions",
        f"chunk_size is {chunk_size}",
    )
    assert not out.exists()


def test_sft_on_demonstrations_that_all_failed_says_why_and_what_to_change(
    micro_run, failed_rollouts, tmp_path
):
    args = sft_args(micro_run, tmp_path / "base")
    args[args.index("--demos") + 1] = str(failed_rollouts)
    one_error(run_ript(*args), "none of their 4 episodes succeeded", "sft_only_successful")


def test_init_states_past_the_suites_50_are_refused_before_any_episode(micro_run, tmp_path):
    out = tmp_path / "rollouts.h5"
    result = run_ript(
        "collect", "--config", str(micro_run / "micro.yaml"), "--policy", "expert",
        "--init-states", "48:55", "--rollouts-per-init", "1", "--out", str(out), "--no-progress",
    )  # fmt: skip
    one_error(result, "'48:55'", "50 fixed init states", "STOP must be <= 50")
    assert "[EnvPool]" not in result.stderr  # no simulator was started
    assert not out.exists()


def test_a_label_table_moved_with_its_results_folder_still_finds_its_shards(micro_run, tmp_path):
    moved = tmp_path / "elsewhere/results/micro"
    shutil.copytree(micro_run / "results/micro", moved, symlinks=True)
    result = run_ript(
        "train", "--mode", "cfg", "--labels", str(moved / "labels.parquet"),
        "--init", str(moved / "base/policy"), "--config", str(micro_run / "micro.yaml"),
        "--set", "train_steps=2", "--out", str(tmp_path / "train"), "--no-progress",
        cwd=tmp_path,  # neither the directory `ript label` ran in nor the moved one
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "train/policy/model.safetensors").is_file()
