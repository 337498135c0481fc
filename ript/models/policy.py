"""`Policy`: LIBERO observations in, 7-dim actions out, around the CFG pi0 model.

A checkpoint directory (its layout: `ript.checkpoint`) holds what the policy needs, and
nothing is fetched from a hub.

`from_pretrained` also accepts a stock transformers PI0 checkpoint (config.json with
model_type "pi0") and adds fresh condition parameters that leave its velocity unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PI0Config, PreTrainedTokenizerBase

from ript.checkpoint import NORM_STATS_FILE, POLICY_FILE, has_tokenizer, missing_files
from ript.config import SamplingSwitches
from ript.data.norm_stats import MODES, NormStats
from ript.files import write_text_atomic
from ript.gpus import process_gpu
from ript.models.cfg_pi0 import CFGPI0Config, CFGPI0ForConditionalGeneration
from ript.models.graphs import GraphedSampler
from ript.models.presets import num_image_tokens
from ript.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


PROMPT_FORMATS = ("lowercase", "newline")
IMAGE_RESIZES = ("stretch", "pad")


def format_prompt(prompt: str, prompt_format: str) -> str:
    """The text the tokenizer sees; "newline" is openpi's PaligemmaTokenizer and LeRobot's
    pi0 processor, which end the prompt with a newline token before the action tokens."""
    if prompt_format == "newline":
        return prompt.strip().replace("_", " ").replace("\n", " ") + "\n"
    return prompt.strip().lower()


class CheckpointError(ValueError):
    """A checkpoint directory that is missing a file or holds the wrong kind of model."""


@dataclass
class PolicySettings:
    """How observations map onto the model (saved as policy.json)."""

    state_keys: list[str] = field(default_factory=lambda: ["state"])
    camera_keys: list[str] = field(default_factory=list)  # in camera-slot order
    num_camera_slots: int = 0  # pi0 has 3 (base, left wrist, right wrist); unused ones masked
    action_dim: int = 7
    # a cap (openpi's 48): batches are padded to their longest prompt only, which gives the
    # same outputs (masked keys, positions from the mask); LIBERO-Object prompts are 12 tokens
    max_prompt_tokens: int = 48
    normalization: str = "zscore"
    num_steps: int = 10
    # the guidance scale when a caller gives none: 1 (the positive branch) unless `ript choose`
    # picked this policy at another scale
    cfg_scale: float = 1.0
    # how a prompt becomes text: "lowercase" (ript's own checkpoints) or "newline" (openpi's
    # and LeRobot's pi0: stripped, "_" as spaces, case kept, a newline appended)
    prompt_format: str = "lowercase"
    # action dims the model predicts relative to the state's same dims (openpi's LIBERO
    # checkpoints trained with extra_delta_transform: the first 6); [] for absolute actions
    delta_action_mask: list[bool] = field(default_factory=list)
    # the images the checkpoint was trained on: frames are rotated 180 degrees from LIBERO's
    # renders (openpi's and LeRobot's convention, and what ript's observations hold; false
    # turns them back), a frame of another size is resized to the model's by stretching it
    # ("stretch") or keeping its aspect and padding with black ("pad": openpi's
    # resize_with_pad; the same for square frames), and the render size it saw (null: any;
    # the config check holds image_size to it)
    images_rotated_180: bool = True
    image_resize: str = "stretch"
    render_size: int | None = None
    # where an imported checkpoint came from (`ript import-checkpoint`); {} for our own
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.normalization not in MODES:
            raise ValueError(f"normalization {self.normalization!r}: expected one of {MODES}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"prompt_format {self.prompt_format!r}: expected one of {PROMPT_FORMATS}"
            )
        if self.image_resize not in IMAGE_RESIZES:
            raise ValueError(f"image_resize {self.image_resize!r}: expected one of {IMAGE_RESIZES}")
        if len(self.delta_action_mask) > self.action_dim:
            raise ValueError(
                f"delta_action_mask has {len(self.delta_action_mask)} entries for "
                f"action_dim {self.action_dim}"
            )
        if len(self.camera_keys) > self.num_camera_slots:
            raise ValueError(
                f"{len(self.camera_keys)} camera keys {self.camera_keys} need at least as many "
                f"camera slots, got num_camera_slots={self.num_camera_slots}"
            )


class Policy:
    """Batched, guided action sampling and per-sample losses on LIBERO observations."""

    def __init__(
        self,
        model: CFGPI0ForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        norm_stats: NormStats,
        settings: PolicySettings,
        *,
        cfg_scale: float | None = None,
        policy_id: str = "policy",
        cuda_graphs: bool = True,
        compile: bool = False,
        verbose: bool = False,
    ) -> None:
        """`cuda_graphs`: on CUDA, replay each sampling call from a captured CUDA graph;
        `compile`: compile the model's stacks before the first capture (slow start);
        `verbose`: log every sampling call (PI0_VERBOSE=1)."""
        self.model = model
        self.sampler = GraphedSampler(model, compile=compile) if cuda_graphs else None
        self.tokenizer = tokenizer
        self.norm_stats = norm_stats
        self.settings = settings
        self.cfg_scale = settings.cfg_scale if cfg_scale is None else cfg_scale
        self.policy_id = policy_id
        self.verbose = verbose
        # what `sample_actions` has cost so far (observations in, actions out)
        self.inference_calls = 0
        self.inference_chunks = 0
        self.inference_seconds = 0.0
        config = model.config
        if norm_stats.actions.dim != settings.action_dim:
            raise CheckpointError(
                f"norm stats have {norm_stats.actions.dim} action dims, policy.json says "
                f"action_dim={settings.action_dim}"
            )
        if settings.action_dim > config.max_action_dim:
            raise CheckpointError(
                f"action_dim {settings.action_dim} exceeds the model's max_action_dim "
                f"{config.max_action_dim}"
            )
        if norm_stats.state.dim > config.max_state_dim:
            raise CheckpointError(
                f"norm stats have {norm_stats.state.dim} state dims, more than the model's "
                f"max_state_dim {config.max_state_dim}"
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to: the trained weights' (frozen ones may be bf16)."""
        return self.model.embed_action_time.state_proj.weight.dtype

    # --- observations -> model inputs -------------------------------------------------------

    def _state(self, obs: dict[str, Any]) -> np.ndarray:
        missing = [k for k in self.settings.state_keys if k not in obs]
        if missing:
            raise ValueError(f"observation lacks state key(s) {missing}; has {sorted(obs)}")
        parts = [np.asarray(obs[k], dtype=np.float32) for k in self.settings.state_keys]
        parts = [p[None] if p.ndim == 1 else p for p in parts]  # guarantee the batch dim
        state = np.concatenate(parts, axis=-1)
        expected = self.norm_stats.state.dim
        if state.shape[-1] != expected:
            raise ValueError(
                f"state from keys {self.settings.state_keys} has {state.shape[-1]} dims; the "
                f"checkpoint's norm stats expect {expected}"
            )
        if not np.isfinite(state).all():
            raise ValueError("state contains NaN or infinite values")
        return state

    def _images(self, obs: dict[str, Any], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SigLIP's inputs in [-1, 1], converted and resized on the model's device: the uint8
        frames travel (12x fewer bytes than 128 px frames resized to 224 in fp32), and the host
        does not spend ~150 ms resizing a two-camera batch of 64 (measured on 2 CPU threads;
        the GPU vision run's training steps took 383 ms with the host at ~2 busy cores)."""
        size = self.model.config.vlm_config.vision_config.image_size
        slots = torch.zeros(
            batch, self.settings.num_camera_slots, 3, size, size, device=self.device
        )
        mask = torch.zeros(batch, self.settings.num_camera_slots, dtype=torch.bool)
        for slot, key in enumerate(self.settings.camera_keys):
            if key not in obs:
                raise ValueError(f"observation lacks camera {key!r}; has {sorted(obs)}")
            img = np.asarray(obs[key])
            img = img[None] if img.ndim == 3 else img
            if img.dtype != np.uint8 or img.ndim != 4 or img.shape[-1] != 3:
                raise ValueError(
                    f"camera {key!r}: expected uint8 (B, H, W, 3), got {img.dtype} {img.shape}"
                )
            x = torch.from_numpy(img).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            if not self.settings.images_rotated_180:
                x = x.flip(-2, -1)
            slots[:, slot] = resize_image(x, size, self.settings.image_resize).clamp(-1.0, 1.0)
            mask[:, slot] = True
        return slots, mask

    def prepare(self, obs: dict[str, Any], prompts: list[str]) -> dict[str, torch.Tensor]:
        """Model inputs (padded, normalised, on the model's device) for a batch of obs."""
        state = self.norm_stats.state.normalize(self._state(obs), self.settings.normalization)
        batch = state.shape[0]
        if len(prompts) != batch:
            raise ValueError(f"{len(prompts)} prompts for a batch of {batch} observations")
        padded = np.zeros((batch, self.model.config.max_state_dim), dtype=np.float32)
        padded[:, : state.shape[1]] = state
        text = self.tokenizer(
            [format_prompt(p, self.settings.prompt_format) for p in prompts],
            padding="longest",
            # with CUDA graphs, a few prompt lengths (masked padding changes no output)
            pad_to_multiple_of=16 if self._graphed() else None,
            truncation=True,
            max_length=self.settings.max_prompt_tokens,
            return_tensors="pt",
        )
        n_image = num_image_tokens(self.model.config) * len(self.settings.camera_keys)
        image_ids = torch.full((batch, n_image), self.model.config.vlm_config.image_token_id)
        inputs = {
            "state": torch.from_numpy(padded),
            "input_ids": torch.cat([image_ids, text["input_ids"]], dim=1),
            "attention_mask": torch.cat(
                [torch.ones(batch, n_image, dtype=torch.long), text["attention_mask"]], dim=1
            ),
        }
        if self.settings.camera_keys:
            inputs["pixel_values"], inputs["pixel_attention_mask"] = self._images(obs, batch)
        return {
            k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
        }

    # --- sampling ------------------------------------------------------------------------

    def sample_actions(
        self,
        obs: dict[str, Any],
        prompts: list[str] | str,
        cfg_scale: float | None = None,
        noise: torch.Tensor | None = None,
    ) -> np.ndarray:
        """Action chunks (B, chunk_size, action_dim), unnormalised, ready for the env."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        scale = self.cfg_scale if cfg_scale is None else cfg_scale
        start = time.perf_counter()
        inputs = self.prepare(obs, prompts)
        c = self.model.config
        if noise is None:
            noise = torch.randn(inputs["state"].shape[0], c.chunk_size, c.max_action_dim)
        inputs["noise"] = noise.to(self.device, self.dtype)
        sample = self.sampler or self.model.sample_actions
        chunk = sample(**inputs, num_steps=self.settings.num_steps, cfg_scale=scale)
        actions = chunk[..., : self.settings.action_dim].float().cpu().numpy()
        actions = self.norm_stats.actions.unnormalize(actions, self.settings.normalization)
        actions = self.relative_actions(actions, obs, sign=+1)
        self.inference_calls += 1
        self.inference_chunks += len(actions)
        self.inference_seconds += time.perf_counter() - start
        if self.verbose:
            log.info(
                "[Policy] sample_actions %.1f ms, actions %s, cfg_scale=%g (%s)",
                (time.perf_counter() - start) * 1e3,
                actions.shape,
                scale,
                "dual" if scale != 1.0 else "single",
            )
        return actions

    def act(self, requests: list) -> np.ndarray:
        """The env pool's interface; noise is drawn per (episode seed, step), so a rollout
        does not depend on which other episodes share its batch. With CUDA graphs the batch
        is padded (repeating its last request) to the next power of two, so that an async
        pool's varying batches replay a few captured graphs instead of capturing one each."""
        n = len(requests)
        if self._graphed():
            requests = list(requests) + [requests[-1]] * (padded_batch_size(n) - n)
        obs = {k: np.stack([r.obs[k] for r in requests]) for k in requests[0].obs}
        c = self.model.config
        noise = torch.stack(
            [
                torch.randn(
                    c.chunk_size,
                    c.max_action_dim,
                    generator=torch.Generator().manual_seed(r.episode.seed * 100_003 + r.step),
                )
                for r in requests
            ]
        )
        with torch.no_grad():
            return self.sample_actions(obs, [r.prompt for r in requests], noise=noise)[:n]

    def relative_actions(self, actions: np.ndarray, obs: dict[str, Any], sign: int) -> np.ndarray:
        """Absolute chunks (B, H, A) from predicted ones (`sign` +1: the state is added to the
        masked dims, openpi's AbsoluteActions) or training targets from absolute ones (-1,
        DeltaActions); every step of a chunk is relative to the state it starts from."""
        mask = np.asarray(self.settings.delta_action_mask, dtype=bool)
        if not mask.any():
            return actions
        state = self._state(obs)
        if state.shape[-1] < len(mask):
            raise ValueError(
                f"delta_action_mask covers {len(mask)} dims but the state has {state.shape[-1]}"
            )
        shift = np.where(mask, state[:, : len(mask)], 0.0)[:, None, :]
        out = actions.copy()
        out[..., : len(mask)] += sign * shift
        return out

    def _graphed(self) -> bool:
        return self.sampler is not None and self.device.type == "cuda"

    # --- training ------------------------------------------------------------------------

    def loss_inputs(
        self, obs: dict[str, Any], prompts: list[str], actions: np.ndarray
    ) -> dict[str, Any]:
        """Keyword arguments of the model's `compute_loss` (all but the branches, noise and
        time) for raw action chunks (B, chunk, action_dim)."""
        c = self.model.config
        if actions.shape[1] != c.chunk_size:
            raise ValueError(
                f"action chunks of {actions.shape[1]} steps for a model that predicts "
                f"{c.chunk_size}; targets must match the checkpoint's chunk_size"
            )
        inputs = self.prepare(obs, prompts)
        actions = self.relative_actions(np.asarray(actions, dtype=np.float32), obs, sign=-1)
        norm = self.norm_stats.actions.normalize(actions, self.settings.normalization)
        padded = torch.zeros(norm.shape[0], c.chunk_size, c.max_action_dim)
        padded[:, : norm.shape[1], : norm.shape[2]] = torch.from_numpy(norm)
        return dict(
            state=inputs["state"],
            actions=padded.to(self.device, self.dtype),
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs.get("pixel_values"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            action_dim=self.settings.action_dim,
        )

    # --- checkpoints ---------------------------------------------------------------------

    def save_pretrained(
        self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """The checkpoint directory; `state_dict` (whole tensors under the plain model's
        names, in the dtype to store) replaces the model's own weights, as when they are
        sharded, hold LoRA adapters or should be stored in another dtype."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, state_dict=state_dict)
        if state_dict is not None:  # config.json names the dtype of the model in memory
            stored = next(v.dtype for v in state_dict.values() if v.is_floating_point())
            config = json.loads((path / "config.json").read_text())
            config["dtype"] = str(stored).removeprefix("torch.")
            write_text_atomic(path / "config.json", json.dumps(config, indent=2) + "\n")
        self.tokenizer.save_pretrained(path)
        self.norm_stats.save(path / NORM_STATS_FILE)
        write_text_atomic(
            path / POLICY_FILE,
            json.dumps(
                dataclasses.asdict(dataclasses.replace(self.settings, cfg_scale=self.cfg_scale)),
                indent=2,
            ),
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cfg_scale: float | None = None,
        cond_mode: str | None = None,
        label_scheme: str | None = None,
        settings: PolicySettings | None = None,
        compile: bool = False,
        tokenizer_path: str | Path | None = None,
        switches: SamplingSwitches | None = None,
    ) -> Policy:
        """Load our checkpoint, or a stock PI0 one (`settings` then default to LIBERO's two
        cameras). `cond_mode`/`label_scheme` (default: the checkpoint's; bias/binary for
        stock) other than the checkpoint's replace its condition parameters by fresh ones,
        which start the new model exactly at the loaded one if the old ones were still at
        their initial zeros (a base trained with frozen condition, `ript train --mode sft`).
        `cfg_scale` defaults to the one in policy.json; `switches` (the PI0_* variables, read
        by the step) may override it. `tokenizer_path` serves a checkpoint without a
        tokenizer of its own."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: checkpoint directory not found")
        missing = missing_files(path)
        if missing:
            raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}/config.json: not valid JSON: {e}") from e
        if model_type == CFGPI0Config.model_type:
            config = CFGPI0Config.from_pretrained(path, local_files_only=True)
            config.cond_mode = cond_mode or config.cond_mode
            config.label_scheme = label_scheme or config.label_scheme
            model = CFGPI0ForConditionalGeneration.from_pretrained(
                path, config=config, local_files_only=True, use_safetensors=True
            )
        elif model_type == PI0Config.model_type:
            model = CFGPI0ForConditionalGeneration.from_stock_pretrained(
                str(path),
                cond_mode=cond_mode or "bias",
                label_scheme=label_scheme or "binary",
                use_safetensors=True,
            )
        else:
            raise CheckpointError(
                f"{path}: config.json holds a {model_type!r} model; expected "
                f"{CFGPI0Config.model_type!r} (ours) or {PI0Config.model_type!r} "
                "(transformers' pi0)"
            )
        if settings is None:
            if (path / POLICY_FILE).is_file():
                settings = PolicySettings(**json.loads((path / POLICY_FILE).read_text()))
            elif model_type == PI0Config.model_type:
                settings = PolicySettings(
                    camera_keys=["agentview_rgb", "eye_in_hand_rgb"], num_camera_slots=3
                )
            else:
                raise CheckpointError(f"{path}: checkpoint lacks {POLICY_FILE}")
        model = model.to(device=device, dtype=dtype).eval()
        cfg_scale = settings.cfg_scale if cfg_scale is None else cfg_scale
        switches = switches or SamplingSwitches()
        cfg_scale = switches.apply(cfg_scale)
        return cls(
            model,
            load_tokenizer(
                path if tokenizer_path is None or has_tokenizer(path) else tokenizer_path
            ),
            NormStats.load(path / NORM_STATS_FILE),
            settings,
            cfg_scale=cfg_scale,
            policy_id=f"{path.parent.name}/{path.name}(cfg_scale={cfg_scale:g})",
            compile=compile,
            verbose=switches.verbose,
        )


def resize_image(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] to (B, 3, size, size): stretched, or scaled to fit and padded
    with black (-1) around the centre, as openpi's resize_with_pad does."""
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    if mode == "stretch" or height == width:
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    inner = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True)
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(inner, (left, size - w - left, top, size - h - top), value=-1.0)


def padded_batch_size(n: int) -> int:
    """The next power of two: at most log2(workers) + 1 batch shapes to capture."""
    return 1 << max(n - 1, 0).bit_length()


def checkpoint_dtype(path: str | Path) -> torch.dtype:
    """The dtype most of a checkpoint's floating-point weights are stored in (read from the
    safetensors header, without loading them)."""
    from collections import Counter

    from safetensors import safe_open

    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    with safe_open(str(Path(path) / "model.safetensors"), "pt") as f:
        counts = Counter(f.get_slice(k).get_dtype() for k in f.keys())  # noqa: SIM118
    stored = [d for d, _ in counts.most_common() if d in dtypes]
    return dtypes[stored[0]] if stored else torch.float32


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu' or 'cuda' (the config's `device`). On CUDA: the
    process's LOCAL_RANK under torchrun, else the least-used visible GPU (`ript.gpus`)."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA device")
        if "LOCAL_RANK" in os.environ:
            index = int(os.environ["LOCAL_RANK"])
        else:
            index = process_gpu(torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 weights on CUDA (pi0 full fine-tuning fits an H200 only so), fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def new_policy(
    preset: str,
    norm_stats: NormStats,
    settings: PolicySettings,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    cond_mode: str = "bias",
    label_scheme: str = "binary",
    chunk_size: int = 50,
    max_state_dim: int = 32,
    max_action_dim: int = 32,
    seed: int = 0,
) -> Policy:
    """A freshly initialised policy; the tokenizer defaults to one over LIBERO's prompts."""
    from ript.models.presets import build_config
    from ript.models.tokenizer import build_word_tokenizer, libero_instructions

    tokenizer = tokenizer or build_word_tokenizer(libero_instructions())
    config = build_config(
        preset,
        cond_mode=cond_mode,
        label_scheme=label_scheme,
        chunk_size=chunk_size,
        max_state_dim=max_state_dim,
        max_action_dim=max_action_dim,
        vocab_size=None if preset == "pi0" else len(tokenizer),
    )
    torch.manual_seed(seed)
    model = CFGPI0ForConditionalGeneration(config).eval()
    return Policy(model, tokenizer, norm_stats, settings, policy_id=f"{preset}(untrained)")
