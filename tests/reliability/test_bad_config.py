"""Bad configs fail at parse time, before any job runs, with one line naming the key, the
value and what is allowed: through `ript` and through `snakemake all` alike."""

from __future__ import annotations

import json
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
    "experiment '..' (would write outside results/)": (
        {"experiment": ".."},
        ["'experiment'", "'..'", "does not match"],
    ),
    "experiment '.'": ({"experiment": "."}, ["'experiment'", "'.'", "does not match"]),
    "a suite the scripted expert does not cover, no pretrained_path": (
        {"suite": "libero_spatial"},
        ["'suite'", "'libero_spatial'", "libero_object", "pretrained_path"],
    ),
    "no object poses for the expert, no pretrained_path": (
        {"privileged_object_state": False, "state_keys": ["state"]},
        ["'privileged_object_state'", "scripted expert", "pretrained_path"],
    ),
    "one cfg_scale spelt twice": (
        {"cfg_scale": [1.0, 1.0000001]},
        ["'cfg_scale'", "1.0", "1.0000001", "'1'"],
    ),
    "one alpha_uncond spelt twice": (
        {"alpha_uncond": [0.1, 0.1000000001]},
        ["'alpha_uncond'", "0.1000000001", "'0.1'"],
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


def pretrained_with_chunks_of(tmp_path: Path, chunk_size: int) -> Path:
    """A checkpoint directory as the parse-time check sees it: its files and config.json."""
    ckpt = tmp_path / f"pi0_chunk{chunk_size}"
    ckpt.mkdir()
    for name in ("model.safetensors", "norm_stats.json", "tokenizer.json"):
        (ckpt / name).write_text("{}")
    (ckpt / "config.json").write_text(json.dumps({"model_type": "pi0", "chunk_size": chunk_size}))
    return ckpt


def cases(tmp_path: Path) -> dict[str, tuple[dict, list[str]]]:
    ckpt = pretrained_without_tokenizer(tmp_path)
    chunked = pretrained_with_chunks_of(tmp_path, 10)
    return CASES | {
        "checkpoint without a tokenizer": (
            {"pretrained_path": str(ckpt)},
            ["'pretrained_path'", repr(str(ckpt)), "no tokenizer", "tokenizer_path"],
        ),
        "chunk_size other than the checkpoint's": (
            {"pretrained_path": str(chunked), "chunk_size": 5},
            ["'chunk_size'", "5", "chunks of 10", "chunk_size: 10"],
        ),
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


@pytest.mark.parametrize(
    "name", [*CASES, "checkpoint without a tokenizer", "chunk_size other than the checkpoint's"]
)
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
    result = run_ript_label(path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert (
        result.stderr.startswith("ript label: error: ") and "'rollouts_per_init'" in result.stderr
    )
    assert not Path("y.parquet").exists()


# Files YAML accepts but that say nothing clear: an empty one meant all defaults, a key given
# twice kept its last value. (Snakemake refuses an empty --configfile by itself.)
BAD_FILES = {
    "empty file": (
        "# an experiment config, keys to follow\n",
        ["holds no keys", "experiment"],
        "Config file must be given as JSON or YAML with keys at top level",
    ),
    "a key given twice": (
        "experiment: twice\nbatch_size: 64\nseed: 1\nbatch_size: 8\n",
        ["'batch_size'", "given twice", "lines 2 and 4"],
        "invalid config",
    ),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_config_file_that_yaml_accepts_but_says_nothing_clear_is_refused(tmp_path, name):
    text, texts, snakemake_says = BAD_FILES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for t in [str(path), *texts]:
        assert t in str(caught.value), (t, str(caught.value))
    result = run_ript_label(path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert all(t in result.stderr for t in texts), result.stderr
    result = snakemake(tmp_path, "all", "-n", "--cores", "1", "--configfile", str(path))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and snakemake_says in output, output[-2000:]
    assert "Traceback" not in output


def run_ript_label(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ript", "label", "--config", str(config), "--rollouts", "x.h5", "--out", "y.parquet"],
        capture_output=True,
        text=True,
    )
