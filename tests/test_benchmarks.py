"""The benchmark scripts run on the CPU with the tiny preset (their figures come from GPUs)."""

import json
import subprocess
import sys

from micro import ROOT


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """`python benchmarks/<script> ARGS`, which must exit 0."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_training_benchmark_runs_each_kind_of_setting(tmp_path):
    result = run_benchmark(
        "train_memory.py", "--preset", "tiny", "--device", "cpu",
        "--settings", "bf16", "fsdp2+ac", "lora+ac", "--out", str(tmp_path),
    )  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["setting"] for r in rows] == ["bf16", "fsdp2+ac", "lora+ac"]
    assert all(r["step_s"] > 0 and len(r["loss"]) == r["steps"] for r in rows), rows
    assert rows[1]["gpus"] == 2 and 0 < rows[0]["moved_fraction"] <= 1
    assert "| fsdp2+ac | 2 |" in result.stdout and (tmp_path / "train_loss.png").is_file()


def test_the_throughput_benchmark_compares_engines_with_bare_simulators(tmp_path):
    result = run_benchmark(
        "env_throughput.py", "--workers", "1", "--cameras", "off", "--policies", "expert",
        "tiny", "--episodes-per-worker", "1", "--length", "15", "--bare-steps", "15",
        "--worker-nice", "5", "--max-wait-ms", "0", "5",
        "--out", str(tmp_path / "rows.json"),
    )  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    variants = [
        (r["policy"], r["engine"], r.get("worker_nice"), r.get("max_wait_ms")) for r in rows
    ]
    assert variants == [
        ("-", "bare", None, None),
        ("expert", "lockstep", 0, None),
        ("expert", "async", 0, 5),
        ("tiny", "lockstep", 5, None),
        ("tiny", "async", 5, 0),
        ("tiny", "async", 5, 5),
    ]
    assert all(r["rate"] > 0 for r in rows)
    # one worker: every call serves one episode, and the calls were timed
    assert all(r["mean_batch"] == 1 and r["ms_per_call"] > 0 for r in rows[3:]), rows
    assert "| 1 | off | tiny | async | 5 | 0 |" in result.stdout


def test_the_policy_call_benchmark_splits_a_call(tmp_path):
    result = run_benchmark(
        "policy_call.py", "--preset", "tiny", "--device", "cpu", "--batch", "2",
        "--cameras", "0", "2", "--image-size", "32", "--cfg-scale", "3", "--repeats", "1",
        "--out", str(tmp_path / "rows.json"),
    )  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [(r["cameras"], r["batch"], r["cfg_scale"]) for r in rows] == [(0, 2, 3.0), (2, 2, 3.0)]
    for r in rows:
        assert r["call_ms"] > 0 and r["prepare_ms"] > 0 and r["sample_ms"] > 0
        assert abs(r["call_ms"] - r["prepare_ms"] - r["sample_ms"] - r["other_ms"]) < 1e-6
    assert "| 2 | 2 | 3 |" in result.stdout


def test_the_fit_benchmark_reads_a_finished_run(micro_run, tmp_path):
    res = micro_run / "results/micro"
    run_benchmark(
        "cfg_fit.py", "--config", str(micro_run / "micro.yaml"),
        "--base", str(res / "base/policy"),
        "--trained", f"bias={res / 'train/bias_a0.1/policy'}",
        "--labels", str(res / "labels.parquet"),
        "--heldout", *map(str, sorted((res / "rollouts").glob("*.h5"))),
        "--draws", "1", "--stride", "20", "--out", str(tmp_path / "rows.json"),
    )  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    sets = {r["set"] for r in rows}
    assert sets == {"trained-on positives", "held-out successes", "held-out failures"}
    assert {r["branch"] for r in rows} == {"positive", "uncond"}
    assert all(r["loss"] > 0 and r["episodes"] > 0 for r in rows)


def test_the_frame_storage_benchmark_reads_a_shard(tmp_path):
    from helpers import make_episode, moving_frames

    from ript.data.episode_store import write_shard

    episode = make_episode(0, t=20)
    for key in ("agentview_rgb", "eye_in_hand_rgb"):
        episode.obs[key] = moving_frames(20)
    shard = tmp_path / "shard.h5"
    write_shard(shard, [episode], policy_id="expert")
    result = run_benchmark("frame_storage.py", "--shard", str(shard))
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    codecs = {row[0].strip(): row[-1].strip() for row in rows[1:]}
    assert codecs["gzip"] == codecs["delta"] == "lossless"
    assert codecs["jpeg"].endswith("dB")
