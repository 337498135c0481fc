"""The layout of a policy checkpoint directory: the files every checkpoint holds, ript's own
additions, and the checks that read them without loading a model. Its own module so that the
config check (`ript.config`) needs nothing from `ript.models`.

    config.json, model.safetensors   the CFG pi0 (condition settings in config.json)
    norm_stats.json                  openpi's format, unpadded dims
    policy.json                      which observation keys feed the model, action dim, ...
    train_settings.json              how it was trained (ript's own checkpoints)
    tokenizer.json / .model          the tokenizer (or tokenizer_path names one)
"""

from __future__ import annotations

import json
from pathlib import Path

# what every policy checkpoint directory holds (besides a tokenizer); checked by the config
# check before any job runs and by Policy.from_pretrained when a step loads one
CHECKPOINT_FILES = ("config.json", "model.safetensors", "norm_stats.json")
NORM_STATS_FILE = "norm_stats.json"
# how observations map onto the model and the default guidance scale (ript's own checkpoints)
POLICY_FILE = "policy.json"
SETTINGS_FILE = "train_settings.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def missing_files(directory: str | Path, names: tuple[str, ...] = CHECKPOINT_FILES) -> list[str]:
    """Which of `names` `directory` lacks (all of a checkpoint's files by default)."""
    return [name for name in names if not (Path(directory) / name).is_file()]


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def checkpoint_chunk_size(path: str | Path) -> int | None:
    """Actions per chunk of a checkpoint (ours or a stock pi0), read from its config.json
    without loading it; None when unreadable (Policy.from_pretrained names what is wrong)."""
    try:
        return int(json.loads((Path(path) / "config.json").read_text())["chunk_size"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def checkpoint_render_size(path: str | Path) -> int | None:
    """The render size a checkpoint's policy.json asks for (imported ones: 256), or None."""
    try:
        size = json.loads((Path(path) / POLICY_FILE).read_text()).get("render_size")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return int(size) if isinstance(size, int) else None
