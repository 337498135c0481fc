"""The Snakemake workflow, run for real on a micro config."""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from micro import MICRO, ROOT, job_counts, snakemake

from ript.cli import _parse_settings
from ript.config import ConfigError, load_schema, validate
from ript.data.episode_store import read_index
from ript.rl.label import read_labels


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


@pytest.mark.parametrize("switch", ["PI0_CFG_SCALE=2", "PI0_ENABLE_DUAL=0"])
def test_a_switch_that_would_contradict_the_grid_paths_stops_the_run(tmp_path, switch):
    var, value = switch.split("=")
    config = ["--configfile", str(ROOT / "config/config.yaml")]
    result = snakemake(tmp_path, "all", "-n", *config, env={**os.environ, var: value})
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if switch in line]
    assert len(errors) == 1 and "cfg<scale>/" in errors[0], result.stderr[-2000:]


@pytest.mark.parametrize("config", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("target", ["all", "sweep"])
def test_every_config_dry_runs(tmp_path, config, target):
    settings = yaml.safe_load(config.read_text())  # both configs set the grid
    pretrained = settings.get("pretrained_path")
    args = [target, "-n", "--configfile", str(config)]
    if pretrained:
        missing = snakemake(tmp_path, *args)
        assert missing.returncode != 0
        output = missing.stdout + missing.stderr
        errors = [line for line in output.splitlines() if "pretrained_path" in line]
        assert len(errors) == 1 and repr(pretrained) in errors[0], output[-2000:]
        (tmp_path / "pi0").mkdir()
        for name in ("config.json", "model.safetensors", "norm_stats.json", "tokenizer.json"):
            (tmp_path / "pi0" / name).write_text("{}")
        args += ["--config", f"pretrained_path={tmp_path / 'pi0'}"]
    result = snakemake(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_counts(result.stdout)
    rounds = settings.get("rounds", 1)
    grid = len(settings["cond_mode"]) * len(settings["alpha_uncond"]) * rounds
    evaluations = grid * len(settings["cfg_scale"])
    assert jobs["train"] == grid
    if settings.get("eval_schedule") == "adaptive":  # the screens; the rest after `contenders`
        assert "evaluate" not in jobs and jobs["evaluate_selection"] == evaluations
        assert jobs["contenders"] == jobs["evaluate_chosen"] == rounds
    else:
        assert jobs["evaluate"] == evaluations
    assert ("bootstrap" in jobs) == (not pretrained)


def job_settings(dry_run_output: str) -> list[tuple[str, dict]]:
    """(command, its `--set` settings) of every `ript` job a `snakemake -n -p` run prints."""
    jobs = []
    for line in dry_run_output.splitlines():
        command = line.strip().removeprefix("Shell command:").strip()
        words = shlex.split(command) if command.startswith(("ript ", "torchrun ")) else []
        pairs = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]
        if words:
            jobs.append((command[:80], _parse_settings(pairs)))
    return jobs


@pytest.mark.parametrize("config", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_job_gets_settings_that_validate_on_their_own(tmp_path, config):
    """A job sees only the keys its rule passes (schema defaults for the rest): they must
    pass the same checks the whole config passed, e.g. camera_keys with cameras."""
    (tmp_path / "pi0").mkdir()
    for name in ("config.json", "model.safetensors", "norm_stats.json", "tokenizer.json"):
        (tmp_path / "pi0" / name).write_text("{}")
    result = snakemake(
        tmp_path, "all", "-n", "-p", "--configfile", str(config),
        *(["--config", f"pretrained_path={tmp_path / 'pi0'}"]
          if "pretrained_path" in config.read_text() else []),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_settings(result.stdout)
    assert len(jobs) > 5
    for command, settings in jobs:
        try:
            validate(settings, source=command)
        except ConfigError as error:
            if "pretrained_path" not in str(error):  # a fake checkpoint, not a settings gap
                raise


@pytest.mark.parametrize("name", ["micro", "pi0_libero.yaml"])
def test_a_configfile_replaces_the_embedded_default(tmp_path, name):
    """Keys the experiment config leaves out take the schema's defaults, not config.yaml's."""
    if name == "micro":
        config = tmp_path / "micro.yaml"
        config.write_text(yaml.safe_dump(MICRO))
    else:
        config = ROOT / "config" / name
    ours = yaml.safe_load(config.read_text())
    defaults = {key: spec.get("default") for key, spec in load_schema()["properties"].items()}
    embedded = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    only_embedded = {k for k, v in embedded.items() if k not in ours and v != defaults[k]}
    assert only_embedded, "nothing to tell the two apart"
    # the Snakefile's `configfile:` is read relative to the working directory, as in a checkout
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config/config.yaml", tmp_path / "config/config.yaml")
    (tmp_path / "pi0").mkdir()
    for file in ("config.json", "model.safetensors", "norm_stats.json", "tokenizer.json"):
        (tmp_path / "pi0" / file).write_text("{}")
    result = snakemake(
        tmp_path, "all", "-n", "-p", "--configfile", str(config),
        "--config", f"pretrained_path={tmp_path / 'pi0'}" if "pretrained_path" in ours
        else "seed=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is extended by" not in result.stdout + result.stderr  # nothing merged, nothing said
    seen = set()
    for command, settings in job_settings(result.stdout):
        for key in only_embedded & settings.keys():
            assert settings[key] == defaults[key], (command, key, settings[key])
            seen.add(key)
    assert seen, f"no job carries any of {sorted(only_embedded)}"


@pytest.mark.sim
def test_micro_config_end_to_end(micro_run):
    tmp_path = micro_run
    run = ["--cores", "2", "--configfile", str(tmp_path / "micro.yaml")]
    res = tmp_path / "results/micro"
    index = read_index(res / "demos/task0.h5")
    assert list(index["init_state_index"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for name in ("logs/demos/task0.log", "benchmarks/demos/task0.tsv", "logs/bootstrap.log"):
        assert (res / name).is_file(), name
    assert sorted(p.name for p in (res / "rollouts").glob("*.h5")) == [
        f"task0_init{i}-{i + 1}.h5" for i in range(4)
    ]
    labels, summary = read_labels(res / "labels.parquet")
    assert labels["is_positive"].any(), summary.line()  # CFG training has something to learn
    # the table's numbers are the per-run metrics.json numbers
    table = pd.read_csv(res / "tables/sweep.csv")
    assert table["policy"].tolist() == ["base", "cfg", "cfg"]
    for row in table.itertuples():
        m = json.loads(
            Path(row.metrics).read_text()
            if Path(row.metrics).is_absolute()
            else (tmp_path / row.metrics).read_text()
        )
        o = m["overall"]
        assert (row.successes, row.n) == (o["successes"], o["n"])
        assert row.success_rate == pytest.approx(o["success_rate"])
        assert (row.ci95_low, row.ci95_high) == pytest.approx((o["ci95_low"], o["ci95_high"]))
    assert table["best"].sum() == 1
    assert "| **best** cfg |" in (res / "tables/sweep.md").read_text()
    for plot in ("success_vs_cfg", "heatmap", "training_curves"):
        assert (res / f"plots/{plot}.png").stat().st_size > 10_000, plot
    # n_video: 2 -> two videos per collection job, two per evaluation, and a page with a
    # success and a failure of each policy (where its two recorded episodes have both)
    assert len(list((res / "rollouts/videos").glob("*.mp4"))) == 2 * 4
    evaluations = [res / "eval/base/metrics.json", *map(Path, table["metrics"][1:])]
    for path in evaluations:
        videos = json.loads((tmp_path / path).read_text())["videos"]
        assert len(videos) == 2 and all(
            (tmp_path / v["path"]).stat().st_size > 1000 for v in videos
        )
    page = (res / "videos.html").read_text()
    assert page.count("<section>") == len(evaluations) and "data:video/mp4;base64," in page
    report = snakemake(tmp_path, *run, "--report", str(res / "report.html"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (res / "report.html").stat().st_size > 100_000
    assert "videos.html" in (res / "report.html").read_text()
    again = snakemake(tmp_path, "all", *run)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # one more cfg_scale: only its evaluation and the tables/plots run
    more = snakemake(tmp_path, "all", "-n", *run, "--config", "cfg_scale=[1.0,2.0,3.0]")
    assert job_counts(more.stdout) == {
        "all": 1,
        "evaluate": 1,
        "plots": 1,
        "tables": 1,
        "videos": 1,
    }
    # a training key: retrain and re-evaluate the grid, nothing upstream
    retrain = snakemake(tmp_path, "all", "-n", *run, "--config", "train_steps=12")
    assert job_counts(retrain.stdout) == {
        "all": 1,
        "evaluate": 2,
        "plots": 1,
        "tables": 1,
        "train": 1,
        "videos": 1,
    }


@pytest.mark.sim
def test_every_key_a_step_reads_reaches_it_from_its_rule(micro_run):
    """A key the step reads but its rule does not pass would silently take the schema's
    default inside the job, whatever the experiment config says."""
    records = [
        json.loads(line) for line in (micro_run / "config_keys.jsonl").read_text().splitlines()
    ]
    steps = {Path(r["argv"][0]).name + " " + r["argv"][1] for r in records}
    assert {"ript collect", "ript train", "ript label", "ript evaluate"} <= steps, steps
    gaps = {
        " ".join(r["argv"][1:4]): sorted(set(r["read"]) - set(r["given"]))
        for r in records
        if set(r["read"]) - set(r["given"])
    }
    assert not gaps


def test_train_gpus_run_training_under_torchrun(tmp_path):
    ckpt = tmp_path / "pi0"
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors", "norm_stats.json", "tokenizer.json"):
        (ckpt / name).write_text("{}")
    config = ["--configfile", str(ROOT / "config/pi0_libero.yaml")]
    for gpus, launcher in (
        (1, "ript train --mode cfg"),
        (4, "torchrun --standalone --nproc-per-node 4 -m ript.cli train --mode cfg"),
    ):
        result = snakemake(
            tmp_path, "all", "-n", "-p", *config, "--config", f"pretrained_path={ckpt}",
            f"train_gpus={gpus}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        commands = [line for line in result.stdout.splitlines() if "--mode cfg" in line]
        assert commands and all(launcher in line for line in commands), commands[:1]
        assert f"gpu={gpus}" in result.stdout


ADAPTIVE = [
    "rounds=2", "eval_schedule=adaptive", "screen_init_states=[4,6]",
    "contend_init_states=[6,8]", "select_rollouts_per_init=1",
]  # fmt: skip


@pytest.mark.sim
def test_a_second_round_collects_with_the_point_chosen_on_selection_episodes(micro_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(micro_run, work, symlinks=True)
    run = ["--cores", "2", "--configfile", str(work / "micro.yaml"), "--config", *ADAPTIVE]
    plan = snakemake(work, "all", "-n", *run)
    assert job_counts(plan.stdout) == {  # round 1's training and base evaluation are reused
        "all": 1, "evaluate_selection": 4, "contenders": 2, "select": 2, "choose": 2,
        "evaluate_chosen": 2, "tables": 2, "plots": 2, "collect": 4, "label": 1, "train": 1,
        "rounds_table": 1, "videos": 2,
    }  # fmt: skip
    result = snakemake(work, "all", *run)
    assert result.returncode == 0, result.stderr[-3000:]
    res = work / "results/micro"

    def metrics(path):
        return json.loads((res / path).read_text())

    # every grid point screened on init states 4-5, the contenders also on 6-7
    for cfg in ("1", "2"):
        screened = metrics(f"select/screen/bias_a0.1/cfg{cfg}/metrics.json")["settings"]
        assert (screened["init_states"], screened["rollouts_per_init"]) == ([4, 6], 1)
    kept = json.loads((res / "select/contenders.json").read_text())["contenders"]
    selection = pd.read_csv(res / "tables/selection.csv")
    assert selection["contender"].sum() == len(kept) >= 1
    for path in kept:
        contend = json.loads((work / path.replace("/screen/", "/contend/")).read_text())
        assert contend["settings"]["init_states"] == [6, 8]
    chosen_row = selection.query("best").iloc[0]
    choice = json.loads((res / "chosen/choice.json").read_text())
    assert (choice["cfg_scale"], choice["n"]) == (chosen_row.cfg_scale, chosen_row.n)
    chosen, trained = res / "chosen/policy", work / choice["policy"]
    assert (chosen / "model.safetensors").stat().st_ino == (
        trained / "model.safetensors"
    ).stat().st_ino  # a hard link, not a second copy of the weights
    assert json.loads((chosen / "policy.json").read_text())["cfg_scale"] == choice["cfg_scale"]
    # only the chosen point ran the evaluation init states, at its cfg_scale, paired with the base
    final = metrics("eval/chosen/metrics.json")
    assert final["settings"]["init_states"] == [25, 27]
    assert final["settings"]["cfg_scale"] == choice["cfg_scale"]
    sweep = pd.read_csv(res / "tables/sweep.csv")
    assert sweep["policy"].tolist() == ["base", "cfg"] and sweep["diff_interval"][1] == "paired"
    assert sweep["success_rate"][1] == final["overall"]["success_rate"]
    # round 2 collected with the chosen policy at its cfg_scale, under other seeds
    first = read_index(res / "rollouts/task0_init0-1.h5")
    second = read_index(res / "round2/rollouts/task0_init0-1.h5")
    assert set(second["policy_id"]) == {f"chosen/policy(cfg_scale={choice['cfg_scale']:g})"}
    assert not set(first["seed"]) & set(second["seed"])
    train_settings = json.loads(
        (res / "round2/train/bias_a0.1/policy/train_settings.json").read_text()
    )
    assert (work / train_settings["init"]).resolve() == chosen.resolve()
    rounds = pd.read_csv(res / "tables/rounds.csv")
    assert rounds["round"].tolist() == [1, 2]
    second_final = metrics("round2/eval/chosen/metrics.json")["overall"]
    assert rounds["success_rate"].tolist() == [
        final["overall"]["success_rate"],
        second_final["success_rate"],
    ]
    assert rounds["diff_vs_start"].notna().all()  # every round pairs with the one before
    assert (res / "round2/plots/success_vs_cfg.png").stat().st_size > 10_000
    text = (res / "tables/rounds.md").read_text()
    assert "| 2 | bias |" in text and "chosen on selection episodes" in text
    again = snakemake(work, "all", "-n", *run)  # choosing touched nothing upstream
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def job_resources(dry_run_output: str) -> dict[str, set[str]]:
    """Rule -> the distinct `resources:` lines of its jobs in a dry run."""
    found: dict[str, set[str]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            found.setdefault(rule, set()).add(line.strip())
    return found


@pytest.mark.parametrize("device, train_gpus", [("cuda", 2), ("cpu", 1)])
def test_jobs_ask_the_cluster_for_the_gpus_and_memory_their_config_needs(
    tmp_path, device, train_gpus
):
    result = snakemake(
        tmp_path, "all", "-n", "--configfile", str(ROOT / "config/config.yaml"),
        "--config", f"device={device}", f"train_gpus={train_gpus}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    resources = job_resources(result.stdout)
    gpus = {"collect": 1, "evaluate": 1, "evaluate_base": 1, "bootstrap": 2, "train": 2}
    for rule, lines in resources.items():
        (line,) = lines  # every job of a rule asks for the same
        want = gpus.get(rule, 0) if device == "cuda" else 0
        asked = re.search(r"gpu=(\d+)", line)
        assert (int(asked.group(1)) if asked else 0) == want, line
        if rule in ("demos", "collect", "evaluate", "evaluate_base", "bootstrap", "train"):
            assert "mem_mb=" in line, line  # from the config, not the profile
    assert set(gpus) <= set(resources)
