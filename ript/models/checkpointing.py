"""Activation checkpointing that keeps pi0's prefix -> action-expert KV hand-off.

transformers' layer-wise gradient checkpointing runs every cached layer with `cache=None`: a
replay in the backward pass would otherwise write the layer's keys and values into the cache
a second time. pi0 cannot do without those writes, since the action expert attends to the
prefix through them. Here each decoder layer of both Gemma stacks is checkpointed with a
stand-in cache of its own: it serves the layer's past keys/values (the prefix, for the
expert) and records the new ones, which leave the checkpoint as ordinary tensors and are
written into the real cache outside it. The replay sees the same past and writes nothing.
SigLIP's encoder layers hold no cache and are checkpointed as they are.

The checkpoint wraps each layer's `forward`, not its `__call__`, so module hooks (FSDP2's
unshard and reshard) stay outside it and do not run twice.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class _LayerCache:
    """The cache one decoder layer sees inside its checkpoint."""

    def __init__(self, past: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.past = past
        self.new: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.new = (key_states, value_states)
        if self.past is None:
            return key_states, value_states
        return (
            torch.cat([self.past[0], key_states], dim=-2),
            torch.cat([self.past[1], value_states], dim=-2),
        )


def _past(cache: Any, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    layer = cache.layers[layer_idx]
    if not getattr(layer, "is_initialized", False) or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


def _checkpointed_decoder_forward(layer: nn.Module, forward: Any) -> Any:
    layer_idx = layer.self_attn.layer_idx

    @functools.wraps(forward)
    def wrapped(hidden_states: torch.Tensor, *args: Any, cache: Any = None, **kwargs: Any):
        if not (layer.training and torch.is_grad_enabled()):
            return forward(hidden_states, *args, cache=cache, **kwargs)
        past = _past(cache, layer_idx) if cache is not None else None

        def run(h: torch.Tensor, *past_kv: torch.Tensor):
            stand_in = _LayerCache(tuple(past_kv) if past_kv else None)
            out = forward(h, *args, cache=stand_in if cache is not None else None, **kwargs)
            return (out, *stand_in.new) if stand_in.new is not None else (out,)

        outputs = checkpoint(run, hidden_states, *(past or ()), use_reentrant=False)
        if cache is not None:
            cache.update(outputs[1], outputs[2], layer_idx)
        return outputs[0]

    return wrapped


def _checkpointed_forward(layer: nn.Module, forward: Any) -> Any:
    @functools.wraps(forward)
    def wrapped(*args: Any, **kwargs: Any):
        if not (layer.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return wrapped


def checkpointed_layers(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The layers that get checkpointed: both Gemma stacks' decoder layers, SigLIP's."""
    vlm = model.model.vlm
    return {
        "decoder": [*vlm.language_model.layers, *model.model.dit.layers],
        "vision": list(vlm.vision_tower.encoder.layers),
    }


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every decoder layer (keeping the KV hand-off) and SigLIP layer of a pi0
    model in training mode; returns how many layers. Idempotent."""
    count = 0
    for kind, layers in checkpointed_layers(model).items():
        wrap = _checkpointed_decoder_forward if kind == "decoder" else _checkpointed_forward
        for layer in layers:
            if not getattr(layer, "_ript_checkpointed", False):
                layer.forward = wrap(layer, layer.forward)
                layer._ript_checkpointed = True
            count += 1
    return count
