"""TensorBoard and W&B logging: what the micro run's jobs wrote there equals their own files."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
from micro import snakemake

from ript.config import TRACKING_ENV, ConfigError, load_config, validate
from ript.data.episode_store import read_index
from ript.rl.label import read_labels
from ript.tracking import job_name

TB_SIZE_GUIDANCE = {"scalars": 0, "histograms": 0, "images": 0}  # 0: keep every event


def test_a_job_is_named_by_its_output_under_the_experiment():
    assert job_name("results/exp/train/bias_a0.1", "exp") == (
        Path("results/exp"),
        "train/bias_a0.1",
    )
    assert job_name("results/exp/round2/eval/bias_a0.1/cfg3/metrics.json", "exp")[1] == (
        "round2/eval/bias_a0.1/cfg3"
    )
    assert job_name("/w/results/exp/rollouts/task0_init0-10.h5", "exp") == (
        Path("/w/results/exp"),
        "rollouts/task0_init0-10",
    )
    # a step run by hand outside results/<experiment>/: beside its output
    assert job_name("/tmp/run/labels.parquet", "exp") == (Path("/tmp/run"), "labels")


def test_a_logger_whose_package_is_missing_fails_when_the_config_is_read(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"key 'loggers'.*pip install -e '\.\[wandb\]'"):
        validate({"loggers": ["csv", "wandb"]})
    with pytest.raises(ConfigError, match="lacks csv"):
        validate({"loggers": ["tensorboard"]})


def test_the_workflow_hands_its_jobs_the_tracking_keys_in_the_environment(monkeypatch):
    monkeypatch.setenv(TRACKING_ENV, json.dumps({"loggers": ["csv", "tensorboard"]}))
    assert load_config(None)["loggers"] == ["csv", "tensorboard"]
    assert load_config(None, {"loggers": ["csv"]})["loggers"] == ["csv"]  # --set wins
    monkeypatch.setenv(TRACKING_ENV, json.dumps({"tasks": [1]}))
    with pytest.raises(ConfigError, match="RIPT_TRACKING: expected a JSON object of"):
        load_config(None)


# --- reading the runs back ---------------------------------------------------------------


def wandb_records(path: Path):
    """The records of a W&B run file (.wandb): a 7-byte header, then LevelDB-log records in
    32 KiB blocks (checksum, length, type: full, first, middle, last), each a protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_runs(results: Path) -> dict[str, dict]:
    """name -> {group, job_type, config, history (list of step dicts)} of every offline run."""
    runs = {}
    for path in results.glob("wandb/offline-run-*/run-*.wandb"):
        run = {"history": [], "files": path.parent / "files"}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run |= dict(group=r.run_group, job_type=r.job_type, name=r.display_name)
                run["config"] = {i.key: json.loads(i.value_json) for i in r.config.update}
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                run["history"].append({k: json.loads(v) for k, v in items.items()})
        runs[run["name"]] = run
    return runs


def tensorboard_run(results: Path, job: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(results / "tb" / job), size_guidance=TB_SIZE_GUIDANCE)
    events.Reload()
    return events


def scalars(events, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


def wandb_values(run: dict, key: str) -> dict[int, object]:
    return {row["_step"]: row[key] for row in run["history"] if key in row}


@pytest.fixture(scope="module")
def logged(micro_run):
    """The micro run's results, its W&B runs by name, and its config."""
    results = micro_run / "results/micro"
    return results, wandb_runs(results)


@pytest.mark.sim
def test_training_curves_in_tensorboard_and_wandb_equal_metrics_csv(logged):
    results, runs = logged
    for job, job_type in (("base", "bootstrap"), ("train/bias_a0.1", "train")):
        with (results / job / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        events, run = tensorboard_run(results, job), runs[job]
        assert (run["group"], run["job_type"]) == ("micro", job_type)
        for column in ("loss", "loss_pos", "loss_uncond", "grad_norm", "lr", "samples_per_s"):
            expected = {int(r["step"]): float(r[column]) for r in rows}
            tb = scalars(events, f"train/{column}")
            wb = wandb_values(run, f"train/{column}")
            assert tb.keys() == wb.keys() == expected.keys(), (job, column)
            for step, value in expected.items():
                assert tb[step] == pytest.approx(value, rel=1e-5), (job, column, step)
                assert wb[step] == pytest.approx(value, rel=1e-5), (job, column, step)
        assert scalars(events, "train/nonfinite_steps")[len(rows)] == 0
    # under Snakemake (no progress bar) the job's log gets the bar's figures as lines
    lines = (results / "logs/train/bias_a0.1.log").read_text().splitlines()
    progress = [line for line in lines if "train cfg bias_a0.1: step" in line]
    last = re.search(r"step 10/10 \(100%\), loss ([\d.]+) \(pos", progress[-1])
    assert len(progress) == 10 and "ETA 0:00:00" in progress[-1], progress
    assert float(last[1]) == pytest.approx(float(rows[-1]["loss"]), abs=1e-4)
    config = runs["train/bias_a0.1"]["config"]
    assert (config["cond_mode"], config["alpha_uncond"], config["train_steps"]) == (
        "bias",
        0.1,
        10,
    )


@pytest.mark.sim
def test_labels_collections_and_evaluations_log_their_summaries_and_videos(logged):
    results, runs = logged
    _, summary = read_labels(results / "labels.parquet")
    table, _ = read_labels(results / "labels.parquet")
    events, run = tensorboard_run(results, "labels"), runs["labels"]
    for key in ("groups", "groups_kept", "episodes_kept", "rows", "positive_rows"):
        assert scalars(events, f"label/{key}")[0] == getattr(summary, key)
        assert wandb_values(run, f"label/{key}")[0] == getattr(summary, key)
    (histogram,) = events.Histograms("label/advantage")
    assert histogram.histogram_value.num == len(table)
    assert histogram.histogram_value.sum == pytest.approx(table["advantage"].sum(), abs=1e-6)

    index = read_index(results / "rollouts/task0_init0-1.h5")
    run = runs["rollouts/task0_init0-1"]
    assert run["job_type"] == "collect"
    rate = wandb_values(run, "rollouts/success_rate")[0]
    assert rate == pytest.approx(index["success"].mean())
    assert wandb_values(run, "rollouts/n")[0] == len(index)

    job = "eval/bias_a0.1/cfg2"
    metrics = json.loads((results / job / "metrics.json").read_text())
    events, run = tensorboard_run(results, job), runs[job]
    assert run["config"]["cfg_scale"] == 2.0
    for key in ("success_rate", "ci95_low", "ci95_high", "n", "mean_episode_length"):
        assert scalars(events, f"rollouts/{key}")[0] == pytest.approx(metrics["overall"][key])
        assert wandb_values(run, f"rollouts/{key}")[0] == pytest.approx(metrics["overall"][key])
    task = metrics["per_task"]["0"]["success_rate"]
    assert wandb_values(run, "rollouts/task0/success_rate")[0] == pytest.approx(task)
    ms = metrics["inference"]["mean_ms_per_chunk"]
    assert scalars(events, "rollouts/ms_per_chunk")[0] == pytest.approx(ms, rel=1e-5)
    # the evaluation's two saved videos: GIFs in TensorBoard, the mp4 files in W&B
    videos = metrics["videos"]
    tags = [t for t in events.Tags()["images"] if t.startswith("rollouts/video/")]
    assert len(tags) == len(videos) == 2
    (image,) = events.Images(tags[0])
    assert image.encoded_image_string[:6] == b"GIF89a"
    logged_videos = [
        (row[f"{key}/path"], row[f"{key}/size"])
        for row in run["history"]
        for key in {k.rsplit("/", 1)[0] for k in row if k.startswith("rollouts/video/")}
        if row[f"{key}/_type"] == "video-file"
    ]
    sizes = sorted((results.parents[1] / v["path"]).stat().st_size for v in videos)
    assert sorted(size for _, size in logged_videos) == sizes
    assert all((run["files"] / path).stat().st_size == size for path, size in logged_videos)


@pytest.mark.sim
def test_changing_the_loggers_reruns_no_finished_job(micro_run):
    again = snakemake(
        micro_run, "all", "-n", "--cores", "2", "--configfile", str(micro_run / "micro.yaml"),
        "--config", "loggers=[csv]",
    )  # fmt: skip
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_training_on_a_gpu_also_logs_its_peak_memory(monkeypatch):
    # the GPU-only value, on a stand-in for a trainer whose policy sits on a GPU
    import torch

    from ript.rl.train import Trainer

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 * 2**30)
    row = {"step": 7, "loss": 0.5, "lr": 1e-4}
    on = SimpleNamespace(policy=SimpleNamespace(device=torch.device("cuda", 0)))
    assert Trainer.tracked_values(on, row) == {
        "train/loss": 0.5,
        "train/lr": 1e-4,
        "train/gpu_memory_gib": 3.0,
    }
    on.policy.device = torch.device("cpu")
    assert "train/gpu_memory_gib" not in Trainer.tracked_values(on, row)
