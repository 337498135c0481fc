"""`ript import-checkpoint`: a pi0 checkpoint saved by LeRobot or by openpi's PyTorch
conversion, turned into a directory that `pretrained_path` accepts.

What each source holds (local files only, nothing is downloaded):

    lerobot  config.json        {"type": "pi0", input_features, output_features,
                                 normalization_mapping, paligemma_variant, chunk_size, ...}
             model.safetensors  openpi's layout under a "model." prefix
             *.safetensors      the normaliser's statistics ("observation.state.mean", ...,
                                 in policy_preprocessor_step_*_normalizer_processor.safetensors)
    openpi   config.json        {action_dim, action_horizon, paligemma_variant, ...}
             model.safetensors  openpi's PI0Pytorch layout
             assets/<asset id>/norm_stats.json  {"norm_stats": {"state": ..., "actions": ...}},
                                 padded to the model's 32 dims by older versions

transformers' PI0 renames both key layouts when it loads them (its conversion mapping), so
the weights are loaded, not rewritten; the statistics are cut to the real state and action
dims; the tokenizer (PaliGemma's, which neither source holds) comes from --tokenizer. Both
sources end a prompt with a newline token and the importer records that (prompt_format:
newline), with the delta-action mask (openpi's LIBERO pi0 was trained on the first six action
dims relative to the state: --delta-action-dims 6) and where the weights came from, in
policy.json. LeRobot normalises with std + 1e-8 and openpi with std + 1e-6; ript uses 1e-6.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from ript.checkpoint import TOKENIZER_FILES, has_tokenizer
from ript.data.norm_stats import NormStats, NormStatsError, Stats
from ript.files import atomic_output
from ript.models.policy import CheckpointError, Policy, PolicySettings
from ript.models.presets import PRESETS, build_config
from ript.models.tokenizer import load_tokenizer

SOURCES = ("lerobot", "openpi")
# openpi's and LeRobot's model variants -> ript's preset of the same sizes
VARIANTS = {("gemma_2b", "gemma_300m"): "pi0"}
LIBERO_CAMERAS = ["agentview_rgb", "eye_in_hand_rgb"]  # openpi's base and wrist images
LIBERO_RENDER_SIZE = 256
LEROBOT_NORMALIZATION = {"MEAN_STD": "zscore", "QUANTILES": "quantile"}


@dataclass
class Source:
    """What a foreign checkpoint says about itself."""

    weights: Path
    variants: tuple[str, str]
    chunk_size: int
    max_state_dim: int
    max_action_dim: int
    norm_stats: NormStats
    normalization: str
    details: dict[str, Any]


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _weights(src: Path) -> Path:
    path = src / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (the checkpoint's weights)")
    return path


def _refuse_pi05(where: Path, is_pi05: bool) -> None:
    if is_pi05:
        raise CheckpointError(
            f"{where}: a pi0.5 checkpoint (adaptive norms, no state projection); ript runs pi0"
        )


def _cut(values: np.ndarray, dim: int, what: str, path: Path) -> np.ndarray:
    """`values` cut to `dim` entries (openpi pads them to the model's width)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(values) < dim:
        raise NormStatsError(f"{path}: {what} has {len(values)} dims, expected at least {dim}")
    return values[:dim]


def _stats(entry: dict[str, np.ndarray], dim: int, what: str, path: Path) -> Stats:
    missing = [k for k in ("mean", "std") if k not in entry]
    if missing:
        raise NormStatsError(f"{path}: {what} lacks {missing[0]!r}")
    padding = np.asarray(entry["mean"], dtype=np.float32).reshape(-1)[dim:]
    if np.any(padding != 0):
        raise NormStatsError(
            f"{path}: {what}.mean has {dim + len(padding)} dims and the ones past {dim} are "
            "not padding; give the real dims with --state-dim/--action-dim"
        )
    mean, std = (_cut(entry[k], dim, f"{what}.{k}", path) for k in ("mean", "std"))
    low = entry.get("q01", entry.get("min"))
    high = entry.get("q99", entry.get("max"))
    if low is None or high is None:  # only the quantile mode reads them
        low, high = mean - std, mean + std
    return Stats(
        mean, std, _cut(low, dim, f"{what}.q01", path), _cut(high, dim, f"{what}.q99", path)
    )


def read_lerobot(src: Path) -> Source:
    config_path = src / "config.json"
    config = _json(config_path)
    kind = config.get("type")
    _refuse_pi05(config_path, kind == "pi05")
    if kind != "pi0":
        raise CheckpointError(f"{config_path}: type {kind!r}; expected LeRobot's 'pi0'")
    try:
        state_dim = int(config["input_features"]["observation.state"]["shape"][0])
        action_dim = int(config["output_features"]["action"]["shape"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckpointError(
            f"{config_path}: input_features['observation.state'].shape and "
            "output_features['action'].shape are needed for the state and action dims"
        ) from None
    mapping = config.get("normalization_mapping", {})
    modes = {mapping.get("STATE", "MEAN_STD"), mapping.get("ACTION", "MEAN_STD")}
    if len(modes) != 1 or next(iter(modes)) not in LEROBOT_NORMALIZATION:
        raise CheckpointError(
            f"{config_path}: normalization_mapping {mapping}: ript normalises state and "
            f"actions alike, with one of {sorted(LEROBOT_NORMALIZATION)}"
        )
    arrays, found_in = {}, None
    for path in sorted(src.glob("*.safetensors")):
        with safe_open(path, "np") as f:
            keys = list(f.keys())
            stats = {
                k: f.get_tensor(k) for k in keys if k.startswith(("observation.state.", "action."))
            }
            stats |= {  # LEGACY_STATS
                k.split("buffer_", 1)[1].replace(
                    "observation_state", "observation.state"
                ): f.get_tensor(k)
                for k in keys
                if k.startswith(
                    (
                        "normalize_inputs.buffer_observation_state.",
                        "unnormalize_outputs.buffer_action.",
                    )
                )
            }
        if {"observation.state.mean", "action.mean"} <= set(stats):
            arrays, found_in = stats, path
            break
    if found_in is None:
        raise NormStatsError(
            f"{src}: no normalisation statistics (a *.safetensors with observation.state.mean "
            "and action.mean, e.g. policy_preprocessor_step_*_normalizer_processor.safetensors)"
        )

    def entry(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    norm = NormStats(
        _stats(entry("observation.state."), state_dim, "observation.state", found_in),
        _stats(entry("action."), action_dim, "action", found_in),
    )
    return Source(
        weights=_weights(src),
        variants=(
            config.get("paligemma_variant", "gemma_2b"),
            config.get("action_expert_variant", "gemma_300m"),
        ),
        chunk_size=int(config.get("chunk_size", 50)),
        max_state_dim=int(config.get("max_state_dim", 32)),
        max_action_dim=int(config.get("max_action_dim", 32)),
        norm_stats=norm,
        normalization=LEROBOT_NORMALIZATION[next(iter(modes))],
        details={"norm_stats": found_in.name},
    )


def read_openpi(src: Path, state_dim: int, action_dim: int, asset_id: str | None) -> Source:
    config_path = src / "config.json"
    config = _json(config_path)
    _refuse_pi05(config_path, bool(config.get("pi05")))
    weights = _weights(src)
    with safe_open(weights, "np") as f:
        _refuse_pi05(weights, "state_proj.weight" not in set(f.keys()))
    assets = src / "assets"
    candidates = sorted(assets.rglob("norm_stats.json")) if assets.is_dir() else []
    if asset_id is not None:
        candidates = [p for p in candidates if p.parent.relative_to(assets).as_posix() == asset_id]
    if len(candidates) != 1:
        found = [p.parent.relative_to(assets).as_posix() for p in candidates] or "none"
        raise NormStatsError(
            f"{assets}: expected one <asset id>/norm_stats.json"
            + (f" for asset id {asset_id!r}" if asset_id else " (choose with --asset-id)")
            + f"; found {found}"
        )
    path = candidates[0]
    body = _json(path).get("norm_stats")
    if not isinstance(body, dict) or not {"state", "actions"} <= set(body):
        raise NormStatsError(f"{path}: expected {{'norm_stats': {{'state': ..., 'actions': ...}}}}")
    model_action_dim = int(config.get("action_dim", 32))

    def entry(name: str, dim: int) -> Stats:
        fields = {k: np.asarray(v) for k, v in body[name].items() if v is not None}
        return _stats(fields, dim, name, path)

    return Source(
        weights=weights,
        variants=(
            config.get("paligemma_variant", "gemma_2b"),
            config.get("action_expert_variant", "gemma_300m"),
        ),
        chunk_size=int(config.get("action_horizon", 50)),
        max_state_dim=model_action_dim,  # openpi pads state and actions to the same width
        max_action_dim=model_action_dim,
        norm_stats=NormStats(entry("state", state_dim), entry("actions", action_dim)),
        normalization="zscore",  # openpi's pi0 (quantiles are pi0-FAST's and pi0.5's)
        details={"norm_stats": str(path.relative_to(src))},
    )


def _preset(source: Source, preset: str | None, src: Path) -> str:
    if preset is not None:
        return preset
    if source.variants in VARIANTS:
        return VARIANTS[source.variants]
    raise CheckpointError(
        f"{src}/config.json: variants {source.variants} match no preset; name the "
        f"architecture with --preset (one of {PRESETS})"
    )


# LeRobot before its processors kept the statistics as buffers beside the weights
LEGACY_STATS = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


def _normalizer(key: str) -> bool:
    return key.removeprefix("model.").startswith(LEGACY_STATS)


def _mismatch(entry: Any) -> str:
    """transformers reports (name, stored shape, model shape) or just the name."""
    if isinstance(entry, tuple) and len(entry) == 3:
        name, stored, wanted = entry
        return f"{name} {tuple(stored)} (expected {tuple(wanted)})"
    return str(entry[0] if isinstance(entry, tuple) else entry)


def _load_model(source: Source, preset: str, vocab_size: int | None):
    """Our CFG model with the source's weights; a missing, unexpected or misshapen tensor is
    an error (transformers would re-initialise it with a warning)."""
    from ript.models.cfg_pi0 import CFGPI0ForConditionalGeneration

    config = build_config(
        preset,
        chunk_size=source.chunk_size,
        max_state_dim=source.max_state_dim,
        max_action_dim=source.max_action_dim,
        vocab_size=None if preset == "pi0" else vocab_size,
    )
    with tempfile.TemporaryDirectory(prefix="ript-import-") as staging:
        staging = Path(staging)
        (staging / "model.safetensors").symlink_to(source.weights.resolve())
        config.to_stock_config().save_pretrained(staging)
        try:
            model, info = CFGPI0ForConditionalGeneration.from_stock_pretrained(
                str(staging),
                output_loading_info=True,
                use_safetensors=True,
                ignore_mismatched_sizes=True,  # reported below, in one line
            )
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(
                f"{source.weights}: does not load as the {preset!r} architecture: {first}"
            ) from None
    condition = {n for n, _ in model.named_parameters() if "cond_" in n}
    missing = sorted(set(info["missing_keys"]) - condition)
    problems = [
        (what, sorted(keys))
        for what, keys in (
            ("has misshapen", [_mismatch(k) for k in info["mismatched_keys"]]),
            ("lacks", missing),
            ("has unexpected", [k for k in info["unexpected_keys"] if not _normalizer(k)]),
        )
        if keys
    ]
    if problems:
        what, keys = problems[0]
        raise CheckpointError(
            f"{source.weights}: {what} tensors for the {preset!r} architecture: "
            f"{', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)} in all)"
        )
    return model.eval()


def import_checkpoint(
    source_kind: str,
    src: str | Path,
    *,
    tokenizer: str | Path,
    out: str | Path,
    preset: str | None = None,
    delta_action_dims: int = 0,
    state_dim: int = 8,
    action_dim: int = 7,
    asset_id: str | None = None,
) -> Path:
    """Write `out` (under a temporary name, renamed when complete); returns it."""
    src, out = Path(src), Path(out)
    if source_kind not in SOURCES:
        raise ValueError(f"--from {source_kind!r}: expected one of {SOURCES}")
    if not src.is_dir():
        raise CheckpointError(f"{src}: checkpoint directory not found")
    if out.exists():
        raise FileExistsError(f"{out}: already exists; remove it or choose another --out")
    if source_kind == "lerobot":
        source = read_lerobot(src)
    else:
        source = read_openpi(src, state_dim, action_dim, asset_id)
    actions = source.norm_stats.actions.dim
    most = min(actions, source.norm_stats.state.dim)
    if not 0 <= delta_action_dims <= most:
        raise ValueError(
            f"--delta-action-dims {delta_action_dims}: expected 0..{most} (at most the action "
            "and state dims)"
        )
    if not has_tokenizer(tokenizer):
        raise CheckpointError(
            f"--tokenizer {tokenizer}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "give the directory of PaliGemma's tokenizer (neither LeRobot nor openpi "
            "checkpoints hold one)"
        )
    tok = load_tokenizer(tokenizer)
    preset = _preset(source, preset, src)
    model = _load_model(source, preset, len(tok))
    settings = PolicySettings(
        state_keys=["state"],
        camera_keys=list(LIBERO_CAMERAS),
        num_camera_slots=3,
        action_dim=actions,
        normalization=source.normalization,
        num_steps=model.config.num_inference_steps,
        prompt_format="newline",
        # both frameworks trained on LIBERO's 256 px renders, rotated 180 degrees (as ript's
        # observations are) and resized with padding to 224
        images_rotated_180=True,
        image_resize="pad",
        render_size=LIBERO_RENDER_SIZE,
        delta_action_mask=[True] * delta_action_dims,
        source={
            "from": source_kind,
            "path": str(src.resolve()),
            "weights": source.weights.name,
            "tokenizer": str(Path(tokenizer).resolve()),
            "preset": preset,
            **source.details,
        },
    )
    policy = Policy(model, tok, source.norm_stats, settings, policy_id=f"{source_kind}:{src.name}")
    with atomic_output(out) as tmp:
        policy.save_pretrained(tmp)
    return out
