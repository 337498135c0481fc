"""Bad configs fail at parse time, before any job runs, with one line naming the key, the
value and what is allowed: through `ript` and through `snakemake all` alike."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from micro import ROOT, snakemake

from ript.config import ConfigError, load_config

DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())

# id -> (overrides of the default config, texts the one error line must hold)
CASES = {
    "unknown cond_mode": ({"cond_mode": ["film"]}, ["'cond_mode.0'", "'film'", "'token'"]),
    "negative alpha_uncond": ({"alpha_uncond": [-0.1]}, ["'alpha_uncond.0'", "-0.1", "minimum"]),
    "negative cfg_scale": ({"cfg_scale": [1.0, -2.0]}, ["'cfg_scale.1'", "-2.0", "minimum"]),
    "empty grid": ({"cfg_scale": []}, ["'cfg_scale'", "[]", "non-empty"]),
    "unknown suite": ({"suite": "libero_100"}, ["'suite'", "'libero_100'", "'libero_object'"]),
    "unknown task": ({"tasks": [0, 12]}, ["'tasks'", "[12]", "0..9"]),
    "K < 2 with RLOO": ({"rollouts_per_init": 1}, ["'rollouts_per_init'", "1", "K >= 2"]),
    "overlapping init states": (
        {"train_init_states": [0, 10], "eval_init_states": [5, 15]},
        ["'train_init_states'", "[0, 10]", "[5, 15]", "overlap"],
    ),
    "init states past 50": (
        {"eval_init_states": [40, 60]},
        ["'eval_init_states.1'", "60", "maximum of 50"],
    ),
    "missing pretrained_path": (
        {"pretrained_path": "/nonexistent/pi0"},
        ["'pretrained_path'", "'/nonexistent/pi0'", "not a directory"],
    ),
    "missing tokenizer dir": (
        {"tokenizer_path": "/nonexistent/paligemma"},
        ["'tokenizer_path'", "'/nonexistent/paligemma'", "tokenizer.json"],
    ),
    "misspelt key": ({"cfg_scales": [1.0]}, ["'cfg_scales'", "'cfg_scale'?", "allowed keys"]),
    "wrong type": ({"batch_size": "64x"}, ["'batch_size'", "'64x'", "integer"]),
    "several GPUs on CPU": (
        {"train_gpus": 2, "device": "cpu"},
        ["'train_gpus'", "2", "device: cuda", "'cpu'"],
    ),
}


def write_config(path: Path, overrides: dict) -> Path:
    path.write_text(yaml.safe_dump(DEFAULT | overrides))
    return path


def pretrained_without_tokenizer(tmp_path: Path) -> Path:
    ckpt = tmp_path / "pi0"
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors", "norm_stats.json"):
        (ckpt / name).write_text("{}")
    return ckpt


def cases(tmp_path: Path) -> dict[str, tuple[dict, list[str]]]:
    ckpt = pretrained_without_tokenizer(tmp_path)
    return CASES | {
        "checkpoint without a tokenizer": (
            {"pretrained_path": str(ckpt)},
            ["'pretrained_path'", repr(str(ckpt)), "no tokenizer", "tokenizer_path"],
        )
    }


def test_every_bad_config_raises_one_line_naming_key_value_and_allowed(tmp_path):
    for name, (overrides, texts) in cases(tmp_path).items():
        path = write_config(tmp_path / "bad.yaml", overrides)
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        message = str(caught.value)
        assert "\n" not in message, name
        assert str(path) in message, name
        for text in texts:
            assert text in message, (name, text, message)


@pytest.mark.parametrize("name", [*CASES, "checkpoint without a tokenizer"])
def test_snakemake_stops_before_any_job(tmp_path, name):
    overrides, texts = cases(tmp_path)[name]
    path = write_config(tmp_path / "bad.yaml", overrides)
    result = snakemake(tmp_path, "all", "--cores", "1", "--configfile", str(path))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "invalid config" in line]
    assert len(lines) == 1, output[-3000:]
    for text in texts:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in output
    assert not (tmp_path / "results").exists()  # no job ran


def test_a_step_given_a_bad_config_prints_one_line_and_exits_2(tmp_path):
    path = write_config(tmp_path / "bad.yaml", {"rollouts_per_init": 1})
    result = subprocess.run(
        ["ript", "label", "--config", str(path), "--rollouts", "x.h5", "--out", "y.parquet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert (
        result.stderr.startswith("ript label: error: ") and "'rollouts_per_init'" in result.stderr
    )
    assert not Path("y.parquet").exists()
