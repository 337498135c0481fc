"""Model sizes: `tiny` (CPU tests and the embedded default), `small`, and `pi0` (the real one).

Each preset is a `CFGPI0Config`; the experiment decides the dims (state, action, chunk) and
the condition settings. `pi0` is transformers' `PI0Config()` (PaliGemma 3B + a 300M Gemma
action expert, ~3.3B parameters), so real pi0 checkpoints load into it.
"""

from __future__ import annotations

from typing import Any

from ript.models.cfg_pi0 import CFGPI0Config

# The action expert shares attention with the VLM layer by layer, so both Gemmas need the
# same depth, key/value heads and head size.
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        text=dict(
            hidden_size=128,
            num_hidden_layers=2,
            intermediate_size=256,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
        ),
        vision=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=16,
            image_size=64,
        ),
        expert=dict(
            hidden_size=64,
            num_hidden_layers=2,
            intermediate_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
        ),
        vocab_size=1024,
    ),
    "small": dict(
        text=dict(
            hidden_size=512,
            num_hidden_layers=6,
            intermediate_size=2048,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=64,
        ),
        vision=dict(
            hidden_size=384,
            intermediate_size=1536,
            num_hidden_layers=6,
            num_attention_heads=6,
            patch_size=16,
            image_size=224,
        ),
        expert=dict(
            hidden_size=256,
            num_hidden_layers=6,
            intermediate_size=1024,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=64,
        ),
        vocab_size=32000,
    ),
}
PRESETS = (*_PRESETS, "pi0")


def build_config(
    preset: str,
    *,
    cond_mode: str = "bias",
    label_scheme: str = "binary",
    chunk_size: int = 50,
    max_state_dim: int = 32,
    max_action_dim: int = 32,
    vocab_size: int | None = None,
    image_size: int | None = None,
    num_inference_steps: int = 10,
) -> CFGPI0Config:
    """A config for `preset`; `vocab_size` (from the tokenizer) and `image_size` override."""
    common = dict(
        cond_mode=cond_mode,
        label_scheme=label_scheme,
        chunk_size=chunk_size,
        max_state_dim=max_state_dim,
        max_action_dim=max_action_dim,
        num_inference_steps=num_inference_steps,
    )
    if preset == "pi0":
        if vocab_size is not None or image_size is not None:
            raise ValueError("the pi0 preset keeps PaliGemma's vocabulary and image size")
        return CFGPI0Config(**common)
    if preset not in _PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {PRESETS}")
    p = _PRESETS[preset]
    vocab = vocab_size or p["vocab_size"]
    image_token_id = vocab  # one id past the text vocabulary, as PaliGemma's 257152
    vision = {**p["vision"], **({"image_size": image_size} if image_size else {})}
    return CFGPI0Config(
        vlm_config=dict(
            model_type="paligemma",
            text_config=dict(model_type="gemma", vocab_size=vocab + 1, **p["text"]),
            vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vision),
            projection_dim=p["text"]["hidden_size"],
            image_token_id=image_token_id,
        ),
        dit_config=dict(model_type="gemma", **p["expert"]),
        **common,
    )


def num_image_tokens(config: CFGPI0Config) -> int:
    vision = config.vlm_config.vision_config
    return (vision.image_size // vision.patch_size) ** 2
