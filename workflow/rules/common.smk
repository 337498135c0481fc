# Config validation, the grid and the helpers every rule uses.
import json
import os
import shlex
from pathlib import Path

from ript.config import (
    TRACKING_ENV,
    ConfigError,
    apply_env_overrides,
    check_workflow_switches,
    coerce_numbers,
    path_number,
    read_config_file,
    validate,
)
from ript.resources import job_memory_mb
from ript.settings import (
    CfgSchedule,
    Collection,
    Evaluation,
    Expert,
    Inference,
    Labels,
    Model,
    Optimisation,
    SftSchedule,
    Simulation,
    Tracking,
    Videos,
    section_keys,
)

# An experiment config given with --configfile is the whole story: the Snakefile reads the
# embedded default only without one (Snakemake would merge the two, so every key the experiment
# leaves out would keep the default's value instead of the schema's); --config overrides still
# apply on top.
CONFIG_FILES = workflow.config_settings.configfiles or workflow.configfiles
try:
    check_workflow_switches()
    for configfile in CONFIG_FILES:  # Snakemake's reader allows empty files, repeated keys
        read_config_file(configfile)
    source = f"config ({', '.join(map(str, CONFIG_FILES))} with --config overrides)"
    config.update(validate(coerce_numbers(apply_env_overrides(config)), source=source))
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None

RESULTS = f"results/{config['experiment']}"
# Conda environment for all jobs (with --use-conda), installing the same package as pip.
ENV = "../../environment.yml"
# Jobs that run a policy (collect, evaluate) ask for one GPU when the config's device is cuda.
GPUS = 1 if config["device"] == "cuda" else 0
# Training jobs: one process per GPU under torchrun (FSDP2) when train_gpus > 1, and CPU
# threads to read and decompress their batches.
TRAIN_GPUS = config["train_gpus"] if config["device"] == "cuda" else 0
TRAIN_THREADS = 4 * TRAIN_GPUS if TRAIN_GPUS else 2
TRAIN = (
    f"torchrun --standalone --nproc-per-node {TRAIN_GPUS} -m ript.cli train"
    if TRAIN_GPUS > 1
    else "ript train"
)


def mem_mb(rule):
    """Memory of one job of `rule`, estimated from the config (ript.resources)."""
    return job_memory_mb(config, rule)


def settings(*sections, exclude=(), **fixed):
    """`--set key=value` arguments for the config keys of the step's `sections`
    (ript/settings.py): every key the step can read, so none silently takes the schema's
    default inside the job. `exclude` leaves out keys the rule hands over otherwise (e.g.
    num_parallel_envs as {threads}); `fixed` sets a key per job (a collection's task).

    Passing them as params (not the whole config file) makes Snakemake rerun a job only
    when one of its own keys changes.
    """
    keys = section_keys(*sections, exclude=exclude)
    values = {key: config[key] for key in keys} | fixed
    return " ".join(
        f"--set {shlex.quote(f'{key}={json.dumps(value)}')}"
        for key, value in values.items()
    )


# Where collect, label, train and evaluate jobs log besides their own files, ript/tracking.py
# (the rules name their jobs with --job-type). Handed to every job through the environment,
# not as params, which Snakemake compares to decide reruns: adding a logger reruns no job.
os.environ[TRACKING_ENV] = json.dumps({key: config[key] for key in Tracking.config_keys()})

# The grid: training per (cond_mode, alpha_uncond), evaluation also per cfg_scale.
COND_MODES = config["cond_mode"]
ALPHAS = [path_number(a) for a in config["alpha_uncond"]]
CFG_SCALES = [path_number(c) for c in config["cfg_scale"]]


def demo_shards():
    return expand(f"{RESULTS}/demos/task{{task}}.h5", task=config["tasks"])


def init_chunks():
    start, stop = config["train_init_states"]
    step = config["collect_init_chunk"]
    return [(a, min(a + step, stop)) for a in range(start, stop, step)]


def round_prefix(number):
    """Round 1 writes to results/<experiment>/, round r > 1 to results/<experiment>/round<r>/."""
    return "" if number == 1 else f"round{number}/"


ROUND_PREFIXES = [round_prefix(r) for r in range(1, config["rounds"] + 1)]


def round_number(wildcards):
    return int(wildcards.round[len("round") : -1]) if wildcards.round else 1


def base_policy():
    """The SFT or pretrained policy: round 1 collects with it and starts CFG training from it."""
    return config["pretrained_path"] or f"{RESULTS}/base/policy"


def start_policy(wildcards):
    """What a round collects with and trains from: the base, then the previous round's choice."""
    number = round_number(wildcards)
    if number == 1:
        return base_policy()
    return f"{RESULTS}/{round_prefix(number - 1)}chosen/policy"


def rollout_shards(wildcards):
    return [
        f"{RESULTS}/{wildcards.round}rollouts/task{task}_init{a}-{b}.h5"
        for task in config["tasks"]
        for a, b in init_chunks()
    ]


def grid_metrics(wildcards):
    return expand(
        f"{RESULTS}/{wildcards.round}eval/{{cond_mode}}_a{{alpha}}/cfg{{cfg}}/metrics.json",
        cond_mode=COND_MODES,
        alpha=ALPHAS,
        cfg=CFG_SCALES,
    )


# eval_schedule adaptive: the grid is screened and selected on separate init states
# (rules/select.smk); only the chosen point runs the evaluation init states.
ADAPTIVE = config["eval_schedule"] == "adaptive"


def screen_metrics(wildcards):
    return expand(
        f"{RESULTS}/{wildcards.round}select/screen/{{cond_mode}}_a{{alpha}}/cfg{{cfg}}/metrics.json",
        cond_mode=COND_MODES,
        alpha=ALPHAS,
        cfg=CFG_SCALES,
    )


def contend_metrics(wildcards):
    """The contend evaluations of the points `ript contenders` kept (known once it ran)."""
    from ript.select import read_contenders

    kept = read_contenders(checkpoints.contenders.get(round=wildcards.round).output[0])
    screen = f"{RESULTS}/{wildcards.round}select/screen/"
    contend = f"{RESULTS}/{wildcards.round}select/contend/"
    return [path.replace(screen, contend, 1) for path in kept]


def evaluated_points(wildcards):
    """What the round's sweep table compares with the base: every grid point (full), or the
    chosen one on the evaluation init states (adaptive)."""
    if ADAPTIVE:
        return [f"{RESULTS}/{wildcards.round}eval/chosen/metrics.json"]
    return grid_metrics(wildcards)


def choice_table(wildcards):
    """The table whose best row the next round starts from."""
    name = "selection" if ADAPTIVE else "sweep"
    return f"{RESULTS}/{wildcards.round}tables/{name}.csv"


def train_metrics(wildcards):
    return expand(
        f"{RESULTS}/{wildcards.round}train/{{cond_mode}}_a{{alpha}}/metrics.csv",
        cond_mode=COND_MODES,
        alpha=ALPHAS,
    )
