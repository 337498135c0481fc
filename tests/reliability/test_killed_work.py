"""Killed work loses nothing finished and never leaves a half-written output behind:
training resumes to the weights of an uninterrupted run, a killed Snakemake redoes only the
unfinished jobs, a dead simulator's episode is re-run, a non-finite loss is skipped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from micro import MICRO, ROOT
from safetensors.torch import load_file

from ript.data.episode_store import read_index
from ript.rl.train import latest_checkpoint

pytestmark = pytest.mark.sim


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (rc {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def train_command(micro_run: Path, out: Path, *settings: str) -> list[str]:
    res = micro_run / "results/micro"
    return [
        "ript", "train", "--mode", "sft", "--demos", str(res / "demos/task0.h5"),
        "--norm-stats", str(res / "norm_stats.json"), "--out", str(out), "--resume",
        "--config", str(micro_run / "micro.yaml"), "--set", "sft_steps=300",
        "--set", "checkpoint_every=25", "--set", "batch_size=8",
        *settings, "--no-progress",
    ]  # fmt: skip


def latest_checkpoint_step(out: Path) -> int:
    found = latest_checkpoint(out / "checkpoints")
    return int(found.name.removeprefix("step_")) if found else 0


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert np.array_equal(wa[key].numpy(), wb[key].numpy()), key


def test_kill_9_of_training_then_rerun_ends_at_the_uninterrupted_weights(micro_run, tmp_path):
    full = subprocess.run(train_command(micro_run, tmp_path / "full"), capture_output=True)
    assert full.returncode == 0, full.stderr[-2000:]

    cut = tmp_path / "cut"
    with (tmp_path / "cut.log").open("w") as log:
        # niced, so that the polling here is not starved of CPU on a 2-core machine
        job = subprocess.Popen(
            train_command(micro_run, cut), stdout=log, stderr=log, preexec_fn=lambda: os.nice(10)
        )
        # killed while running, after its second checkpoint and well before its end; any
        # later checkpoint will do (each replaces the one before: step_50 lives ~25 steps)
        wait_for(lambda: latest_checkpoint_step(cut) >= 50, 300, "a checkpoint at step 50", job)
        job.send_signal(signal.SIGKILL)
        job.wait()
    assert not (cut / "policy").exists()
    rerun = subprocess.run(train_command(micro_run, cut), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from" in rerun.stderr and "at step 0" not in rerun.stderr
    assert_same_weights(tmp_path / "full/policy", cut / "policy")
    steps = pd.read_csv(cut / "metrics.csv")["step"].tolist()
    assert steps == list(range(1, 301))  # no step lost or logged twice

    # a checkpoint written with other settings is never resumed
    other = subprocess.run(
        train_command(micro_run, cut, "--set", "sft_learning_rate=0.002"),
        capture_output=True,
        text=True,
    )
    assert other.returncode == 0
    assert "other settings or inputs; starting from step 0" in other.stderr


def test_kill_9_of_snakemake_mid_collection_redoes_only_unfinished_jobs(tmp_path):
    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump(MICRO))
    res = tmp_path / "results/micro"
    shards = [res / "rollouts/task0_init0-1.h5", res / "rollouts/task0_init1-2.h5"]
    command = [
        "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "all",
        "--configfile", str(config), "--cores", "1",
    ]  # fmt: skip

    def started(shard: Path) -> bool:
        return (res / "logs/collect" / f"{shard.stem}.log").is_file()

    def one_done_one_running() -> bool:
        done = [s for s in shards if s.is_file()]
        return len(done) == 1 and all(started(s) for s in shards)

    with (tmp_path / "killed.log").open("w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=log)
        wait_for(one_done_one_running, 600, "one collection job done, one running", run)
        time.sleep(3)  # well inside the second job (its episodes take ~10 s)
        # snakemake and every process it started, as when their node dies
        tree = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
        for process in tree:
            process.send_signal(signal.SIGKILL)
        run.wait()
    first, second = sorted(shards, key=lambda s: not s.is_file())
    assert first.is_file() and not second.exists()  # never a half-written shard
    finished = {p: p.stat().st_mtime_ns for p in (first, res / "demos/task0.h5")}

    locked = subprocess.run(command, capture_output=True, text=True)  # Snakemake's own lock
    assert locked.returncode != 0 and "It can be removed with the --unlock argument" in (
        locked.stdout + locked.stderr
    )
    unlock = subprocess.run([*command, "--unlock"], capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished work kept
    index = read_index(second)
    assert len(index) == 2 and index["init_state_index"].nunique() == 1
    assert (res / "tables/sweep.csv").is_file()


def test_a_simulator_killed_mid_episode_is_restarted_and_its_episode_rerun(micro_run, tmp_path):
    out = tmp_path / "rollouts.h5"
    args = [
        "ript", "collect", "--config", str(micro_run / "micro.yaml"), "--policy", "expert",
        "--init-states", "0:3", "--rollouts-per-init", "2", "--num-parallel-envs", "2",
        "--max-episode-length", "120", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    with (tmp_path / "collect.log").open("w") as log:
        job = subprocess.Popen(args, stdout=log, stderr=log)
        parent = psutil.Process(job.pid)

        def workers() -> list[psutil.Process]:
            return [p for p in parent.children() if "spawn_main" in " ".join(p.cmdline())]

        wait_for(lambda: len(workers()) >= 2, 120, "two simulator workers", job)
        time.sleep(6)  # both simulators are stepping episodes by now (6 take ~20 s)
        victim = workers()[0]
        victim.send_signal(signal.SIGKILL)
        assert job.wait(timeout=600) == 0, (tmp_path / "collect.log").read_text()[-2000:]
    log = (tmp_path / "collect.log").read_text()
    assert f"worker pid {victim.pid} died; restarting it" in log
    assert "worker_restarts=1" in log
    index = read_index(out)
    keys = list(zip(index["init_state_index"], index["rollout_index"], strict=True))
    assert sorted(keys) == sorted({(i, k) for i in range(3) for k in range(2)})  # each once


def test_nonfinite_loss_from_a_corrupt_sample_is_skipped_and_counted(micro_run, tmp_path):
    demos = tmp_path / "demos.h5"
    src = micro_run / "results/micro/demos/task0.h5"
    shutil.copy(src, demos)
    shutil.copy(src.with_suffix(".index.parquet"), demos.with_suffix(".index.parquet"))
    with h5py.File(demos, "r+") as f:
        f["data/demo_0/actions"][40] = np.nan  # one corrupt action in one episode
    res = micro_run / "results/micro"
    base = [
        "ript", "train", "--mode", "sft", "--demos", str(demos),
        "--norm-stats", str(res / "norm_stats.json"), "--config", str(micro_run / "micro.yaml"),
        "--set", "sft_steps=40",
        "--set", "batch_size=4", "--set", "max_nonfinite_steps=40", "--no-progress",
    ]  # fmt: skip
    ok = subprocess.run([*base, "--out", str(tmp_path / "ok")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    metrics = pd.read_csv(tmp_path / "ok/metrics.csv")
    skipped = ~np.isfinite(metrics["loss"])
    assert 0 < skipped.sum() < len(metrics)
    assert metrics["nonfinite_steps"].tolist() == np.cumsum(skipped).tolist()
    weights = load_file(tmp_path / "ok/policy/model.safetensors")
    assert all(np.isfinite(w.float().numpy()).all() for w in weights.values())

    bounded = subprocess.run(
        [*base, "--out", str(tmp_path / "bounded"), "--set", "max_nonfinite_steps=0"],
        capture_output=True,
        text=True,
    )
    assert bounded.returncode == 2
    errors = [line for line in bounded.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "non-finite" in errors[0], bounded.stderr[-2000:]
    assert not (tmp_path / "bounded/policy").exists()
