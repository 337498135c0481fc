"""Activation checkpointing keeps pi0's prefix -> expert KV hand-off: the gradients of every
parameter equal those of the plain pass (tiny preset, CPU)."""

import pytest
import torch

from ript.models.cfg_pi0 import CFGPI0ForConditionalGeneration
from ript.models.checkpointing import checkpointed_layers, enable_activation_checkpointing
from ript.models.presets import build_config, num_image_tokens

B, CHUNK, STATE, ACTION = 3, 4, 16, 8


def batch(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_img = num_image_tokens(config)
    text = torch.randint(3, 1000, (B, 6), generator=g)
    ids = torch.cat([torch.full((B, 2 * n_img), config.vlm_config.image_token_id), text], dim=1)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # a padded prompt
    return dict(
        state=torch.randn(B, STATE, generator=g),
        actions=torch.randn(B, CHUNK, ACTION, generator=g),
        input_ids=ids,
        attention_mask=mask,
        pixel_values=torch.randn(B, 2, 3, 64, 64, generator=g),
        pixel_attention_mask=torch.ones(B, 2, dtype=torch.bool),
        noise=torch.randn(B, CHUNK, ACTION, generator=g),
        time=torch.rand(B, generator=g),
        action_dim=7,
    )


def gradients(model, x):
    model.zero_grad(set_to_none=True)
    labels = [torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)]
    loss = model.compute_loss(branches=labels, **x)
    (loss[0].sum() + 0.3 * loss[1].sum()).backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("mode", ["bias", "concat", "token"])
def test_gradients_with_and_without_activation_checkpointing_agree(mode):
    torch.manual_seed(0)
    config = build_config(
        "tiny", cond_mode=mode, chunk_size=CHUNK, max_state_dim=STATE, max_action_dim=ACTION
    )
    model = CFGPI0ForConditionalGeneration(config).train()
    with torch.no_grad():  # condition parameters away from their zero start
        for name, p in model.named_parameters():
            if "cond" in name:
                p.add_(0.1 * torch.randn_like(p) + 0.1)
    x = batch(config)
    plain_loss, plain = gradients(model, x)

    layers = checkpointed_layers(model)
    assert enable_activation_checkpointing(model) == sum(len(v) for v in layers.values()) == 6
    calls = []
    first = layers["decoder"][0]
    handle = first.self_attn.register_forward_hook(lambda *_: calls.append(1))
    loss, grads = gradients(model, x)
    handle.remove()
    assert len(calls) == 2  # the layer ran again in the backward pass: it was checkpointed

    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)  # the same forward
    assert grads.keys() == plain.keys()
    assert any(k.startswith("model.vlm.language_model") for k in grads)  # the prefix learns
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_sampling_is_unchanged_by_checkpointing():
    torch.manual_seed(0)
    config = build_config("tiny", chunk_size=CHUNK, max_state_dim=STATE, max_action_dim=ACTION)
    model = CFGPI0ForConditionalGeneration(config).eval()
    x = batch(config)
    kw = dict(
        input_ids=x["input_ids"],
        attention_mask=x["attention_mask"],
        pixel_values=x["pixel_values"],
        pixel_attention_mask=x["pixel_attention_mask"],
        noise=x["noise"],
        cfg_scale=2.0,
    )
    before = model.sample_actions(x["state"], **kw)
    enable_activation_checkpointing(model)
    torch.testing.assert_close(model.sample_actions(x["state"], **kw), before, rtol=0, atol=0)
