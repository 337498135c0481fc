"""`ript train`: the CFG objective, schedules, resume, FSDP, non-finite steps."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
from rollouts import write_rollouts

from ript.config import load_config
from ript.data.norm_stats import compute_norm_stats
from ript.models.cfg_pi0 import UNCOND
from ript.models.policy import Policy, checkpoint_dtype
from ript.rl.distributed import setup_distributed
from ript.rl.label import label
from ript.rl.train import (
    MetricsLog,
    Trainer,
    TrainingError,
    build_policy,
    cfg_samples,
    lr_factor,
    train,
)
from ript.settings import CfgSchedule, Labels, Model, Optimisation, SftSchedule

DIST_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
GROUPS = {"g0": [True, False, False], "g1": [False, True, False], "g2": [True, True, False]}
SETTINGS = {
    "chunk_size": 4,
    "batch_size": 8,
    "sft_steps": 3,
    "train_steps": 6,
    "warmup_steps": 2,
    "checkpoint_every": 3,
    "learning_rate": 1e-3,
    "rollouts_per_init": 3,
    "device": "cpu",
}


@pytest.fixture(autouse=True)
def clean_dist_env():
    saved = {k: os.environ.pop(k) for k in DIST_KEYS if k in os.environ}
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    for k in DIST_KEYS:
        os.environ.pop(k, None)
    os.environ.update(saved)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Rollout shard, its label table, norm stats and an SFT base policy."""
    root = tmp_path_factory.mktemp("train")
    shard = write_rollouts(root / "rollouts.h5", GROUPS, length=7)
    config = load_config(None, SETTINGS)
    label(Labels.of(config), [shard], root / "labels.parquet")
    stats, _ = compute_norm_stats([shard], ["state"])
    stats.save(root / "norm_stats.json")
    base = train(
        Model.of(config),
        Optimisation.of(config),
        SftSchedule.of(config),
        out=root / "sft",
        demos=[str(shard)],
        norm_stats=str(root / "norm_stats.json"),
        progress=False,
    )
    for k in DIST_KEYS:
        os.environ.pop(k, None)
    return {"root": root, "shard": shard, "labels": root / "labels.parquet", "base": base}


def make_trainer(data, tmp_path, alpha: float, **overrides) -> Trainer:
    config = load_config(None, SETTINGS | overrides)
    rank, world, device = setup_distributed("cpu")
    policy = build_policy(
        Model.of(config),
        mode="cfg",
        init=str(data["base"]),
        norm_stats=None,
        cond_mode="bias",
        device=device,
        dtype=torch.float32,
    )
    samples = cfg_samples(str(data["labels"]), Model.of(config), frames_in_memory_bytes=0)
    schedule = CfgSchedule.of(config)
    return Trainer(
        policy,
        samples,
        Optimisation.of(config),
        mode="cfg",
        steps=schedule.train_steps,
        learning_rate=schedule.learning_rate,
        out=tmp_path / "run",
        alpha_uncond=alpha,
        progress=False,
    )


def weights(path) -> dict[str, torch.Tensor]:
    return Policy.from_pretrained(path).model.state_dict()


def assert_same_weights(a, b, **tol) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], **(tol or {"rtol": 0, "atol": 0}), msg=key)


def test_lr_warms_up_then_decays_to_the_final_ratio():
    factors = [lr_factor(s, 2, 10, 0.1) for s in range(11)]
    assert factors[0] == pytest.approx(1 / 3) and factors[1] == pytest.approx(2 / 3)
    assert factors[2] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[2:], factors[3:], strict=False))


def test_objective_is_the_weighted_two_branch_loss(data, tmp_path):
    trainer = make_trainer(data, tmp_path, alpha=0.3)
    objective, *_ = trainer.losses(0)
    draw = trainer.draw(0)
    batch = trainer.samples.dataset.batch(draw["rows"])
    policy = trainer.policy
    labels = torch.full((8,), 1)
    per_sample = policy.model.compute_loss(
        **policy.loss_inputs(batch["obs"], batch["prompts"], batch["actions"]),
        branches=[labels, torch.full((8,), UNCOND)],
        noise=torch.from_numpy(draw["noise"]),
        time=torch.from_numpy(draw["time"]).float(),
    )
    w = torch.from_numpy(trainer.samples.w_pos[draw["rows"]]).float()
    want = (w * per_sample[0]).mean() + 0.3 * per_sample[1].mean()
    torch.testing.assert_close(objective, want)
    assert 0 < w.sum() < 8  # the batch mixes positive and non-positive samples
    # the log: the positive branch's loss as a mean over its samples, and their share
    trainer.metrics = MetricsLog(tmp_path / "metrics.csv", [])
    row = trainer.train_step()
    positive_mean = float((w * per_sample[0]).detach().sum() / w.sum())
    assert row["loss_pos"] == pytest.approx(positive_mean, rel=1e-5)
    assert row["positive_weight"] == pytest.approx(float(w.mean()))
    assert row["loss"] == pytest.approx(float(want.detach()), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_alpha_uncond_zero_gives_the_unconditional_branch_no_gradient(data, tmp_path, alpha):
    trainer = make_trainer(data, tmp_path, alpha=alpha)
    objective, *_ = trainer.losses(0)
    objective.backward()
    grad = trainer.policy.model.embed_action_time.cond_bias.weight.grad
    assert grad[1].abs().sum() > 0  # the positive label learns
    assert (grad[UNCOND].abs().sum() > 0) == (alpha > 0)


def test_condition_dropout_blanks_the_prompt_and_drops_the_label(data, tmp_path, monkeypatch):
    trainer = make_trainer(data, tmp_path, alpha=0.0, p_uncond=1.0)
    seen = {}
    loss_inputs = trainer.policy.loss_inputs

    def spy(obs, prompts, actions):
        seen["prompts"] = prompts
        return loss_inputs(obs, prompts, actions)

    monkeypatch.setattr(trainer.policy, "loss_inputs", spy)
    trainer.losses(0)[0].backward()
    assert seen["prompts"] == [""] * 8
    grad = trainer.policy.model.embed_action_time.cond_bias.weight.grad
    assert grad[1].abs().sum() == 0 and grad[UNCOND].abs().sum() > 0


def test_sft_keeps_the_condition_at_its_initial_zeros(data):
    bias = Policy.from_pretrained(data["base"]).model.embed_action_time.cond_bias.weight
    assert bias.abs().max() == 0
    assert (data["root"] / "sft/metrics.csv").read_text().count("\n") == 1 + 3


def cfg_sections(**overrides) -> tuple[Model, Optimisation, CfgSchedule]:
    config = load_config(None, SETTINGS | overrides)
    return Model.of(config), Optimisation.of(config), CfgSchedule.of(config)


def run_cfg(data, out, **overrides):
    return train(
        *cfg_sections(**overrides),
        out=out,
        labels=str(data["labels"]),
        init=str(data["base"]),
        alpha_uncond=0.2,
        progress=False,
    )


def test_cfg_scale_does_not_change_training(data, tmp_path):
    a = run_cfg(data, tmp_path / "a", cfg_scale=[1.0], train_steps=2)
    b = run_cfg(data, tmp_path / "b", cfg_scale=[3.0, 7.5], train_steps=2)
    assert_same_weights(a, b)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_resume_reaches_the_weights_of_an_uninterrupted_run(data, tmp_path, monkeypatch, finetune):
    settings = {"ema_decay": 0.5, "finetune": finetune}
    full = run_cfg(data, tmp_path / "full", **settings)
    train_step = Trainer.train_step

    def dies_after_four(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return train_step(self)

    monkeypatch.setattr(Trainer, "train_step", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        run_cfg(data, tmp_path / "cut", **settings)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    assert [p.name for p in (tmp_path / "cut/checkpoints").iterdir()] == ["step_0000003"]
    assert not (tmp_path / "cut/policy").exists()
    for k in DIST_KEYS:
        os.environ.pop(k, None)
    resumed = train(
        *cfg_sections(**settings),
        out=tmp_path / "cut",
        labels=str(data["labels"]),
        init=str(data["base"]),
        alpha_uncond=0.2,
        resume=True,
        progress=False,
    )
    assert_same_weights(full, resumed)
    steps = [line.split(",")[0] for line in (tmp_path / "cut/metrics.csv").read_text().split()]
    assert steps == ["step", "1", "2", "3", "4", "5", "6"]


def test_nonfinite_losses_are_skipped_counted_and_bounded(data, tmp_path, monkeypatch):
    loss_inputs = Policy.loss_inputs

    def poisoned(self, obs, prompts, actions):
        out = loss_inputs(self, obs, prompts, actions)
        if poisoned.calls % 2 == 0:
            out["actions"] = out["actions"] * float("nan")
        poisoned.calls += 1
        return out

    poisoned.calls = 0
    monkeypatch.setattr(Policy, "loss_inputs", poisoned)
    trainer = make_trainer(data, tmp_path, alpha=0.2, max_nonfinite_steps=5)
    before = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
    row = trainer.train_step()
    assert row["nonfinite_steps"] == 1 and not np.isfinite(row["loss"])
    for key, value in trainer.policy.model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the poisoned step changed nothing
    row = trainer.train_step()
    assert row["nonfinite_steps"] == 1 and np.isfinite(row["loss"])
    trainer.optim = dataclasses.replace(trainer.optim, max_nonfinite_steps=1)
    with pytest.raises(TrainingError, match="2 steps with a non-finite loss"):
        trainer.train_step()


def _fsdp_worker(rank: int, port: int, data: dict, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    run_cfg(data, out, train_steps=3)


def test_two_process_fsdp_equals_one_process_on_the_same_global_batch(data, tmp_path):
    """gloo on the CPU: the model's parameters, gradients and AdamW state sharded over two
    processes give the weights of one process on the same global batch."""
    one = run_cfg(data, tmp_path / "one", train_steps=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_fsdp_worker, args=(r, port, data, str(tmp_path / "two")))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    settings = json.loads((tmp_path / "two/train_settings.json").read_text())
    assert settings["world_size"] == 2 and settings["parallel"] == "fsdp2"
    assert_same_weights(one, tmp_path / "two/policy", rtol=1e-4, atol=1e-6)


def test_cfg_training_needs_a_base_and_labels(data, tmp_path):
    with pytest.raises(ValueError, match="--labels"):
        train(*cfg_sections(), out=tmp_path, init=str(data["base"]))
    with pytest.raises(ValueError, match="--init: CFG training starts from a base"):
        train(*cfg_sections(), out=tmp_path, labels=str(data["labels"]))


def test_mixed_precision_updates_like_fp32_where_pure_bf16_loses_the_update(data, tmp_path):
    """pi0 checkpoints are stored in bf16 and fine-tuned at 2.5e-5. A bf16 weight w moves
    only by steps of ~|w| / 128, so updating bf16 weights in place drops most of an AdamW
    step of that size; `mixed` keeps fp32 masters and follows the fp32 run."""
    base = Policy.from_pretrained(data["base"])
    stored = {k: v.to(torch.bfloat16) for k, v in base.model.state_dict().items()}
    base.save_pretrained(tmp_path / "base_bf16", state_dict=stored)
    start = Policy.from_pretrained(tmp_path / "base_bf16").model.state_dict()
    updates = {}
    for precision in ("fp32", "mixed", "bf16"):
        out = run_cfg(
            data | {"base": tmp_path / "base_bf16"},
            tmp_path / precision,
            precision=precision,
            learning_rate=2.5e-5,
            warmup_steps=0,
            final_lr_ratio=1.0,
            train_steps=5,
            save_dtype="float32",
        )
        end = weights(out)
        updates[precision] = {
            k: end[k].float() - start[k].float() for k in start if start[k].numel() > 1000
        }
        if dist.is_initialized():
            dist.destroy_process_group()
        for k in DIST_KEYS:
            os.environ.pop(k, None)
    assert checkpoint_dtype(tmp_path / "bf16/policy") == torch.float32  # as save_dtype asks
    assert checkpoint_dtype(tmp_path / "base_bf16") == torch.bfloat16

    def error(precision: str) -> float:
        ref, got = updates["fp32"], updates[precision]
        return float(sum(((got[k] - ref[k]) ** 2).sum() for k in ref) ** 0.5) / float(
            sum((ref[k] ** 2).sum() for k in ref) ** 0.5
        )

    # measured: mixed 0.05 (bf16 autocast rounds the gradients a little), bf16 0.87
    assert error("mixed") < 0.15
    assert error("bf16") > 0.5


def test_lora_trains_adapters_only_and_saves_a_plain_policy_that_acts_the_same(data, tmp_path):
    trainer = make_trainer(data, tmp_path, alpha=0.2, finetune="lora", learning_rate=1e-2)
    model = trainer.policy.model
    assert any("lora_A" in n for n, _ in model.named_parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.metrics = MetricsLog(tmp_path / "metrics.csv", [])
    for _ in range(3):
        trainer.train_step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    stacks = [n for n in before if n.startswith(("model.vlm.language_model.", "model.dit."))]
    assert {n for n in stacks if "lora_" not in n}.isdisjoint(moved)
    assert any("lora_B" in n for n in moved) and "action_out_proj.weight" in moved
    obs = trainer.samples.dataset.batch(np.arange(4))
    noise = torch.randn(4, 4, 32)
    model.eval()
    with torch.no_grad():
        adapted = trainer.policy.sample_actions(obs["obs"], obs["prompts"], 1.0, noise)
    saved = Policy.from_pretrained(trainer.save_final())
    assert not any("lora" in n for n in saved.model.state_dict())  # a plain pi0
    merged = saved.sample_actions(obs["obs"], obs["prompts"], 1.0, noise)
    np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-5)
