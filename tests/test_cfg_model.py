"""The CFG-conditioned pi0 against transformers' stock PI0 (tiny preset, CPU)."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import PI0Config, PI0ForConditionalGeneration

from ript.models.cfg_pi0 import CFGPI0ForConditionalGeneration, positive_label
from ript.models.presets import build_config, num_image_tokens

MODES = ["bias", "concat", "token"]
B, CHUNK, STATE, ACTION = 2, 4, 16, 8


def tiny_config(**kw):
    return build_config("tiny", chunk_size=CHUNK, max_state_dim=STATE, max_action_dim=ACTION, **kw)


@pytest.fixture(scope="module")
def stock_dir(tmp_path_factory):
    torch.manual_seed(0)
    stock = PI0ForConditionalGeneration(tiny_config().to_stock_config()).eval()
    path = tmp_path_factory.mktemp("stock")
    stock.save_pretrained(path)
    return path, stock


def inputs(cameras=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(3, 1000, (B, 6), generator=g)
    n_img = num_image_tokens(tiny_config())
    batch = dict(
        state=torch.randn(B, STATE, generator=g), noise=torch.randn(B, CHUNK, ACTION, generator=g)
    )
    if cameras:
        ids = torch.cat([torch.full((B, 2 * n_img), 1024), text], dim=1)
        batch.update(
            pixel_values=torch.randn(B, 2, 3, 64, 64, generator=g),
            pixel_attention_mask=torch.ones(B, 2, dtype=torch.bool),
        )
    else:
        ids = text
    batch.update(input_ids=ids, attention_mask=torch.ones_like(ids))
    return batch


def perturb_condition(model, scale=0.5):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "cond" in name:
                p.add_(scale * torch.randn_like(p) + scale)


@pytest.mark.parametrize("scheme", ["binary", "ternary"])
@pytest.mark.parametrize("mode", MODES)
def test_fresh_condition_leaves_the_stock_velocity_unchanged(stock_dir, mode, scheme):
    path, stock = stock_dir
    model = CFGPI0ForConditionalGeneration.from_stock_pretrained(
        str(path), cond_mode=mode, label_scheme=scheme
    ).eval()
    x = inputs()
    t = torch.tensor([0.3, 0.9])
    want = stock(timestep=t, **x).logits
    # the same batch through the same kernels plus an exact zero (or a zero gate): bit-exact
    for label in range(model.config.num_cond_labels):
        got = model(timestep=t, is_positive=torch.full((B,), label), **x).logits
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Guided sampling runs both branches as one batch of 2B rows; matmul kernels block a
    # batch by its shape, so sums are ordered differently than at B rows and round in the
    # last bits, by CPU vendor (seen: 0 on an Intel Xeon, ~1e-7 on an AMD EPYC). 1e-5 over
    # 10 Euler steps of O(1) fp32 values leaves that a 100x margin, while a condition that
    # does act moves the velocity by the label embedding (~1e-2 and more).
    sample = {k: v for k, v in x.items() if k != "state"}
    torch.testing.assert_close(
        model.sample_actions(x["state"], cfg_scale=3.0, **sample),
        stock.sample_actions(x["state"], **sample),
        rtol=1e-5,
        atol=1e-5,
    )


def sample(model, x, **kw):
    prefix = {k: x.get(k) for k in ("pixel_values", "pixel_attention_mask")}
    return model.sample_actions(
        x["state"],
        x["input_ids"],
        noise=x["noise"],
        attention_mask=x["attention_mask"],
        **prefix,
        **kw,
    )


def euler_by_hand(model, x, steps, mix):
    """Euler from t=1 to 0 with separate, unbatched forwards per label; `mix(v)` combines
    the velocities of labels 0..n-1."""
    actions, dt = x["noise"], -1.0 / steps
    for step in range(steps):
        t = torch.full((B,), 1.0 + step * dt)
        v = []
        for label in range(model.config.num_cond_labels):
            cache = model.prefix_cache(
                x["input_ids"],
                x["attention_mask"],
                x.get("pixel_values"),
                x.get("pixel_attention_mask"),
            )
            v.append(
                model(
                    state=x["state"],
                    noise=actions,
                    timestep=t,
                    cache=cache,
                    attention_mask=x["attention_mask"],
                    is_positive=torch.full((B,), label),
                ).logits
            )
        actions = actions + dt * mix(v)
    return actions


@pytest.mark.parametrize("mode", MODES)
def test_batched_cfg_equals_the_formula_over_separate_branches(mode):
    torch.manual_seed(0)
    model = CFGPI0ForConditionalGeneration(tiny_config(cond_mode=mode)).eval()
    perturb_condition(model)
    x, w = inputs(), 2.5
    guided = sample(model, x, num_steps=4, cfg_scale=w)
    by_hand = euler_by_hand(model, x, 4, lambda v: v[0] + w * (v[1] - v[0]))
    torch.testing.assert_close(guided, by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(guided, sample(model, x, num_steps=4, cfg_scale=1.0))


def test_cfg_scale_one_is_the_positive_branch_alone():
    torch.manual_seed(0)
    model = CFGPI0ForConditionalGeneration(tiny_config(label_scheme="ternary")).eval()
    perturb_condition(model)
    x = inputs(cameras=False)
    calls = []
    model.embed_action_time.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    one = sample(model, x, num_steps=3)
    assert calls == [B, B, B]  # one single-branch forward per step
    calls.clear()
    by_hand = euler_by_hand(model, x, 3, lambda v: v[positive_label("ternary")])
    torch.testing.assert_close(one, by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_per_sample_loss_of_both_branches_in_one_pass(mode):
    torch.manual_seed(0)
    model = CFGPI0ForConditionalGeneration(tiny_config(cond_mode=mode))
    perturb_condition(model)
    x = inputs()
    actions = torch.randn(B, CHUNK, ACTION)
    t = torch.tensor([0.2, 0.7])
    pos, unc = torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    losses = model.compute_loss(
        x["state"],
        actions,
        x["input_ids"],
        x["attention_mask"],
        [pos, unc],
        x["pixel_values"],
        x["pixel_attention_mask"],
        action_dim=7,
        noise=x["noise"],
        time=t,
    )
    assert losses.shape == (2, B)
    for row, label in zip(losses, (pos, unc), strict=True):
        v = model(timestep=t, actions=actions, is_positive=label, **x).logits
        want = ((v - (x["noise"] - actions)) ** 2)[..., :7].mean(dim=(1, 2))
        torch.testing.assert_close(row, want, rtol=1e-5, atol=1e-6)
    losses.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "cond" in n)


@pytest.mark.parametrize("mode", MODES)
def test_state_token_never_sees_the_actions(mode):
    torch.manual_seed(0)
    model = CFGPI0ForConditionalGeneration(tiny_config(cond_mode=mode)).eval()
    perturb_condition(model)
    x = inputs(cameras=False)
    hidden = []
    for seed in (0, 1):
        cache = model.prefix_cache(x["input_ids"], x["attention_mask"])
        prefix_keys = [layer.keys.clone() for layer in cache.layers]
        model.embed_action_time.labels = torch.ones(B, dtype=torch.long)
        try:
            suffix = model.embed_action_time(
                x["state"],
                torch.randn(B, CHUNK, ACTION, generator=torch.Generator().manual_seed(seed)),
                torch.full((B,), 0.5),
            )
        finally:
            model.embed_action_time.labels = None
        out = model.model(action_embeds=suffix, attention_mask=x["attention_mask"], cache=cache)
        hidden.append(out.last_hidden_state)
        # the prefix is computed without the suffix and the suffix never changes it
        cache.crop(-suffix.shape[1])
        for before, layer in zip(prefix_keys, cache.layers, strict=True):
            torch.testing.assert_close(layer.keys, before, rtol=0, atol=0)
    torch.testing.assert_close(hidden[0][:, 0], hidden[1][:, 0], rtol=0, atol=0)  # state token
    assert not torch.allclose(hidden[0][:, -1], hidden[1][:, -1])  # action tokens do see them


def test_low_dim_prefix_has_no_cameras():
    model = CFGPI0ForConditionalGeneration(tiny_config()).eval()
    x = inputs(cameras=False)
    a = model.sample_actions(x["state"], x["input_ids"], noise=x["noise"], cfg_scale=2.0)
    assert a.shape == (B, CHUNK, ACTION) and torch.isfinite(a).all()


def test_seeded_sampling_is_deterministic():
    model = CFGPI0ForConditionalGeneration(tiny_config()).eval()
    x = inputs(cameras=False)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(model.sample_actions(x["state"], x["input_ids"], cfg_scale=1.5))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_save_and_load_round_trip(tmp_path, mode):
    torch.manual_seed(0)
    model = CFGPI0ForConditionalGeneration(tiny_config(cond_mode=mode, label_scheme="ternary"))
    perturb_condition(model)
    model.save_pretrained(tmp_path)
    loaded = CFGPI0ForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.config.cond_mode == mode and loaded.config.label_scheme == "ternary"
    x = inputs()
    kw = {k: v for k, v in x.items() if k not in ("state", "noise")}
    torch.testing.assert_close(
        loaded.eval().sample_actions(x["state"], noise=x["noise"], cfg_scale=2.0, **kw),
        model.eval().sample_actions(x["state"], noise=x["noise"], cfg_scale=2.0, **kw),
        rtol=0,
        atol=0,
    )


def test_bad_labels_and_configs_are_named():
    model = CFGPI0ForConditionalGeneration(tiny_config())
    x = inputs(cameras=False)
    with pytest.raises(ValueError, match="is_positive is required"):
        model(**x)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1 .*'binary', got \[0, 2\]"):
        model(is_positive=torch.tensor([0, 2]), **x)
    with pytest.raises(ValueError, match="3 labels for a batch of 2"):
        model(is_positive=torch.tensor([0, 1, 1]), **x)
    with pytest.raises(StrictDataclassClassValidationError, match="cond_mode 'film'"):
        tiny_config(cond_mode="film")
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        build_config("huge")


def test_presets():
    tiny = CFGPI0ForConditionalGeneration(build_config("tiny"))
    assert sum(p.numel() for p in tiny.parameters()) < 5_000_000
    pi0 = build_config("pi0")
    assert pi0.vlm_config.text_config.hidden_size == PI0Config().vlm_config.text_config.hidden_size
    assert pi0.dit_config.num_hidden_layers == PI0Config().dit_config.num_hidden_layers
