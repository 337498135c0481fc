"""Grouped attention (the compiled sampler's attention) equals transformers' eager one."""

import pytest
import torch
from torch import nn
from transformers.models.gemma.modeling_gemma import eager_attention_forward

from ript.models.attention import GROUPED_ATTENTION, grouped_attention_forward
from ript.models.cfg_pi0 import CFGPI0ForConditionalGeneration
from ript.models.presets import build_config


class _Module(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("mask_kind", ["none", "float", "per_head"])
def test_equals_eager_attention(kv_heads: int, mask_kind: str):
    torch.manual_seed(0)
    batch, heads, q_len, k_len, dim = 2, 8, 5, 9, 16
    query = torch.randn(batch, heads, q_len, dim)
    key, value = (torch.randn(batch, kv_heads, k_len, dim) for _ in range(2))
    mask = None
    if mask_kind != "none":
        mask_heads = heads if mask_kind == "per_head" else 1
        allowed = torch.rand(batch, mask_heads, q_len, k_len) > 0.3
        allowed[..., 0] = True
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    module = _Module(heads // kv_heads).eval()
    want, want_weights = eager_attention_forward(module, query, key, value, mask, scaling=0.25)
    got, got_weights = grouped_attention_forward(module, query, key, value, mask, scaling=0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_weights, want_weights, rtol=1e-5, atol=1e-6)


def test_boolean_mask_blocks_keys():
    query, key, value = torch.randn(1, 2, 3, 4), torch.randn(1, 1, 6, 4), torch.randn(1, 1, 6, 4)
    allowed = torch.ones(1, 1, 3, 6, dtype=torch.bool)
    allowed[..., 3:] = False
    out, weights = grouped_attention_forward(_Module(2), query, key, value, allowed, scaling=0.5)
    assert weights[..., 3:].abs().max() == 0
    ref, _ = grouped_attention_forward(
        _Module(2), query, key[:, :, :3], value[:, :, :3], None, scaling=0.5
    )
    torch.testing.assert_close(out, ref)


def test_sampling_with_grouped_attention_matches_the_default():
    model = CFGPI0ForConditionalGeneration(build_config("tiny", chunk_size=4)).eval()
    ids = torch.randint(3, 1000, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left-padded prompt
    x = dict(
        state=torch.randn(2, 32),
        input_ids=ids,
        attention_mask=mask,
        noise=torch.randn(2, 4, 32),
    )
    want = model.sample_actions(cfg_scale=2.0, num_steps=3, **x)
    for gemma in (model.model.dit, model.model.vlm.language_model):
        gemma.set_attn_implementation(GROUPED_ATTENTION)
    got = model.sample_actions(cfg_scale=2.0, num_steps=3, **x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
