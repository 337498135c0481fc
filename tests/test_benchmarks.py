"""The benchmark scripts run on the CPU with the tiny preset (their figures come from GPUs)."""

import json
import subprocess
import sys

from micro import ROOT


def test_the_training_benchmark_runs_each_kind_of_setting(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/train_memory.py"),
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--settings",
            "bf16",
            "fsdp2+ac",
            "lora+ac",
            "--out",
            str(tmp_path),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["setting"] for r in rows] == ["bf16", "fsdp2+ac", "lora+ac"]
    assert all(r["step_s"] > 0 and len(r["loss"]) == r["steps"] for r in rows), rows
    assert rows[1]["gpus"] == 2 and 0 < rows[0]["moved_fraction"] <= 1
    assert "| fsdp2+ac | 2 |" in result.stdout and (tmp_path / "train_loss.png").is_file()
