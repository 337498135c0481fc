# Config validation and the helpers every rule uses.
import shlex

import yaml

from ript.config import ConfigError, apply_env_overrides, validate

try:
    source = f"config ({', '.join(map(str, workflow.configfiles))} with --config overrides)"
    config.update(validate(apply_env_overrides(config), source=source))
except ConfigError as error:
    raise WorkflowError(f"invalid config: {error}") from None

RESULTS = f"results/{config['experiment']}"
# Conda environment for all jobs (with --use-conda), installing the same package as pip.
ENV = "../../environment.yml"


def settings(keys, **fixed):
    """`--set key=value` arguments for the config keys that a job depends on.

    Passing them as params (not the whole config file) makes Snakemake rerun a job only
    when one of its own keys changes.
    """
    values = {key: config[key] for key in keys} | fixed
    return " ".join(
        f"--set {shlex.quote(f'{key}={yaml.safe_dump(value, default_flow_style=True).strip()}')}"
        for key, value in values.items()
    )


def demo_shards():
    return expand(f"{RESULTS}/demos/task{{task}}.h5", task=config["tasks"])


# Keys that decide how an episode is simulated.
ENV_KEYS = [
    "suite", "cameras", "image_size", "privileged_object_state", "num_steps_wait",
    "max_episode_length", "replan_steps", "use_init_states", "train_init_states",
    "eval_init_states", "env_create_retries", "worker_timeout_s", "seed",
]
