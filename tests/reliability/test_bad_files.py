"""Bad files on disk fail in the step that reads them, naming the file and the problem; once
the file is removed, rerunning the workflow regenerates it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import h5py
import pandas as pd
import pytest
from helpers import run_ript
from micro import MICRO, MICRO_RUN, run_micro

from ript.data.episode_store import read_index

pytestmark = pytest.mark.sim


def assert_fails_naming(result: subprocess.CompletedProcess, path: Path, problem: str) -> str:
    """Exit 2 with one `ript <step>: error:` line that names `path` and `problem`."""
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr[-2000:]
    assert str(path) in errors[0] and problem in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    return errors[0]


def copy_shard(run: Path, tmp_path: Path) -> Path:
    """A copy of one rollout shard of the micro run, with its index."""
    src = run / "results/micro/rollouts/task0_init0-1.h5"
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".index.parquet"), dst.with_suffix(".index.parquet"))
    return dst


def truncate(path: Path, fraction: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * fraction))


def test_truncated_shard(micro_run, tmp_path):
    shard = copy_shard(micro_run, tmp_path)
    truncate(shard)
    out = tmp_path / "labels.parquet"
    result = run_ript("label", "--rollouts", str(shard), "--out", str(out))
    assert_fails_naming(result, shard, "not a readable HDF5 file (truncated or corrupt?)")
    assert not out.exists()


def test_foreign_hdf5_file(tmp_path):
    shard = tmp_path / "foreign.h5"
    with h5py.File(shard, "w") as f:
        f.create_dataset("images", data=[1, 2, 3])
    out = tmp_path / "norm_stats.json"
    result = run_ript("norm-stats", "--shards", str(shard), "--out", str(out))
    assert_fails_naming(result, shard, "not an episode file in LIBERO's demo layout")
    assert not out.exists()


def test_index_that_disagrees_with_its_shard(micro_run, tmp_path):
    shard = copy_shard(micro_run, tmp_path)
    index_path = shard.with_suffix(".index.parquet")
    index = pd.read_parquet(index_path)
    index.loc[0, "success"] = not index.loc[0, "success"]
    index.to_parquet(index_path)
    result = run_ript("label", "--rollouts", str(shard), "--out", str(tmp_path / "labels.parquet"))
    assert_fails_naming(result, index_path, "the index does not belong to this shard")


def test_corrupt_norm_stats(micro_run, tmp_path):
    stats = tmp_path / "norm_stats.json"
    shutil.copy(micro_run / "results/micro/norm_stats.json", stats)
    truncate(stats, 0.3)
    demos = micro_run / "results/micro/demos/task0.h5"
    result = run_ript(
        "train", "--mode", "sft", "--demos", str(demos), "--norm-stats", str(stats),
        "--out", str(tmp_path / "run"), "--set", "sft_steps=2", "--no-progress",
    )  # fmt: skip
    assert_fails_naming(result, stats, "not valid JSON")
    assert not (tmp_path / "run/policy").exists()


@pytest.mark.parametrize("damage", ["missing weights", "wrong kind of model"])
def test_damaged_checkpoint(micro_run, tmp_path, damage):
    ckpt = tmp_path / "policy"
    shutil.copytree(micro_run / "results/micro/base/policy", ckpt)
    if damage == "missing weights":
        (ckpt / "model.safetensors").unlink()
        problem = "checkpoint lacks model.safetensors"
    else:
        config = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
        problem = "holds a 'bert' model"
    out = tmp_path / "metrics.json"
    result = run_ript("evaluate", "--policy", str(ckpt), "--out", str(out), "--no-progress")
    assert_fails_naming(result, ckpt, problem)
    assert not out.exists()


def test_workflow_fails_in_the_reading_step_then_regenerates_the_removed_file(micro_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(micro_run, work, symlinks=True)
    res = work / "results/micro"
    # a run that was cut off after collection, leaving a shard truncated (as a dying node or
    # a full disk would leave it): nothing downstream of collection exists yet
    for done in ("labels.parquet", "train", "eval/bias_a0.1", "tables", "plots"):
        path = res / done
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shard = res / "rollouts/task0_init1-2.h5"
    truncate(shard)
    failed = run_micro(work, **MICRO_RUN)
    assert failed.returncode != 0
    log = (res / "logs/label.log").read_text()
    assert "rollouts/task0_init1-2.h5" in log and "truncated or corrupt" in log, log[-2000:]
    assert not (res / "labels.parquet").exists()
    kept = {
        p: p.stat().st_mtime_ns for p in (res / "rollouts/task0_init0-1.h5", res / "demos/task0.h5")
    }
    shard.unlink()
    redone = run_micro(work, **MICRO_RUN)
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert len(read_index(shard)) == MICRO["rollouts_per_init"]  # regenerated whole
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing else was redone
    assert (res / "tables/sweep.csv").stat().st_mtime_ns > shard.stat().st_mtime_ns
