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
from micro import MICRO, ROOT, sft_args
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
    defaults = ("--set", "sft_steps=300", "--set", "checkpoint_every=25", "--set", "batch_size=8")
    return ["ript", *sft_args(micro_run, out, "--resume", *defaults, *settings)]


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
    start, stop = MICRO["train_init_states"]
    shards = [res / f"rollouts/task0_init{i}-{i + 1}.h5" for i in range(start, stop)]
    command = [  # up to the labels: what follows collection is not what this test is about
        "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
        "results/micro/labels.parquet", "--configfile", str(config), "--cores", "1",
    ]  # fmt: skip

    def started(shard: Path) -> bool:
        return (res / "logs/collect" / f"{shard.stem}.log").is_file()

    def running() -> list[Path]:
        return [s for s in shards if started(s) and not s.is_file()]

    def one_done_one_running() -> bool:
        return any(s.is_file() for s in shards) and len(running()) == 1

    with (tmp_path / "killed.log").open("w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=log)
        wait_for(one_done_one_running, 600, "one collection job done, one running", run)
        (second,) = running()
        time.sleep(3)  # well inside that job (its episodes take ~15 s)
        # snakemake and every process it started, as when their node dies
        tree = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
        for process in tree:
            process.send_signal(signal.SIGKILL)
        run.wait()
    done = [s for s in shards if s.is_file()]
    assert done and not second.exists()  # never a half-written shard
    finished = {p: p.stat().st_mtime_ns for p in (*done, res / "demos/task0.h5")}

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
    assert len(index) == MICRO["rollouts_per_init"] and index["init_state_index"].nunique() == 1
    assert (res / "labels.parquet").is_file()


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


def metrics_rows(out: Path) -> int:
    try:
        return len(pd.read_csv(out / "metrics.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_of_training_checkpoints_then_exits_with_one_line(
    micro_run, tmp_path, signum
):
    # no periodic checkpoint before the end, as with checkpoint_every = train_steps = 500
    late = ("--set", "checkpoint_every=1000")
    full = subprocess.run(train_command(micro_run, tmp_path / "full", *late), capture_output=True)
    assert full.returncode == 0, full.stderr[-2000:]
    cut = tmp_path / "cut"
    with (tmp_path / "cut.log").open("w") as log:
        job = subprocess.Popen(
            train_command(micro_run, cut, *late),
            stdout=log,
            stderr=log,
            preexec_fn=lambda: os.nice(10),
        )
        wait_for(lambda: metrics_rows(cut) >= 30, 300, "30 training steps", job)
        job.send_signal(signum)
        # SLURM's default grace before its SIGKILL (KillWait) is 30 s
        assert job.wait(timeout=30) == 128 + signum
    text = (tmp_path / "cut.log").read_text()
    step = latest_checkpoint_step(cut)
    lines = [line for line in text.splitlines() if line.startswith("ript train:")]
    assert lines == [
        f"ript train: {cut}: stopped by {signal.Signals(signum).name} at step {step} of 300; "
        f"{cut / 'checkpoints' / f'step_{step:07d}'} written, rerun with --resume to go on"
    ], text[-2000:]
    assert "Traceback" not in text and step >= 30
    assert metrics_rows(cut) == step
    rerun = subprocess.run(train_command(micro_run, cut, *late), capture_output=True, text=True)
    assert rerun.returncode == 0 and f"at step {step}" in rerun.stderr, rerun.stderr[-2000:]
    assert_same_weights(tmp_path / "full/policy", cut / "policy")
    assert pd.read_csv(cut / "metrics.csv")["step"].tolist() == list(range(1, 301))


def test_temporaries_of_a_save_killed_midway_are_removed_on_the_next_start(micro_run, tmp_path):
    out = tmp_path / "run"
    every_step = ("--set", "checkpoint_every=1")  # saving nearly all the time
    job = subprocess.Popen(
        train_command(micro_run, out, *every_step),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.nice(10),
    )
    wait_for(lambda: latest_checkpoint_step(out) >= 20, 300, "20 checkpoints", job)
    job.send_signal(signal.SIGKILL)
    job.wait()
    # what a save killed at its worst moment leaves, in today's and the earlier naming
    for stale in (
        out / "checkpoints/.tmp-999999-step_0000021",
        out / "checkpoints/.tmp-step_0000022-999999",
        out / ".tmp-999999-policy",
    ):
        stale.mkdir(parents=True, exist_ok=True)
        (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    rerun = subprocess.run(train_command(micro_run, out, *every_step), capture_output=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not list(out.rglob(".tmp-*"))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000300"]


def test_training_killed_under_snakemake_keeps_its_metrics_history(micro_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(micro_run, work, symlinks=True)
    train = work / "results/micro/train/bias_a0.1"
    command = [  # the training job alone (the evaluations after it add nothing here)
        "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
        "results/micro/train/bias_a0.1/metrics.csv", "--cores", "1",
        "--configfile", str(work / "micro.yaml"),
        "--config", "train_steps=300", "checkpoint_every=25",
    ]  # fmt: skip
    with (tmp_path / "killed.log").open("w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=log, preexec_fn=lambda: os.nice(10))

        def trainer() -> list[psutil.Process]:
            return [
                p
                for p in psutil.Process(run.pid).children(recursive=True)
                if "--mode" in p.cmdline() and "cfg" in p.cmdline()
            ]

        wait_for(lambda: latest_checkpoint_step(train) >= 50, 300, "a checkpoint at 50", run)
        (victim,) = trainer()
        victim.send_signal(signal.SIGKILL)
        assert run.wait(timeout=300) != 0
    assert not (train / "metrics.csv").exists()  # Snakemake removed the failed job's outputs
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in (work / "results/micro/logs/train/bias_a0.1.log").read_text()
    assert pd.read_csv(train / "metrics.csv")["step"].tolist() == list(range(1, 301))


def test_ctrl_c_of_a_collection_prints_one_line_and_leaves_nothing(micro_run, tmp_path):
    out = tmp_path / "rollouts.h5"
    args = [
        "ript", "collect", "--config", str(micro_run / "micro.yaml"), "--policy", "expert",
        "--init-states", "0:2", "--rollouts-per-init", "2", "--num-parallel-envs", "2",
        "--max-episode-length", "120", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    with (tmp_path / "collect.log").open("w") as log:
        # a session of its own, so that the signal goes to its whole process group, as
        # Ctrl-C in a terminal sends it to the foreground group (simulator workers included)
        job = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: "[EnvPool]" in (tmp_path / "collect.log").read_text(), 120, "a pool", job)
        time.sleep(5)  # the workers are stepping episodes
        os.killpg(job.pid, signal.SIGINT)
        assert job.wait(timeout=60) == 130
    text = (tmp_path / "collect.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    assert [line for line in text.splitlines() if line.startswith("ript collect:")] == [
        "ript collect: stopped by SIGINT; no output was written"
    ]
    assert list(tmp_path.iterdir()) == [tmp_path / "collect.log"]
