"""The Policy wrapper: observations to model inputs, checkpoints, switches (tiny, CPU)."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from transformers import PI0ForConditionalGeneration

from ript.config import ConfigError, check_workflow_switches, sampling_switches
from ript.data.norm_stats import NormStats, NormStatsError, Stats
from ript.envs.episode import EpisodeSpec, PolicyRequest
from ript.models.policy import (
    CheckpointError,
    Policy,
    PolicySettings,
    new_policy,
    padded_batch_size,
)

PROMPT = "pick up the milk and place it in the basket"


def stats(dim, scale=1.0):
    rng = np.random.default_rng(dim)
    mean = rng.normal(size=dim).astype(np.float32)
    std = (scale * (1 + rng.random(dim))).astype(np.float32)
    return Stats(mean, std, mean - 2 * std, mean + 2 * std)


NORM = NormStats(stats(36), stats(7, 0.3))
LOWDIM = PolicySettings(state_keys=["state", "privileged_object_state"], num_steps=4)
CAMERAS = PolicySettings(
    camera_keys=["agentview_rgb", "eye_in_hand_rgb"], num_camera_slots=3, num_steps=4
)


def lowdim_obs(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "state": rng.normal(size=(batch, 8)).astype(np.float32),
        "privileged_object_state": rng.normal(size=(batch, 28)).astype(np.float32),
    }


def camera_obs(batch=2, size=96, seed=0):
    rng = np.random.default_rng(seed)
    obs = {"state": rng.normal(size=(batch, 8)).astype(np.float32)}
    for key in CAMERAS.camera_keys:
        obs[key] = rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
    return obs


@pytest.fixture(scope="module")
def lowdim_policy():
    policy = new_policy("tiny", NORM, LOWDIM, chunk_size=6, max_state_dim=64, max_action_dim=8)
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking condition: the labels now differ
        for name, p in policy.model.named_parameters():
            if "cond" in name:
                p.add_(0.3 * torch.randn_like(p))
    return policy


def test_lowdim_inputs_are_padded_and_normalised(lowdim_policy):
    obs = lowdim_obs()
    x = lowdim_policy.prepare(obs, [PROMPT, PROMPT.upper()])
    assert x["state"].shape == (2, 64)
    want = NORM.state.normalize(
        np.concatenate([obs["state"], obs["privileged_object_state"]], 1), "zscore"
    )
    np.testing.assert_allclose(x["state"][:, :36].numpy(), want, rtol=1e-6)
    assert (x["state"][:, 36:] == 0).all()
    assert "pixel_values" not in x
    assert torch.equal(x["input_ids"][0], x["input_ids"][1])  # prompts are lower-cased
    assert x["input_ids"].shape == (2, 1 + len(PROMPT.split()))  # <bos> + words, no padding
    unk = lowdim_policy.tokenizer.unk_token_id
    assert unk not in x["input_ids"][0].tolist()  # every LIBERO word is in the vocabulary


def test_padding_to_the_longest_prompt_does_not_change_actions(lowdim_policy):
    """A batch pads to its longest prompt (capped at max_prompt_tokens); the padding is
    masked and positions come from the mask, so an episode's actions do not depend on the
    prompts that share its batch."""
    short, noise = "open the drawer", torch.randn(2, 6, 8)
    x = lowdim_policy.prepare(lowdim_obs(), [short, PROMPT])
    assert x["input_ids"].shape[1] == 1 + len(PROMPT.split())
    assert x["attention_mask"][0].tolist() == [1] * 4 + [0] * (len(PROMPT.split()) - 3)
    together = lowdim_policy.sample_actions(lowdim_obs(), [short, PROMPT], 2.0, noise)
    for i, prompt in enumerate([short, PROMPT]):
        obs = {k: v[i : i + 1] for k, v in lowdim_obs().items()}
        alone = lowdim_policy.sample_actions(obs, [prompt], 2.0, noise[i : i + 1])
        np.testing.assert_allclose(together[i : i + 1], alone, rtol=1e-4, atol=1e-5)
    long = " ".join([PROMPT] * 10)
    capped = lowdim_policy.prepare(lowdim_obs(), [long, short])
    assert capped["input_ids"].shape[1] == LOWDIM.max_prompt_tokens


def test_unbatched_observation_gets_a_batch_dim(lowdim_policy):
    single = {k: v[0] for k, v in lowdim_obs().items()}
    actions = lowdim_policy.sample_actions(single, PROMPT, cfg_scale=1.5)
    assert actions.shape == (1, 6, 7)


def test_images_become_siglip_inputs():
    policy = new_policy(
        "tiny", NormStats(stats(8), stats(7)), CAMERAS, chunk_size=4, max_action_dim=8
    )
    obs = camera_obs(size=96)
    x = policy.prepare(obs, [PROMPT] * 2)
    assert x["pixel_values"].shape == (2, 3, 3, 64, 64)  # resized to the model's 64 px
    assert x["pixel_values"].min() >= -1 and x["pixel_values"].max() <= 1
    assert x["pixel_attention_mask"].tolist() == [[True, True, False]] * 2
    n_img = (x["input_ids"][0] == policy.model.config.vlm_config.image_token_id).sum()
    assert n_img == 2 * 16
    same_size = camera_obs(size=64)
    y = policy.prepare(same_size, [PROMPT] * 2)
    want = torch.from_numpy(same_size["agentview_rgb"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(y["pixel_values"][:, 0], want)
    assert policy.sample_actions(obs, [PROMPT] * 2, cfg_scale=2.0).shape == (2, 4, 7)


def test_actions_are_unnormalised_and_cut_to_the_env_dims(lowdim_policy):
    noise = torch.randn(2, 6, 8)
    actions = lowdim_policy.sample_actions(lowdim_obs(), [PROMPT] * 2, 1.0, noise)
    x = lowdim_policy.prepare(lowdim_obs(), [PROMPT] * 2)
    raw = lowdim_policy.model.sample_actions(
        x["state"], x["input_ids"], noise=noise, attention_mask=x["attention_mask"], num_steps=4
    )
    np.testing.assert_allclose(
        actions, NORM.actions.unnormalize(raw[..., :7].numpy(), "zscore"), rtol=1e-5, atol=1e-5
    )


def test_save_load_round_trip(lowdim_policy, tmp_path):
    lowdim_policy.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path)
    assert loaded.settings == LOWDIM
    noise = torch.randn(2, 6, 8)
    for scale in (1.0, 2.5):
        np.testing.assert_array_equal(
            loaded.sample_actions(lowdim_obs(), [PROMPT] * 2, scale, noise),
            lowdim_policy.sample_actions(lowdim_obs(), [PROMPT] * 2, scale, noise),
        )


def test_a_stock_pi0_checkpoint_loads_and_acts_like_stock(tmp_path):
    ours = new_policy(
        "tiny", NormStats(stats(8), stats(7)), CAMERAS, chunk_size=4, max_action_dim=8
    )
    stock_config = ours.model.config.to_stock_config()
    torch.manual_seed(3)
    stock = PI0ForConditionalGeneration(stock_config).eval()
    stock.save_pretrained(tmp_path)  # what transformers writes, plus tokenizer and stats
    ours.tokenizer.save_pretrained(tmp_path)
    ours.norm_stats.save(tmp_path / "norm_stats.json")
    loaded = Policy.from_pretrained(tmp_path, cond_mode="concat", cfg_scale=3.0)
    assert loaded.model.config.cond_mode == "concat"
    assert loaded.settings.camera_keys == ["agentview_rgb", "eye_in_hand_rgb"]
    obs, noise = camera_obs(), torch.randn(2, 4, 8)
    x = loaded.prepare(obs, [PROMPT] * 2)
    want = stock.sample_actions(
        x["state"],
        x["input_ids"],
        x["pixel_values"],
        noise=noise,
        attention_mask=x["attention_mask"],
        pixel_attention_mask=x["pixel_attention_mask"],
        num_steps=loaded.settings.num_steps,
    )
    got = loaded.sample_actions(obs, [PROMPT] * 2, noise=noise)  # guided at 3.0, fresh cond
    np.testing.assert_allclose(got, unnormalized(loaded, want), rtol=1e-5, atol=1e-5)


def unnormalized(policy, raw):
    return policy.norm_stats.actions.unnormalize(raw[..., :7].detach().numpy(), "zscore")


def test_env_switches_are_read_by_the_step_not_inside_the_policy(lowdim_policy, monkeypatch):
    noise = torch.randn(2, 6, 8)
    single = lowdim_policy.sample_actions(lowdim_obs(), [PROMPT] * 2, 1.0, noise)
    guided = lowdim_policy.sample_actions(lowdim_obs(), [PROMPT] * 2, 3.0, noise)
    assert not np.allclose(single, guided)
    monkeypatch.setenv("PI0_CFG_SCALE", "3.0")  # a loaded policy no longer looks
    np.testing.assert_array_equal(
        lowdim_policy.sample_actions(lowdim_obs(), [PROMPT] * 2, 1.0, noise), single
    )
    assert sampling_switches({"PI0_CFG_SCALE": "3.0"}).apply(1.0) == 3.0
    assert sampling_switches({"PI0_ENABLE_DUAL": "0"}).apply(3.0) == 1.0
    switches = sampling_switches({"PI0_VERBOSE": "1", "OTHER": "x"})
    assert switches.verbose and switches.apply(1.5) == 1.5
    assert switches.set_variables == (("PI0_VERBOSE", "1"),)
    with pytest.raises(ConfigError, match="PI0_CFG_SCALE='big': expected a number"):
        sampling_switches({"PI0_CFG_SCALE": "big"})
    with pytest.raises(ConfigError, match="PI0_ENABLE_DUAL=0 would make every cfg<scale>/"):
        check_workflow_switches({"PI0_ENABLE_DUAL": "0"})
    check_workflow_switches({"PI0_VERBOSE": "1"})  # logging changes no result


def test_a_verbose_policy_logs_every_call(lowdim_policy, caplog, monkeypatch):
    monkeypatch.setattr(lowdim_policy, "verbose", True)
    with caplog.at_level(logging.INFO, logger="ript.models.policy"):
        lowdim_policy.sample_actions(lowdim_obs(), [PROMPT] * 2, 3.0, torch.randn(2, 6, 8))
    assert "sample_actions" in caplog.text and "(2, 6, 7)" in caplog.text and "dual" in caplog.text


def test_act_is_independent_of_the_batch(lowdim_policy):
    def request(i, seed):
        obs = {k: v[i] for k, v in lowdim_obs(3).items()}
        spec = EpisodeSpec(i, "libero_object", 7, 0, 0, seed, 0, "g")
        return PolicyRequest(obs, PROMPT, spec, step=5)

    together = lowdim_policy.act([request(0, 11), request(1, 12), request(2, 13)])
    alone = lowdim_policy.act([request(1, 12)])
    np.testing.assert_allclose(together[1], alone[0], rtol=1e-5, atol=1e-5)
    assert together.shape == (3, 6, 7)


def test_padded_batches_give_the_unpadded_actions(lowdim_policy, monkeypatch):
    """Where CUDA graphs replay, `act` pads batches to powers of two (and prompts to a
    multiple of 16 tokens); the caller gets its rows, unchanged."""
    assert [padded_batch_size(n) for n in (1, 2, 3, 5, 16, 17)] == [1, 2, 4, 8, 16, 32]
    requests = [
        PolicyRequest(
            {k: v[i] for k, v in lowdim_obs(3).items()},
            PROMPT,
            EpisodeSpec(i, "libero_object", 7, 0, 0, 20 + i, 0, "g"),
            step=2,
        )
        for i in range(3)
    ]
    plain = lowdim_policy.act(requests)
    seen = []
    sample = lowdim_policy.sample_actions

    def counted(obs, *args, **kwargs):
        seen.append(len(obs["state"]))
        return sample(obs, *args, **kwargs)

    monkeypatch.setattr(lowdim_policy, "sample_actions", counted)
    monkeypatch.setattr(lowdim_policy, "_graphed", lambda: True)
    padded = lowdim_policy.act(requests)
    assert seen == [4] and padded.shape == plain.shape == (3, 6, 7)
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named(lowdim_policy):
    obs = lowdim_obs()
    with pytest.raises(ValueError, match=r"has 8 dims; the checkpoint's norm stats expect 36"):
        bad = PolicySettings(state_keys=["state"])
        Policy(lowdim_policy.model, lowdim_policy.tokenizer, NORM, bad).prepare(obs, [PROMPT] * 2)
    nan = {**obs, "state": np.full((2, 8), np.nan, dtype=np.float32)}
    with pytest.raises(ValueError, match="NaN"):
        lowdim_policy.sample_actions(nan, [PROMPT] * 2)
    with pytest.raises(ValueError, match=r"lacks state key\(s\) \['privileged_object_state'\]"):
        lowdim_policy.sample_actions({"state": obs["state"]}, [PROMPT] * 2)
    with pytest.raises(ValueError, match="1 prompts for a batch of 2"):
        lowdim_policy.sample_actions(obs, [PROMPT])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / "model.safetensors").unlink(), "lacks model.safetensors"),
        (lambda p: (p / "norm_stats.json").unlink(), "lacks norm_stats.json"),
        (
            lambda p: (p / "tokenizer.json").unlink() or (p / "tokenizer_config.json").unlink(),
            "no tokenizer",
        ),
        (lambda p: (p / "policy.json").unlink(), "lacks policy.json"),
        (
            lambda p: (p / "config.json").write_text(json.dumps({"model_type": "bert"})),
            "holds a 'bert' model",
        ),
        (lambda p: (p / "norm_stats.json").write_text("{not json"), "not valid JSON"),
        (
            lambda p: (p / "norm_stats.json").write_text(json.dumps({"norm_stats": {}})),
            "lacks 'state'",
        ),
        (lambda p: shutil.rmtree(p), "checkpoint directory not found"),
    ],
)
def test_broken_checkpoints_are_named(lowdim_policy, tmp_path, damage, message):
    path = tmp_path / "ckpt"
    lowdim_policy.save_pretrained(path)
    damage(path)
    with pytest.raises((CheckpointError, NormStatsError, FileNotFoundError), match=message) as err:
        Policy.from_pretrained(path)
    assert str(path) in str(err.value)


def test_wrong_dims_in_a_checkpoint(lowdim_policy, tmp_path):
    lowdim_policy.save_pretrained(tmp_path)
    NormStats(stats(36), stats(9)).save(tmp_path / "norm_stats.json")
    with pytest.raises(CheckpointError, match="9 action dims, policy.json says action_dim=7"):
        Policy.from_pretrained(tmp_path)
    NormStats(stats(80), stats(7)).save(tmp_path / "norm_stats.json")
    with pytest.raises(
        CheckpointError, match="80 state dims, more than the model's max_state_dim 64"
    ):
        Policy.from_pretrained(tmp_path)


def test_per_sample_loss_of_raw_action_chunks(lowdim_policy):
    actions = np.random.default_rng(0).normal(size=(2, 6, 7)).astype(np.float32)
    branches = [torch.ones(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)]
    losses = lowdim_policy.model.compute_loss(
        **lowdim_policy.loss_inputs(lowdim_obs(), [PROMPT] * 2, actions), branches=branches
    )
    assert losses.shape == (2, 2) and torch.isfinite(losses).all()
