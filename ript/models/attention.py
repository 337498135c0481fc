"""Grouped-query attention that never repeats the key/value heads, for fast sampling.

pi0's Gemma stacks have 8 query heads and 1 key/value head. At batch 1 the denoising step
is latency-bound: on an H200 the cuDNN SDPA kernel takes ~60 us per layer for 51 (or 102)
queries at head size 256 (16 thread blocks on 132 SMs), and transformers' eager attention
first copies the prefix KV cache 8 times (`repeat_kv`, ~15 us per layer). Folding the query
heads of one group into the query axis, `(B, H, q, d) -> (B, H_kv, H/H_kv * q, d)`, turns
attention into two plain matmuls against the un-repeated cache and one softmax, which
`torch.compile` fuses with the mask. The key axis is zero-padded (and masked) to a multiple
of 8: with an odd length (prefix + 51 suffix tokens) the score rows are not 16-byte aligned
and cuBLAS falls back to its sm75 kernels, ~20 us per matmul instead of a few. The maths is
the eager attention's, registered through transformers' `AttentionInterface` (no Gemma code
is copied or changed).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

GROUPED_ATTENTION = "ript_grouped"
KEY_ALIGNMENT = 8  # bf16 elements per 16 bytes


def grouped_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with query heads grouped over their shared key/value head."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    pad = -k_len % KEY_ALIGNMENT
    padded_len = k_len + pad
    if pad:
        key, value = (nn.functional.pad(x, (0, 0, 0, pad)) for x in (key, value))
    grouped = query.reshape(batch, kv_heads, group * q_len, head_dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)) * scaling
    scores = scores.view(batch, kv_heads, group, q_len, padded_len)
    blocked = torch.finfo(scores.dtype).min
    mask = attention_mask
    if mask is None and pad:
        mask = torch.zeros(1, 1, 1, k_len, dtype=scores.dtype, device=scores.device)
    if mask is not None:
        mask = mask[..., :k_len]
        if mask.dtype == torch.bool:
            mask = torch.where(mask, 0.0, blocked).to(scores.dtype)
        if pad:
            mask = nn.functional.pad(mask, (0, pad), value=blocked)
        if mask.shape[1] == 1:
            mask = mask[:, :, None]
        else:
            mask = mask.view(batch, kv_heads, group, q_len, padded_len)
        scores = scores + mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights.view(batch, kv_heads, group * q_len, padded_len), value)
    out = out.view(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()
    return out, weights.view(batch, heads, q_len, padded_len)[..., :k_len]


AttentionInterface.register(GROUPED_ATTENTION, grouped_attention_forward)
AttentionMaskInterface.register(GROUPED_ATTENTION, eager_mask)
