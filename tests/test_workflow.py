"""The Snakemake workflow, run for real on a micro config."""

import subprocess
from pathlib import Path

import pytest

from ript.data.episode_store import read_index

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir, *args):
    return subprocess.run(
        ["snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )


def test_lint_is_clean():
    result = subprocess.run(["snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_bad_config_fails_at_parse_time_naming_the_key(tmp_path):
    result = snakemake(
        tmp_path,
        "-n",
        "--configfile",
        str(ROOT / "config/config.yaml"),
        "--config",
        "num_steps_wait=-3",
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "invalid config" in output and "key 'num_steps_wait': -3" in output


@pytest.mark.sim
def test_micro_config_end_to_end(tmp_path):
    micro = tmp_path / "micro.yaml"
    micro.write_text(
        "experiment: micro\ntasks: [0]\ntrain_init_states: [0, 2]\n"
        "max_episode_length: 120\nnum_parallel_envs: 1\n"
    )
    result = snakemake(tmp_path, "all", "--cores", "2", "--configfile", str(micro))
    assert result.returncode == 0, result.stderr[-3000:]
    shard = tmp_path / "results/micro/demos/task0.h5"
    index = read_index(shard)
    assert list(index["init_state_index"]) == [0, 1]
    assert index["success"].all()
    assert (tmp_path / "results/micro/logs/demos/task0.log").is_file()
    assert (tmp_path / "results/micro/benchmarks/demos/task0.tsv").is_file()
    again = snakemake(tmp_path, "all", "--cores", "2", "--configfile", str(micro))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
