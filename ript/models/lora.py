"""LoRA fine-tuning of pi0 through `peft`, after openpi's low-memory recipe.

openpi's `pi0_libero_low_mem_finetune` puts LoRA on every attention (q, k, v, o) and gated-MLP
(gate, up, down) projection of both Gemma stacks, rank 16 / alpha 16 in PaliGemma's Gemma 2B
(`gemma_2b_lora`) and rank 32 / alpha 32 in the 300M action expert (`gemma_300m_lora`), and
freezes every other weight of the two stacks (`Pi0Config.get_freeze_filter`). Everything
outside them stays trainable: SigLIP, the projector, the state/action/time projections, the
action head and ours, the condition parameters. A saved policy has the adapters folded into
its weights (`merged_state_dict`), so a LoRA run's checkpoint loads like any other.
"""

from __future__ import annotations

import re

import torch
from torch import nn

STACKS = r"model\.(vlm\.language_model|dit)\."
TARGETS = STACKS + r"layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
EXPERT = r"model\.dit\..*"
ADAPTER = "default"


def add_lora(
    model: nn.Module,
    rank: int,
    expert_rank: int,
    *,
    seed: int,
    frozen_dtype: torch.dtype = torch.float32,
) -> int:
    """Adapters into both Gemma stacks (alpha = rank, as openpi; A drawn from `seed`, B zero,
    so training starts at the base), the stacks' other weights frozen and kept in
    `frozen_dtype`; returns the number of trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        target_modules=TARGETS,
        rank_pattern={EXPERT: expert_rank},
        alpha_pattern={EXPERT: expert_rank},
    )
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    stacks = re.compile(STACKS)
    for name, p in model.named_parameters():  # peft leaves only the adapters trainable
        if "lora_" in name:
            continue
        if stacks.match(name):
            p.requires_grad_(False)
            p.data = p.data.to(frozen_dtype)
        else:
            p.requires_grad_(id(p) in trainable)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_layers(model: nn.Module) -> dict[str, float]:
    """Name -> scaling (alpha / rank) of every layer holding an adapter."""
    from peft.tuners.lora import LoraLayer

    return {
        name: float(m.scaling[ADAPTER])
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer)
    }


def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (the whole tensors of `model`) with every adapter folded into its layer's
    weight, W + scaling * B @ A (in fp32), under the plain layer's names: a plain pi0."""
    out = dict(state)
    for name, scaling in lora_layers(model).items():
        a = out.pop(f"{name}.lora_A.{ADAPTER}.weight").float()
        b = out.pop(f"{name}.lora_B.{ADAPTER}.weight").float()
        for key in [k for k in out if k.startswith(f"{name}.base_layer.")]:
            out[key.replace(".base_layer.", ".", 1)] = out.pop(key)
        out[f"{name}.weight"] = out[f"{name}.weight"].float() + scaling * (b @ a)
    return out


def unmerged_state_dict(
    model: nn.Module, merged: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """What to load into `model` (with adapters) to continue from a saved merged policy and
    its adapters: every tensor but the adapted layers' frozen weights, which stay as loaded
    from the base."""
    out = dict(merged)
    for name in lora_layers(model):
        del out[f"{name}.weight"]
        for key in [k for k in out if k.startswith(f"{name}.")]:
            out[key.replace(f"{name}.", f"{name}.base_layer.", 1)] = out.pop(key)
    return out | adapters
