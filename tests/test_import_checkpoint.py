"""`ript import-checkpoint`: a tiny stock PI0 with random weights, written by the test in
LeRobot's and openpi's layouts, imported, and run beside the source model driven the way its
own framework drives it (prompt + newline, its normalisation, absolute actions from deltas)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PI0ForConditionalGeneration, PreTrainedTokenizerFast

from ript.cli import main
from ript.config import ConfigError, validate
from ript.models.importing import import_checkpoint
from ript.models.policy import CheckpointError, Policy, resize_image
from ript.models.presets import build_config, num_image_tokens

PROMPT = "Pick up the alphabet_soup and place it in the basket"
STATE_DIM, ACTION_DIM, CHUNK = 8, 7, 4
EPS = {"lerobot": 1e-8, "openpi": 1e-6}  # each framework's std guard


def newline_tokenizer(path):
    """Words and a newline token (PaliGemma's has one; ript's word tokenizer drops it)."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", "removed"), pre_tokenizers.Split(Regex("\n"), "isolated")]
    )
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    text = PROMPT.replace("_", " ")
    tok.train_from_iterator(
        [text + "\n", text.lower()], trainers.WordLevelTrainer(special_tokens=specials)
    )
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(path)
    return fast


def openpi_key(name: str) -> str:
    """transformers' PI0 parameter name -> openpi's PI0Pytorch one (the inverse of
    transformers' conversion mapping; the tied embeddings are stored as lm_head)."""
    if name == "model.vlm.language_model.embed_tokens.weight":
        return "paligemma_with_expert.paligemma.lm_head.weight"
    if name == "model.dit.embed_tokens.weight":
        return "paligemma_with_expert.gemma_expert.lm_head.weight"
    name = re.sub(r"^model\.vlm\.", "paligemma_with_expert.paligemma.model.", name)
    name = re.sub(r"^model\.dit\.", "paligemma_with_expert.gemma_expert.model.", name)
    return re.sub(r"^embed_action_time\.", "", name)


def stats(seed: int, dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=dim).astype(np.float32)
    return {"mean": mean, "std": std, "q01": mean - 2 * std, "q99": mean + 2 * std}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    tok = newline_tokenizer(root / "tokenizer")
    config = build_config("tiny", chunk_size=CHUNK, vocab_size=len(tok)).to_stock_config()
    torch.manual_seed(0)
    stock = PI0ForConditionalGeneration(config).eval()
    weights = {openpi_key(k): v.contiguous() for k, v in stock.state_dict().items()}
    state, action = stats(1, STATE_DIM), stats(2, ACTION_DIM)

    lerobot = root / "lerobot"
    lerobot.mkdir()
    save_file({f"model.{k}": v for k, v in weights.items()}, lerobot / "model.safetensors")
    (lerobot / "config.json").write_text(
        json.dumps(
            {
                "type": "pi0",
                "input_features": {
                    "observation.state": {"type": "STATE", "shape": [STATE_DIM]},
                    "observation.images.image": {"type": "VISUAL", "shape": [3, 64, 64]},
                    "observation.images.image2": {"type": "VISUAL", "shape": [3, 64, 64]},
                },
                "output_features": {"action": {"type": "ACTION", "shape": [ACTION_DIM]}},
                "normalization_mapping": {
                    "VISUAL": "IDENTITY",
                    "STATE": "MEAN_STD",
                    "ACTION": "MEAN_STD",
                },
                "paligemma_variant": "gemma_2b",
                "action_expert_variant": "gemma_300m",
                "chunk_size": CHUNK,
                "max_state_dim": 32,
                "max_action_dim": 32,
            }
        )
    )
    lerobot_stats = {f"observation.state.{k}": v for k, v in state.items() if k in ("mean", "std")}
    lerobot_stats |= {f"action.{k}": v for k, v in action.items() if k in ("mean", "std")}
    save_numpy(
        lerobot_stats, lerobot / "policy_preprocessor_step_3_normalizer_processor.safetensors"
    )

    legacy = root / "lerobot_legacy"  # LeRobot before processors: stats among the weights
    legacy.mkdir()
    buffers = {
        f"normalize_inputs.buffer_observation_state.{k}": torch.from_numpy(state[k])
        for k in ("mean", "std")
    } | {
        f"unnormalize_outputs.buffer_action.{k}": torch.from_numpy(action[k])
        for k in ("mean", "std")
    }
    save_file({f"model.{k}": v for k, v in weights.items()} | buffers, legacy / "model.safetensors")
    shutil.copy(lerobot / "config.json", legacy / "config.json")

    openpi = root / "openpi"
    (openpi / "assets/physical-intelligence/libero").mkdir(parents=True)
    save_file(weights, openpi / "model.safetensors")
    (openpi / "config.json").write_text(
        json.dumps(
            {
                "action_dim": 32,
                "action_horizon": CHUNK,
                "paligemma_variant": "gemma_2b",
                "action_expert_variant": "gemma_300m",
                "precision": "float32",
            }
        )
    )

    def padded(entry, fill):  # older openpi checkpoints pad the stats to the model's 32 dims
        return {
            k: np.concatenate([v, np.full(32 - len(v), fill)]).tolist() for k, v in entry.items()
        }

    (openpi / "assets/physical-intelligence/libero/norm_stats.json").write_text(
        json.dumps({"norm_stats": {"state": padded(state, 0.0), "actions": padded(action, 0.0)}})
    )
    return dict(root=root, tok=tok, stock=stock, state=state, action=action)


def observation(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "state": rng.normal(size=(1, STATE_DIM)).astype(np.float32),
        "agentview_rgb": rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8),
        "eye_in_hand_rgb": rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8),
    }


@torch.no_grad()
def source_actions(src, kind: str, obs, noise, delta_dims: int) -> np.ndarray:
    """The source model driven as openpi/LeRobot drive it, written out step by step."""
    stock, tok, config = src["stock"], src["tok"], src["stock"].config
    eps = EPS[kind]
    text = tok([PROMPT.replace("_", " ") + "\n"], return_tensors="pt")["input_ids"]
    n_image = 2 * num_image_tokens(config)
    ids = torch.cat([torch.full((1, n_image), config.vlm_config.image_token_id), text], dim=1)
    state = np.zeros((1, 32), np.float32)
    state[:, :STATE_DIM] = (obs["state"] - src["state"]["mean"]) / (src["state"]["std"] + eps)
    images = torch.zeros(1, 3, 3, 64, 64)
    for slot, key in enumerate(["agentview_rgb", "eye_in_hand_rgb"]):
        images[:, slot] = torch.from_numpy(obs[key]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    chunk = stock.sample_actions(
        state=torch.from_numpy(state),
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=images,
        pixel_attention_mask=torch.tensor([[True, True, False]]),
        noise=noise,
        num_steps=10,
    )[..., :ACTION_DIM].numpy()
    actions = chunk * (src["action"]["std"] + eps) + src["action"]["mean"]
    actions[..., :delta_dims] += obs["state"][:, None, :delta_dims]
    return actions


@pytest.mark.parametrize(
    ("folder", "delta_dims"), [("lerobot", 0), ("lerobot_legacy", 0), ("openpi", 6)]
)
def test_the_imported_policy_acts_like_its_source(source, tmp_path, folder, delta_dims):
    kind = folder.split("_")[0]
    out = import_checkpoint(
        kind,
        source["root"] / folder,
        tokenizer=source["root"] / "tokenizer",
        out=tmp_path / "imported",
        preset="tiny",
        delta_action_dims=delta_dims,
    )
    policy = Policy.from_pretrained(out)
    recorded = json.loads((out / "policy.json").read_text())
    assert recorded["prompt_format"] == "newline"
    assert recorded["delta_action_mask"] == [True] * delta_dims
    assert recorded["source"]["from"] == kind and recorded["source"]["preset"] == "tiny"
    assert policy.norm_stats.state.dim == STATE_DIM and policy.norm_stats.actions.dim == ACTION_DIM
    for seed in range(2):
        obs = observation(seed)
        noise = torch.randn(1, CHUNK, 32, generator=torch.Generator().manual_seed(seed))
        want = source_actions(source, kind, obs, noise, delta_dims)
        got = policy.sample_actions(obs, PROMPT, noise=noise)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # the newline and the delta mask matter: without them the actions differ
    plain = Policy(
        policy.model,
        policy.tokenizer,
        policy.norm_stats,
        type(policy.settings)(
            **{**recorded, "prompt_format": "lowercase", "delta_action_mask": []}
        ),
    )
    assert np.abs(plain.sample_actions(obs, PROMPT, noise=noise) - want).max() > 1e-3


def test_training_targets_invert_the_delta_actions(source, tmp_path):
    out = import_checkpoint(
        "openpi",
        source["root"] / "openpi",
        tokenizer=source["root"] / "tokenizer",
        out=tmp_path / "imported",
        preset="tiny",
        delta_action_dims=6,
    )
    policy = Policy.from_pretrained(out)
    obs = observation(3)
    absolute = np.random.default_rng(0).normal(size=(1, CHUNK, ACTION_DIM)).astype(np.float32)
    delta = policy.relative_actions(absolute, obs, sign=-1)
    np.testing.assert_allclose(delta[..., :6], absolute[..., :6] - obs["state"][:, None, :6])
    np.testing.assert_array_equal(delta[..., 6], absolute[..., 6])
    np.testing.assert_allclose(policy.relative_actions(delta, obs, sign=+1), absolute, atol=1e-6)
    targets = policy.loss_inputs(obs, [PROMPT], absolute)["actions"][..., :ACTION_DIM].numpy()
    normalized = policy.norm_stats.actions.normalize(delta, "zscore")
    np.testing.assert_allclose(targets, normalized, atol=1e-6)


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("kind", "breakage", "words"),
    [
        ("lerobot", "no stats", "no normalisation statistics"),
        ("lerobot", "pi05", "pi0.5"),
        ("openpi", "pi05", "pi0.5"),
        ("openpi", "wide stats", "not padding"),
        ("openpi", "no tokenizer", "no tokenizer"),
        ("openpi", "wrong preset", "misshapen tensors for the 'small' architecture"),
        ("lerobot", "no preset", "match no preset"),
    ],
)
def test_bad_checkpoints_fail_with_one_line_naming_the_file(
    source, tmp_path, capsys, monkeypatch, kind, breakage, words
):
    src = tmp_path / kind
    shutil.copytree(source["root"] / kind, src)
    tokenizer, preset = source["root"] / "tokenizer", "tiny"
    if breakage == "no stats":
        next(src.glob("policy_preprocessor_*.safetensors")).unlink()
    elif breakage == "pi05" and kind == "lerobot":
        edit_json(src / "config.json", type="pi05")
    elif breakage == "pi05":
        edit_json(src / "config.json", pi05=True)
    elif breakage == "wide stats":  # a 14-dim (ALOHA) checkpoint read as LIBERO's 7
        path = src / "assets/physical-intelligence/libero/norm_stats.json"
        data = json.loads(path.read_text())
        data["norm_stats"]["actions"]["mean"][10] = 0.5
        path.write_text(json.dumps(data))
    elif breakage == "no tokenizer":
        tokenizer = tmp_path / "empty"
        tokenizer.mkdir()
    elif breakage == "wrong preset":
        preset = "small"
    elif breakage == "no preset":
        edit_json(src / "config.json", paligemma_variant="dummy")
        preset = None
    args = ["import-checkpoint", "--from", kind, str(src), "--tokenizer", str(tokenizer)]
    args += ["--out", str(tmp_path / "out")] + (["--preset", preset] if preset else [])
    # in this process (a subprocess per case would import torch again), minus the SIGTERM
    # handler main() installs for a real run
    monkeypatch.setattr("ript.cli.install_interrupt_handlers", lambda: None)
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("ript import-checkpoint: error: ") and words in lines[-1], lines
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_not_overwritten(source, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        import_checkpoint(
            "openpi",
            source["root"] / "openpi",
            tokenizer=source["root"] / "tokenizer",
            out=tmp_path / "out",
            preset="tiny",
        )
    with pytest.raises(CheckpointError, match="not found"):
        import_checkpoint(
            "openpi",
            tmp_path / "missing",
            tokenizer=source["root"] / "tokenizer",
            out=tmp_path / "new",
            preset="tiny",
        )


def test_images_are_padded_rotated_and_held_to_the_render_size(source, tmp_path):
    out = import_checkpoint(
        "lerobot", source["root"] / "lerobot", tokenizer=source["root"] / "tokenizer",
        out=tmp_path / "imported", preset="tiny",
    )  # fmt: skip
    recorded = json.loads((out / "policy.json").read_text())
    assert (recorded["image_resize"], recorded["render_size"]) == ("pad", 256)
    assert recorded["images_rotated_180"] is True
    wide = torch.full((1, 3, 32, 64), 0.5)  # letterboxed: black bands above and below
    padded = resize_image(wide, 64, "pad")
    assert padded.shape == (1, 3, 64, 64)
    assert (padded[..., :16, :] == -1).all() and (padded[..., 48:, :] == -1).all()
    torch.testing.assert_close(padded[..., 16:48, :], torch.full((1, 3, 32, 64), 0.5))
    assert (resize_image(wide, 64, "stretch") == 0.5).all()
    square = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(resize_image(square, 64, "pad"), resize_image(square, 64, "stretch"))
    policy = Policy.from_pretrained(out)
    obs = observation(0)
    upright, _ = policy._images(obs, 1)
    policy.settings.images_rotated_180 = False
    turned, _ = policy._images(obs, 1)
    torch.testing.assert_close(turned, upright.flip(-2, -1))
    config = {
        "pretrained_path": str(out), "chunk_size": CHUNK, "cameras": True,
        "camera_keys": ["agentview_rgb", "eye_in_hand_rgb"], "privileged_object_state": False,
        "state_keys": ["state"],
    }  # fmt: skip
    assert validate({**config, "image_size": 256})["image_size"] == 256
    with pytest.raises(ConfigError, match=r"'image_size': 128 but .* 256 px renders"):
        validate({**config, "image_size": 128})
