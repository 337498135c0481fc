"""Experiment config: one YAML file validated against `config.schema.yaml`.

Defaults live in the schema only. `PI0_*` environment switches of the original notes
override the matching keys, and say so in the log.
"""

from __future__ import annotations

import atexit
import difflib
import itertools
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ript.checkpoint import (
    CHECKPOINT_FILES,
    TOKENIZER_FILES,
    checkpoint_chunk_size,
    checkpoint_render_size,
    has_tokenizer,
    missing_files,
)
from ript.envs.suites import EXPERT_SUITES, NUM_FIXED_INIT_STATES, SUITE_NUM_TASKS
from ript.settings import Tracking
from ript.tracking import install_hint, missing_packages

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(str(files("ript") / "config.schema.yaml"))

# environment variable -> (config key, parser)
ENV_OVERRIDES: dict[str, tuple[str, Any]] = {
    "PI0_DISABLE_INIT_STATES": (
        "use_init_states",
        lambda v: v.strip() not in ("1", "true", "True"),
    ),
    "PI0_N_VIDEO": ("n_video", int),
    "PI0_VIDEO_DIR": ("video_dir", str),
    "PI0_RENDER_SOURCE": ("render_source", str),
}


class ConfigError(ValueError):
    """A config key or value that is not allowed; the message names both."""


def load_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open() as f:
        return yaml.safe_load(f)


def _fill_defaults(config: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    filled = dict(config)
    for key, spec in schema["properties"].items():
        if key not in filled and "default" in spec:
            filled[key] = spec["default"]
    return filled


def validate(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return the config with defaults filled in, or raise ConfigError naming the bad key."""
    if not isinstance(config, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys to values, got {type(config).__name__}"
        )
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("\n".join(_describe(e, source) for e in errors))
    config = _fill_defaults(_apply_protocol(config, source), schema)
    _check_cross_keys(config, source)
    return config


# openpi's examples/libero/main.py: every init state once per task, env.seed(7) (the seed is
# applied by `ript evaluate`), the suite's max steps, 10 wait steps, replanning every 5 steps,
# and LIBERO's OffScreenRenderEnv, which resets hard
OPENPI_PROTOCOL: dict[str, Any] = {
    "eval_init_states": [0, 50],
    "eval_rollouts_per_init": 1,
    "max_episode_length": None,
    "num_steps_wait": 10,
    "replan_steps": 5,
    "use_init_states": True,
    "hard_reset": True,
    "eval_schedule": "full",
}


def _apply_protocol(config: dict[str, Any], source: str) -> dict[str, Any]:
    """eval_protocol: openpi's keys, set; one the config sets otherwise is refused."""
    if config.get("eval_protocol") != "openpi":
        return config
    for key, value in OPENPI_PROTOCOL.items():
        if key in config and config[key] != value:
            raise ConfigError(
                f"{source}: key '{key}': {config[key]!r} but eval_protocol: openpi runs "
                f"{value!r}; remove the key or use eval_protocol: paired"
            )
    return {**config, **OPENPI_PROTOCOL}


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema["properties"])
        unknown = sorted(set(error.instance) - set(allowed))
        hints = [
            f"{key!r} -> {close[0]!r}?"
            for key in unknown
            if (close := difflib.get_close_matches(key, allowed, n=1))
        ]
        hint = f" (did you mean {', '.join(hints)})" if hints else ""
        return f"{source}: unknown key(s) {unknown}{hint}; allowed keys: {allowed}"
    if error.validator == "contains" and path == "loggers":
        return (
            f"{source}: key 'loggers': {error.instance} lacks csv, which is always written "
            "(the tables read metrics.csv and metrics.json); add it"
        )
    return f"{source}: key '{path}': {error.message}"


def path_number(value: float) -> str:
    """The one spelling of a float in paths, wildcards and tables: 0.1, 1, 1.5, 1e-05."""
    return f"{float(value):g}"


def _check_grid_values(config: dict[str, Any], source: str) -> None:
    """Two values that share a spelling would share a results directory and a table row."""
    for key in ("cfg_scale", "alpha_uncond"):
        seen: dict[str, float] = {}
        for value in config[key]:
            spelling = path_number(value)
            if spelling in seen:
                raise ConfigError(
                    f"{source}: key '{key}': {seen[spelling]!r} and {value!r} are the same value "
                    f"to 6 significant digits (both {spelling!r} in paths and tables); keep one"
                )
            seen[spelling] = value


def _check_bootstrap(config: dict[str, Any], source: str) -> None:
    """Without pretrained_path the base is trained on the scripted expert's demonstrations,
    which exist only for the suites it was written for and need the object poses."""
    if config["pretrained_path"] is not None:
        return
    if config["suite"] not in EXPERT_SUITES:
        raise ConfigError(
            f"{source}: key 'suite': {config['suite']!r} without pretrained_path; the base "
            f"policy is bootstrapped from the scripted expert, which covers only "
            f"{', '.join(EXPERT_SUITES)}. Set pretrained_path to a policy for this suite"
        )
    if not config["privileged_object_state"]:
        raise ConfigError(
            f"{source}: key 'privileged_object_state': false without pretrained_path; the "
            "scripted expert that records the demonstrations reads the object poses. Set it "
            "to true or set pretrained_path"
        )


def _check_chunk_size(config: dict[str, Any], source: str) -> None:
    """Training targets are chunks of the checkpoint's length; another length would be
    zero-padded (training towards no motion) or fail deep inside the model."""
    path = config["pretrained_path"]
    saved = checkpoint_chunk_size(path) if path is not None else None
    if saved is not None and saved != config["chunk_size"]:
        raise ConfigError(
            f"{source}: key 'chunk_size': {config['chunk_size']} but the checkpoint at "
            f"pretrained_path {path!r} predicts chunks of {saved} actions; set chunk_size: "
            f"{saved}"
        )


def _check_cross_keys(config: dict[str, Any], source: str) -> None:
    suite = config["suite"]
    n_tasks = SUITE_NUM_TASKS[suite]
    bad = [t for t in config["tasks"] if t >= n_tasks]
    if bad:
        raise ConfigError(
            f"{source}: key 'tasks': task ids {bad} do not exist in {suite}; "
            f"valid: 0..{n_tasks - 1}"
        )
    ranges = {
        key: _init_range(config, key, source) for key in ("train_init_states", "eval_init_states")
    }
    if config["eval_protocol"] == "paired":  # openpi's evaluates every init state
        _refuse_overlap(
            ranges, "train_init_states", "eval_init_states", source,
            "training rollouts must not start from evaluation init states",
        )  # fmt: skip
    if config["eval_schedule"] == "adaptive":
        _check_selection_ranges(config, ranges, source)
    if config["weight_mode"] == "binary" and config["label_granularity"] != "episode":
        raise ConfigError(
            f"{source}: key 'label_granularity': {config['label_granularity']!r} under "
            "weight_mode: binary gives every step its episode's label (w_pos = 1[A > 0] and "
            "the window discount keeps A's sign); set label_granularity: episode, or "
            "weight_mode: continuous, where the discount weights the steps"
        )
    if config["rollouts_per_init"] < 2:
        raise ConfigError(
            f"{source}: key 'rollouts_per_init': {config['rollouts_per_init']} rollout per init "
            "state; RLOO needs K >= 2 rollouts sharing a start"
        )
    if config["camera_keys"] and not config["cameras"]:
        raise ConfigError(
            f"{source}: key 'camera_keys': {config['camera_keys']} need rendered cameras but "
            "'cameras' is false"
        )
    privileged = [k for k in config["state_keys"] if k.startswith("privileged_")]
    if privileged and not config["privileged_object_state"]:
        raise ConfigError(
            f"{source}: key 'state_keys': {privileged} need privileged_object_state: true"
        )
    if config["train_gpus"] > 1 and config["device"] != "cuda":
        raise ConfigError(
            f"{source}: key 'train_gpus': {config['train_gpus']} GPUs per training job need "
            f"device: cuda, not {config['device']!r}"
        )
    _check_checkpoint_paths(config, source)
    _check_chunk_size(config, source)
    _check_bootstrap(config, source)
    _check_grid_values(config, source)
    missing = missing_packages(config["loggers"])
    if missing:
        raise ConfigError(f"{source}: key 'loggers': {install_hint(missing)}")
    if config["n_video"] > 0 and config["render_source"] == "obs" and not config["cameras"]:
        raise ConfigError(
            f"{source}: key 'render_source': 'obs' takes video frames from the camera "
            "observation but 'cameras' is false; set render_source: render (or cameras: true)"
        )


def _init_range(config: dict[str, Any], key: str, source: str) -> tuple[int, int]:
    start, stop = config[key]
    if not 0 <= start < stop <= NUM_FIXED_INIT_STATES:
        raise ConfigError(
            f"{source}: key '{key}': {[start, stop]} is not a half-open range "
            f"[start, stop) with 0 <= start < stop <= {NUM_FIXED_INIT_STATES}"
        )
    return start, stop


def _refuse_overlap(
    ranges: dict[str, tuple[int, int]], first: str, second: str, source: str, why: str
) -> None:
    (a0, a1), (b0, b1) = ranges[first], ranges[second]
    if a0 < b1 and b0 < a1:
        raise ConfigError(
            f"{source}: keys '{first}' {[a0, a1]} and '{second}' {[b0, b1]} overlap; {why}"
        )


def _check_selection_ranges(
    config: dict[str, Any], ranges: dict[str, tuple[int, int]], source: str
) -> None:
    """Adaptive evaluation selects on init states that neither training nor the final
    comparison uses (`ranges`: theirs), so the chosen point's interval against the base
    stays honest."""
    selection = ("screen_init_states", "contend_init_states")
    for key in selection:
        if config[key] is None:
            raise ConfigError(
                f"{source}: key '{key}' is not set; eval_schedule: adaptive selects on it "
                "(a half-open range [start, stop) of init states, e.g. [10, 15])"
            )
    others = tuple(ranges)
    ranges = ranges | {key: _init_range(config, key, source) for key in selection}
    pairs = [*itertools.combinations(selection, 2), *itertools.product(selection, others)]
    for first, second in pairs:
        _refuse_overlap(
            ranges, first, second, source,
            "adaptive evaluation needs disjoint init states for the screen, the contenders, "
            "training and the final comparison",
        )  # fmt: skip


def _check_checkpoint_paths(config: dict[str, Any], source: str) -> None:
    """A pretrained base must be a complete local checkpoint before any job starts."""
    path, tokenizer = config["pretrained_path"], config["tokenizer_path"]
    if tokenizer is not None and not has_tokenizer(tokenizer):
        raise ConfigError(
            f"{source}: key 'tokenizer_path': {tokenizer!r} holds no tokenizer; expected a "
            f"directory with one of {', '.join(TOKENIZER_FILES)}"
        )
    if path is None:
        return
    if not Path(path).is_dir():
        raise ConfigError(
            f"{source}: key 'pretrained_path': {path!r} is not a directory; expected a local "
            "checkpoint (ours, a stock PI0 save_pretrained directory, or one `ript "
            "import-checkpoint` made from a LeRobot or openpi download), or null to bootstrap "
            "a base policy from expert demonstrations"
        )
    missing = missing_files(path)
    if missing:
        raise ConfigError(
            f"{source}: key 'pretrained_path': {path!r} lacks {missing}; a base checkpoint "
            f"holds {', '.join(CHECKPOINT_FILES)} (norm stats in openpi's format)"
        )
    if tokenizer is None and not has_tokenizer(path):
        raise ConfigError(
            f"{source}: key 'pretrained_path': {path!r} holds no tokenizer (one of "
            f"{', '.join(TOKENIZER_FILES)}); copy PaliGemma's tokenizer in or set tokenizer_path"
        )
    render_size = checkpoint_render_size(path)
    if config["cameras"] and render_size not in (None, config["image_size"]):
        raise ConfigError(
            f"{source}: key 'image_size': {config['image_size']} but the checkpoint at "
            f"pretrained_path {path!r} was trained on {render_size} px renders (render_size in "
            f"its policy.json); set image_size: {render_size}"
        )


def _number(value: Any, kind: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return int(value) if kind == "integer" else float(value)
    except ValueError:
        return value  # left for validation to name


def coerce_numbers(config: dict[str, Any]) -> dict[str, Any]:
    """Numbers given as strings, as `snakemake --config cfg_scale=[1,1.5]` passes list items,
    become numbers where the schema expects them; anything else is left for validation."""
    properties = load_schema()["properties"]
    out = dict(config)
    for key, value in config.items():
        spec = properties.get(key, {})
        types = spec.get("type")
        kinds = types if isinstance(types, list) else [types]  # e.g. [array, "null"]
        number = next((kind for kind in kinds if kind in ("number", "integer")), None)
        if number is not None:
            out[key] = _number(value, number)
        elif "array" in kinds and isinstance(value, list):
            item = spec.get("items", {}).get("type")
            if item in ("number", "integer"):
                out[key] = [_number(v, item) for v in value]
    return out


def apply_env_overrides(config: dict[str, Any]) -> dict[str, Any]:
    config = dict(config)
    for var, (key, parse) in ENV_OVERRIDES.items():
        if var in os.environ:
            value = parse(os.environ[var])
            log.info(
                "%s=%s overrides config key %r (was %r)", var, os.environ[var], key, config.get(key)
            )
            config[key] = value
    return config


@dataclass(frozen=True)
class SamplingSwitches:
    """The notes' switches of how a policy samples (`PI0_CFG_SCALE`, `PI0_ENABLE_DUAL`,
    `PI0_VERBOSE`): read once, by `sampling_switches`, where a step builds its policy, and
    recorded in its metrics.json; the workflow refuses the two that would contradict its
    `cfg<scale>/` paths."""

    cfg_scale: float | None = None
    enable_dual: bool = True
    verbose: bool = False
    set_variables: tuple[tuple[str, str], ...] = ()

    def apply(self, cfg_scale: float) -> float:
        """The scale a policy asked to sample at `cfg_scale` uses under these switches."""
        scale = cfg_scale if self.cfg_scale is None else self.cfg_scale
        return scale if self.enable_dual else 1.0


def sampling_switches(environ: Mapping[str, str] = os.environ) -> SamplingSwitches:
    set_variables = tuple(
        (var, environ[var]) for var in ("PI0_CFG_SCALE", "PI0_ENABLE_DUAL", "PI0_VERBOSE")
        if var in environ
    )  # fmt: skip
    cfg_scale = environ.get("PI0_CFG_SCALE")
    try:
        scale = None if cfg_scale is None else float(cfg_scale)
    except ValueError:
        raise ConfigError(f"PI0_CFG_SCALE={cfg_scale!r}: expected a number, e.g. 1.5") from None
    return SamplingSwitches(
        cfg_scale=scale,
        enable_dual=environ.get("PI0_ENABLE_DUAL", "1").strip() not in ("0", "false", "False"),
        verbose=environ.get("PI0_VERBOSE", "0").strip() == "1",
        set_variables=set_variables,
    )


def check_workflow_switches(environ: Mapping[str, str] = os.environ) -> None:
    """Inside the workflow every evaluation's scale is its `cfg<scale>/` path: a switch that
    would change it would fill the sweep table with copies of one scale."""
    for var, value in sampling_switches(environ).set_variables:
        if var in ("PI0_CFG_SCALE", "PI0_ENABLE_DUAL"):
            raise ConfigError(
                f"{var}={value} would make every cfg<scale>/ evaluation of the grid sample at "
                "one scale; unset it (the grid's scales are the config key 'cfg_scale')"
            )


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (plain YAML keeps
    the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in lines:
            raise ConfigError(
                f"{key_node.start_mark.name}: key {key!r} is given twice (lines {lines[key]} and "
                f"{line}); keep one"
            )
        lines[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping an experiment YAML holds; an empty file, a key given twice or anything but
    a mapping is refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with path.open() as f:
            raw = yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from e
    if raw is None:
        raise ConfigError(
            f"{path}: the file holds no keys; an experiment config is a mapping of config keys "
            "(config/README.md lists them), e.g. 'experiment: my_run'"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of config keys to values, got {type(raw).__name__}"
        )
    return raw


# Set by the test that every key a step reads reaches it from its Snakemake rule: each step
# appends the keys it read and the keys it was given (a JSON line) to this file.
RECORD_KEYS_ENV = "RIPT_RECORD_CONFIG_KEYS"


class RecordingConfig(dict):
    """A validated config that remembers which keys the step read."""

    def __init__(self, config: dict[str, Any], given: set[str]) -> None:
        super().__init__(config)
        self.given = given
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def write_record(self, path: str) -> None:
        record = {"argv": sys.argv, "read": sorted(self.read), "given": sorted(self.given)}
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


# The workflow hands its jobs the Tracking keys (where they log: ript/tracking.py) as JSON in
# this variable rather than on their command lines: a rule's params are part of what Snakemake
# compares to decide a rerun, and adding a logger should rerun nothing.
TRACKING_ENV = "RIPT_TRACKING"


def tracking_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    value = environ.get(TRACKING_ENV)
    if not value:
        return {}
    try:
        keys = json.loads(value)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{TRACKING_ENV}: not JSON ({e})") from e
    allowed = Tracking.config_keys()
    if not isinstance(keys, dict) or set(keys) - set(allowed):
        raise ConfigError(f"{TRACKING_ENV}: expected a JSON object of {allowed}, got {value}")
    return keys


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config (or only defaults when path is None), apply the workflow's tracking
    keys (`TRACKING_ENV`) and the overrides, validate."""
    raw = read_config_file(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    raw = apply_env_overrides({**raw, **tracking_from_env(), **(overrides or {})})
    config = validate(raw, source)
    record = os.environ.get(RECORD_KEYS_ENV)
    if not record:
        return config
    recording = RecordingConfig(config, given=set(raw))
    atexit.register(recording.write_record, record)
    return recording
