"""`ript train`: flow-matching training of the CFG policy, SFT or CFG post-training.

    L = sum_i(w_pos_i * L_pos_i) / B + alpha_uncond * sum_i(L_uncond_i) / B

metrics.csv logs `loss` (L), `loss_pos` as the weighted mean over the samples that train the
positive branch, sum_i(w_pos_i * L_pos_i) / sum_i(w_pos_i), and `positive_weight`,
sum_i(w_pos_i) / B: L's positive term is their product, which moves with each batch's share
of positives and so hides whether the branch fits them (the default run's positive fraction
is ~0.39).

`L_pos` is the flow-matching loss with the positive label, `L_uncond` with the
unconditional one; both come from one `compute_loss` call sharing the prefix pass.
`--mode sft` (the bootstrap) trains plain flow matching on demonstrations: one branch, every
weight 1, the condition parameters frozen at their initial zeros, so the base is a plain pi0
and any condition mode can be added afterwards without changing it. Condition dropout
(`p_uncond`, the notes' scheme A) turns a sample's positive branch into an unconditional one
with a blank prompt; it then counts with weight 1. Training never reads `cfg_scale`.

Everything random in a step (the batch rows, dropout, flow time, noise) is drawn for the
global batch from a generator seeded by (seed, step), so a resumed run and a run split over
DDP processes see exactly the data of an uninterrupted single-process run. Padded chunk steps
past an episode's end repeat its last action and are trained on, as in openpi.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ript.checkpoint import SETTINGS_FILE, checkpoint_chunk_size
from ript.data.dataset import ChunkDataset, NoSuccessfulEpisodes
from ript.data.norm_stats import NormStats
from ript.envs.episode import derive_seed
from ript.files import (
    atomic_output,
    claim,
    describe_write_failure,
    remove,
    remove_stale_temporaries,
    write_text_atomic,
)
from ript.interrupt import Interrupted, deferred_signals, signal_name
from ript.models.cfg_pi0 import UNCOND, positive_label
from ript.models.checkpointing import enable_activation_checkpointing
from ript.models.lora import add_lora, merged_state_dict, unmerged_state_dict
from ript.models.policy import (
    CheckpointError,
    Policy,
    PolicySettings,
    checkpoint_dtype,
    new_policy,
)
from ript.rl.distributed import (
    full_tensor,
    like,
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    setup_distributed,
    shard,
)
from ript.rl.label import read_labels
from ript.settings import CfgSchedule, Model, Optimisation, Section, SftSchedule
from ript.tracking import Tracker

log = logging.getLogger(__name__)
MODES = ("sft", "cfg")
METRICS_FILE = "metrics.csv"
METRIC_COLUMNS = [
    "step",
    "loss",
    "loss_pos",
    "loss_uncond",
    "positive_weight",
    "grad_norm",
    "lr",
    "samples_per_s",
    "nonfinite_steps",
]
STATE_FILE = "trainer_state.pt"


class TrainingError(ValueError):
    """Training cannot go on (e.g. too many non-finite losses)."""


@dataclass
class TrainSamples:
    """Chunks to train on, with the positive-branch weight and label of every sample."""

    dataset: ChunkDataset
    w_pos: np.ndarray  # (N,)
    is_positive: np.ndarray  # (N,) bool


def sft_samples(
    shards: list[str], model: Model, schedule: SftSchedule, *, frames_in_memory_bytes: int
) -> TrainSamples:
    try:
        dataset = ChunkDataset(
            shards,
            chunk_size=model.chunk_size,
            obs_keys=[*model.state_keys, *model.camera_keys],
            only_successful=schedule.sft_only_successful,
            frames_in_memory_bytes=frames_in_memory_bytes,
        )
    except NoSuccessfulEpisodes as e:
        raise ValueError(
            f"{e} (sft_only_successful: true). Lower expert_action_noise or "
            "expert_grasp_offset, use tasks the scripted expert solves (README), or set "
            "sft_only_successful: false"
        ) from None
    n = len(dataset)
    return TrainSamples(dataset, np.ones(n), np.ones(n, dtype=bool))


NO_SIGNAL_ADVICE = (
    "CFG training needs rollout groups where some succeed and some fail: collect more "
    "rollouts per init state (rollouts_per_init), or start from a policy that succeeds on "
    "some but not all of the training init states"
)


def cfg_samples(labels_path: str, model: Model, *, frames_in_memory_bytes: int) -> TrainSamples:
    """Every step of the labelled episodes, weighted by the span of the table it falls in.

    A table without a single positive label is refused: the positive branch would learn
    nothing and the run would still end in a policy that looks trained."""
    table, summary = read_labels(labels_path)
    if table.empty:
        raise ValueError(
            f"{labels_path}: no labelled episodes ({summary.line()}): every group had equal "
            f"rewards. {NO_SIGNAL_ADVICE}"
        )
    if not (table["w_pos"] > 0).any():
        raise ValueError(
            f"{labels_path}: no positive label among {summary.episodes_kept} episodes (mean "
            f"reward {summary.mean_reward:.3f}; {summary.groups_kept} of {summary.groups} "
            f"groups kept). {NO_SIGNAL_ADVICE}"
        )
    dataset = ChunkDataset(
        sorted(table["shard"].unique()),
        chunk_size=model.chunk_size,
        obs_keys=[*model.state_keys, *model.camera_keys],
        episodes=set(zip(table["shard"], table["demo"], strict=True)),
        frames_in_memory_bytes=frames_in_memory_bytes,
    )
    spans = {
        key: group.sort_values("step_start")
        for key, group in table.groupby(["shard", "demo"], sort=False)
    }
    w_pos, positive = [], []
    for ep in dataset.episodes:  # dataset.index lists each episode's steps in order
        rows = spans[ep.source]
        span = np.searchsorted(rows["step_start"].to_numpy(), np.arange(len(ep.actions)), "right")
        w_pos.append(rows["w_pos"].to_numpy()[span - 1])
        positive.append(rows["is_positive"].to_numpy()[span - 1])
    return TrainSamples(dataset, np.concatenate(w_pos), np.concatenate(positive).astype(bool))


def lr_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """Linear warm-up to the peak, then cosine decay to `final_ratio` of it (openpi)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Precision:
    """How a run keeps and computes its numbers (config `precision`).

    `mixed`: fp32 weights, AdamW moments and EMA, bf16 autocast for forward and backward.
    `bf16`: all of those in bf16 and updated in place: a bf16 weight above ~0.0064 cannot move
    by one step of 2.5e-5 (its spacing is 2^-7 of its size), so at pi0's fine-tuning rates
    most updates round away. `fp32`: no autocast (the CPU default)."""

    name: str
    master_dtype: torch.dtype
    autocast: bool

    @classmethod
    def resolve(cls, name: str, device: torch.device) -> Precision:
        if name == "auto":
            name = "mixed" if device.type == "cuda" else "fp32"
        dtypes = {"mixed": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16}
        return cls(name, dtypes[name], autocast=name != "fp32")

    @property
    def frozen_dtype(self) -> torch.dtype:
        """Weights nothing updates are only read, in bf16 under autocast anyway."""
        return torch.bfloat16 if self.autocast else torch.float32


def condition_parameters(policy: Policy) -> list[nn.Parameter]:
    model = policy.model
    names = ("cond_bias", "cond_concat", "cond_token")
    params = [p for n, p in model.embed_action_time.named_parameters() if n.startswith(names)]
    return params + ([model.cond_gate] if hasattr(model, "cond_gate") else [])


class Trainer:
    """One training run writing checkpoints, metrics and the final policy into `out`."""

    def __init__(
        self,
        policy: Policy,
        samples: TrainSamples,
        optim: Optimisation,
        *,
        mode: str,
        steps: int,
        learning_rate: float,
        out: str | Path,
        alpha_uncond: float = 0.0,
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
        identity: str = "",
        save_dtype: torch.dtype = torch.float32,
        tracker: Tracker | None = None,
    ) -> None:
        """`identity` (see `run_identity`) must match a checkpoint's for it to be resumed;
        the final policy is saved in `save_dtype` (checkpoints keep the training dtype);
        `tracker` gets every metrics.csv row (`ript.tracking`)."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        self.policy, self.samples, self.optim, self.mode = policy, samples, optim, mode
        self.out = Path(out)
        self.alpha_uncond = alpha_uncond if mode == "cfg" else 0.0
        self.rank, self.world, self.progress = rank, world, progress
        self.identity = identity
        self.save_dtype = save_dtype
        self.tracker = tracker or Tracker()
        self.steps = steps
        self.batch_size = min(optim.batch_size, len(samples.dataset))
        if self.batch_size < optim.batch_size:
            log.warning(
                "batch_size %d is larger than the %d training samples; using batches of %d",
                optim.batch_size,
                len(samples.dataset),
                self.batch_size,
            )
        if self.batch_size < world:
            raise ValueError(
                f"batch_size {self.batch_size}: a global batch needs at least one sample for "
                f"each of the {world} processes"
            )
        model = policy.model.train()
        if mode == "sft":
            for p in condition_parameters(policy):
                p.requires_grad_(False)
        self.precision = Precision.resolve(optim.precision, policy.device)
        if self.precision.name == "bf16":
            log.warning(
                "precision: bf16 updates bf16 weights in place; at learning rates like pi0's "
                "2.5e-5 most updates round away. Use mixed unless memory forces bf16"
            )
        self.lora = optim.finetune == "lora"
        if self.lora:
            trainable = add_lora(
                model,
                optim.lora_rank,
                optim.lora_expert_rank,
                seed=optim.seed,
                frozen_dtype=self.precision.frozen_dtype,
            )
            log.info("LoRA: %d trainable parameters", trainable)
        if optim.activation_checkpointing:
            enable_activation_checkpointing(model)
        if world > 1:
            shard(model, policy.device)
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=learning_rate,
            betas=optim.adam_betas,
            weight_decay=optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, optim.warmup_steps, self.steps, optim.final_lr_ratio),
        )
        tracked = optim.ema_decay is not None
        self.ema = [p.detach().clone() for p in self.params] if tracked else None
        self.step = 0
        self.nonfinite = 0
        self.metrics: MetricsLog | None = None

    # --- one step ----------------------------------------------------------------------------

    def draw(self, step: int) -> dict[str, Any]:
        """The global batch of `step` (rows, dropout, time, noise); independent of rank."""
        model_config = self.policy.model.config
        rng = np.random.default_rng(derive_seed(self.optim.seed, step, MODES.index(self.mode)))
        batch = self.batch_size
        rows = rng.integers(0, len(self.samples.dataset), size=batch)
        dropped = rng.random(batch) < self.optim.p_uncond
        flow_time = (
            rng.beta(
                model_config.time_sampling_beta_alpha,
                model_config.time_sampling_beta_beta,
                size=batch,
            )
            * model_config.time_sampling_scale
            + model_config.time_sampling_offset
        )
        noise = rng.standard_normal(
            (batch, model_config.chunk_size, model_config.max_action_dim)
        ).astype(np.float32)
        return dict(rows=rows, dropped=dropped, time=flow_time, noise=noise)

    def losses(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objective of this rank, global sums of w * L_pos, of L_uncond and of w); the
        objective's gradients, averaged over ranks by FSDP, are those of the global loss."""
        draw = self.draw(step)
        mine = np.arange(self.rank, self.batch_size, self.world)
        rows, dropped = draw["rows"][mine], draw["dropped"][mine]
        data = self.samples.dataset.batch(rows)
        prompts = ["" if d else p for p, d in zip(data["prompts"], dropped, strict=True)]
        device, dtype = self.policy.device, self.policy.dtype
        weights = np.where(dropped, 1.0, self.samples.w_pos[rows])
        scheme = self.policy.model.config.label_scheme
        pos_labels = torch.where(torch.from_numpy(dropped), UNCOND, positive_label(scheme)).to(
            device
        )
        branches = [pos_labels]
        if self.alpha_uncond > 0:
            branches.append(torch.full_like(pos_labels, UNCOND))
        with torch.autocast(device.type, torch.bfloat16, enabled=self.precision.autocast):
            loss = self.policy.model.compute_loss(
                **self.policy.loss_inputs(data["obs"], prompts, data["actions"]),
                branches=branches,
                noise=torch.from_numpy(draw["noise"][mine]).to(device, dtype),
                time=torch.from_numpy(draw["time"][mine]).to(device, torch.float32),
            ).float()
        w = torch.from_numpy(weights).to(device, torch.float32)
        pos_sum = (w * loss[0]).sum()
        uncond_sum = loss[1].sum() if self.alpha_uncond > 0 else torch.zeros((), device=device)
        batch = self.batch_size
        objective = (pos_sum + self.alpha_uncond * uncond_sum) * self.world / batch
        sums = torch.stack([pos_sum.detach(), uncond_sum.detach(), w.sum()])
        dist.all_reduce(sums)
        sums = sums.cpu()
        return objective, sums[0], sums[1], sums[2]

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        objective, pos_sum, uncond_sum, weight_sum = self.losses(self.step)
        objective.backward()
        grad_norm = full_tensor(
            torch.nn.utils.clip_grad_norm_(self.params, self.optim.grad_clip_norm)
        )
        batch = self.batch_size
        loss_uncond = float(uncond_sum) / batch
        loss = float(pos_sum) / batch + self.alpha_uncond * loss_uncond
        loss_pos = float(pos_sum) / float(weight_sum) if float(weight_sum) > 0 else math.nan
        lr = self.scheduler.get_last_lr()[0]
        if math.isfinite(loss) and math.isfinite(float(grad_norm)):
            self.optimizer.step()
            self.update_ema()
        else:
            self.nonfinite += 1
            log.warning("step %d: non-finite loss %s; skipped", self.step, loss)
            if self.nonfinite > self.optim.max_nonfinite_steps:
                raise TrainingError(
                    f"{self.nonfinite} steps with a non-finite loss (max_nonfinite_steps="
                    f"{self.optim.max_nonfinite_steps}); last at step {self.step}. Lower "
                    "the learning rate or check the data and norm stats"
                )
        with warnings.catch_warnings():  # a skipped step still advances the schedule
            warnings.filterwarnings("ignore", "Detected call of .lr_scheduler.step")
            self.scheduler.step()
        self.step += 1
        return dict(
            step=self.step,
            loss=loss,
            loss_pos=loss_pos,
            loss_uncond=loss_uncond,
            positive_weight=float(weight_sum) / batch,
            grad_norm=float(grad_norm),
            lr=lr,
            samples_per_s=batch / (time.perf_counter() - t0),
            nonfinite_steps=self.nonfinite,
        )

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        decay = self.optim.ema_decay
        for e, p in zip(self.ema, self.params, strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)

    # --- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        """The EMA of every trained tensor, whole (every rank must call; rank 0 uses it)."""
        if self.ema is None:
            return None
        names = [n for n, _ in self.named_params]
        return {n: full_tensor(e).cpu() for n, e in zip(names, self.ema, strict=True)}

    def gathered(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """The model's whole tensors on rank 0 (empty elsewhere; every rank must call), the
        trained ones from the EMA when `ema`."""
        state = model_state(self.policy.model)
        averaged = self.ema_state() if ema else None
        if averaged is not None and self.rank == 0:
            state.update(averaged)
        return state

    def policy_weights(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What a policy directory holds: a plain pi0 (LoRA adapters folded in)."""
        return merged_state_dict(self.policy.model, state) if self.lora else state

    def save_checkpoint(self) -> Path:
        """checkpoints/step_N: a policy directory of the current weights (so a checkpoint
        evaluates like a final policy) plus the trainer state (optimizer, schedule, EMA, LoRA
        adapters) and the metrics so far; replaces older ones. Whole tensors, so any number
        of processes can resume it."""
        final = self.checkpoint_dir / f"step_{self.step:07d}"
        state = self.gathered()
        optimizer = optimizer_state(self.policy.model, self.optimizer)
        ema = self.ema_state()
        if self.rank == 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            with atomic_output(final) as tmp:
                self.policy.save_pretrained(tmp, state_dict=self.policy_weights(state))
                torch.save(
                    {
                        "step": self.step,
                        "identity": self.identity,
                        "nonfinite": self.nonfinite,
                        "optimizer": optimizer,
                        "scheduler": self.scheduler.state_dict(),
                        "ema": ema,
                        "adapters": {k: v for k, v in state.items() if "lora_" in k},
                    },
                    tmp / STATE_FILE,
                )
                self.metrics.save(tmp / METRICS_FILE)
            for old in self.checkpoint_dir.glob("step_*"):
                if old != final:
                    remove(old)
        dist.barrier()
        return final

    def resume(self) -> Path | None:
        """Continue from the last checkpoint; the checkpoint, or None when there is none."""
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return None
        try:
            state = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - unpickling raises many types for bad files
            raise CheckpointError(
                f"{path / STATE_FILE}: not a trainer state that loads with weights_only=True "
                f"(truncated, or holding code?); remove {path} to start over: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from e
        if state.get("identity") != self.identity:
            log.warning(
                "%s was written by a run with other settings or inputs; starting from step 0",
                path,
            )
            dist.barrier()
            if self.rank == 0:
                remove(self.checkpoint_dir)
            return None
        model = self.policy.model
        weights: dict[str, torch.Tensor] = {}
        if self.rank == 0:  # through transformers, which maps the stored names onto the model's
            weights = Policy.from_pretrained(path, dtype=self.precision.master_dtype).model
            weights = weights.state_dict()
            if self.lora:
                weights = unmerged_state_dict(model, weights, state["adapters"])
        load_model_state(model, weights, strict=not self.lora)
        load_optimizer_state(model, self.optimizer, state["optimizer"] if self.rank == 0 else {})
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            for (name, _), e in zip(self.named_params, self.ema, strict=True):
                e.copy_(like(state["ema"][name], e))
        self.step, self.nonfinite = state["step"], state["nonfinite"]
        log.info("resumed from %s at step %d", path, self.step)
        return path

    # --- the run -----------------------------------------------------------------------------

    def run(self, resume: bool = False) -> Path:
        """Train to the configured step count; return the final policy directory.

        SIGTERM (SLURM's notice before a kill) and SIGINT let the step in flight finish,
        write a checkpoint and raise `Interrupted`; `--resume` continues from it."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:  # left by a killed earlier run of this directory
            for directory in (self.out, self.checkpoint_dir):
                for stale in remove_stale_temporaries(directory):
                    log.info("removed %s, a temporary of an interrupted run", stale)
        dist.barrier()
        resumed = self.resume() if resume else None
        self.metrics = MetricsLog.restore(self.out / METRICS_FILE, resumed, self.step)
        every = self.optim.checkpoint_every
        desc = f"train {self.mode} {self.out.name}"
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            desc=desc,
            disable=not self.progress or self.rank != 0,
        )
        progress = ProgressLines(self.steps, self.step, desc, branches=self.mode == "cfg")
        with deferred_signals() as received:
            while self.step < self.steps:
                row = self.train_step()
                if self.rank == 0:
                    self.metrics.append(row)
                    self.tracker.log(self.tracked_values(row), step=self.step)
                    if not self.progress:
                        progress.update(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                stop = self.agreed_signal(received())
                if self.step % every == 0 or self.step == self.steps or stop:
                    checkpoint = self.save_checkpoint()
                if stop:
                    bar.close()
                    raise Interrupted(
                        stop,
                        f"{self.out}: stopped by {signal_name(stop)} at step {self.step} of "
                        f"{self.steps}; {checkpoint} written, rerun with --resume to go on",
                    )
        bar.close()
        return self.save_final()

    def tracked_values(self, row: dict[str, float]) -> dict[str, float]:
        values = {f"train/{k}": v for k, v in row.items() if k != "step"}
        if self.policy.device.type == "cuda":
            values["train/gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return values

    def agreed_signal(self, signum: int | None) -> int | None:
        """The signal any rank received, so that all ranks stop after the same step."""
        if self.world == 1:
            return signum
        flag = torch.tensor([signum or 0], device=self.policy.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def save_final(self) -> Path:
        """out/policy in `save_dtype`, written under a temporary name and renamed (the EMA's
        weights if enabled, LoRA adapters folded in)."""
        final = self.out / "policy"
        state = self.gathered(ema=True)
        if self.rank == 0:
            weights = {
                k: v.to(self.save_dtype) if v.is_floating_point() else v
                for k, v in self.policy_weights(state).items()
            }
            self.policy.model.eval()
            self.policy.policy_id = f"{self.out.name}"
            with atomic_output(final) as tmp:
                self.policy.save_pretrained(tmp, state_dict=weights)
                if (self.out / SETTINGS_FILE).is_file():
                    shutil.copy(self.out / SETTINGS_FILE, tmp / SETTINGS_FILE)
        dist.barrier()
        return final


class ProgressLines:
    """What the progress bar shows, as log lines for a job whose output goes to a file (a
    Snakemake job's log): about every 5% of the steps and at the end, with the ETA."""

    def __init__(self, steps: int, start: int, desc: str, branches: bool) -> None:
        """`branches`: also show the two branches' losses (CFG training)."""
        self.steps, self.start, self.desc, self.branches = steps, start, desc, branches
        self.every = max(1, steps // 20)
        self.t0 = time.monotonic()

    def update(self, row: dict[str, float]) -> None:
        step = int(row["step"])
        if step % self.every and step != self.steps:
            return
        elapsed = time.monotonic() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else math.inf
        eta = (self.steps - step) / rate if rate > 0 else math.inf
        loss = f"loss {row['loss']:.4f}"
        if self.branches:
            loss += f" (pos {row['loss_pos']:.4f}, uncond {row['loss_uncond']:.4f})"
        log.info(
            "%s: step %d/%d (%d%%), %s, lr %.2e, %.1f steps/s, elapsed %s, ETA %s",
            self.desc, step, self.steps, 100 * step // self.steps, loss, row["lr"], rate,
            _clock(elapsed), _clock(eta),
        )  # fmt: skip


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def run_identity(sections: list[Section], inputs: list[str | None], **run: Any) -> str:
    """What a checkpoint must have been trained with to be resumed: the settings of the
    run's sections, its own settings and its input files by path, size and modification time
    (a regenerated input is a new input)."""
    config = {type(section).__name__: section.as_dict() for section in sections}
    files = []
    for name in filter(None, inputs):
        path = Path(name)
        members = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        files += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in members]
    blob = json.dumps(dict(config=config, run=run, files=files), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoints/step_N (a half-written one is still a .tmp- name)."""
    found = sorted(checkpoint_dir.glob("step_*"))
    return found[-1] if found else None


class MetricsLog:
    """metrics.csv, appended per step. Every checkpoint holds a copy of the rows up to it,
    so a resumed run restores the history even where the file itself is gone (Snakemake
    deletes a failed job's declared outputs)."""

    def __init__(self, path: Path, rows: list[dict[str, str]]) -> None:
        self.path = path
        self.rows = rows
        self.save(path)

    @classmethod
    def restore(cls, path: Path, checkpoint: Path | None, step: int) -> MetricsLog:
        """The rows up to `step`: from the checkpoint's copy, or (checkpoints written before
        copies were kept) from the file itself; none for a fresh run."""
        rows: list[dict[str, str]] = []
        if checkpoint is not None:
            source = checkpoint / METRICS_FILE if (checkpoint / METRICS_FILE).is_file() else path
            if source.is_file():
                with source.open() as f:
                    rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            if len(rows) != step:
                log.warning(
                    "%s: the metrics of %d of the %d steps before the checkpoint are lost",
                    path,
                    step - len(rows),
                    step,
                )
        return cls(path, rows)

    def append(self, row: dict[str, float]) -> None:
        formatted = {k: (f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in row.items()}
        self.rows.append(formatted)
        try:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, METRIC_COLUMNS).writerow(formatted)
        except OSError as e:
            raise describe_write_failure(self.path, e) from e

    def save(self, path: Path) -> None:
        with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)


def build_policy(
    model: Model,
    *,
    mode: str,
    init: str | None,
    norm_stats: str | None,
    cond_mode: str,
    device: torch.device,
    dtype: torch.dtype,
) -> Policy:
    """The policy a run starts from: `init` (a checkpoint) or a fresh preset model, its
    weights in `dtype`."""
    if mode == "cfg" and norm_stats is not None:
        raise ValueError("--norm-stats: a CFG run keeps the base checkpoint's norm stats")
    if init is not None:
        return Policy.from_pretrained(
            init,
            device=device,
            dtype=dtype,
            cfg_scale=1.0,  # training never guides; a chosen init's scale is not inherited
            cond_mode=cond_mode,
            label_scheme=model.label_scheme,
            tokenizer_path=model.tokenizer_path,
        )
    if mode == "cfg":
        raise ValueError("--init: CFG training starts from a base checkpoint")
    if norm_stats is None:
        raise ValueError("--norm-stats: a policy trained from scratch needs norm stats")
    stats = NormStats.load(norm_stats)
    settings = PolicySettings(
        state_keys=list(model.state_keys),
        camera_keys=list(model.camera_keys),
        num_camera_slots=3 if model.camera_keys else 0,
        normalization=model.normalization,
        num_steps=model.num_inference_steps,
    )
    policy = new_policy(
        model.preset,
        stats,
        settings,
        cond_mode=cond_mode,
        label_scheme=model.label_scheme,
        chunk_size=model.chunk_size,
        max_state_dim=model.max_state_dim,
        max_action_dim=model.max_action_dim,
        seed=model.seed,
    )
    policy.model.to(device, dtype)
    return policy


def train(
    model: Model,
    optim: Optimisation,
    schedule: SftSchedule | CfgSchedule,
    *,
    out: str | Path,
    demos: list[str] | None = None,
    labels: str | None = None,
    init: str | None = None,
    norm_stats: str | None = None,
    cond_mode: str = "bias",
    alpha_uncond: float = 0.0,
    resume: bool = False,
    progress: bool = True,
    tracker: Tracker | None = None,
) -> Path:
    """Build the data and the policy, train, return the final policy directory: the SFT
    bootstrap on `demos` with an `SftSchedule`, CFG training on `labels` with a
    `CfgSchedule`."""
    if isinstance(schedule, SftSchedule):
        # the base trains with its condition parameters frozen at zero, so no grid key enters
        # it: CFG training in another cond_mode replaces them by fresh ones
        mode, alpha_uncond = "sft", 0.0
        steps, learning_rate = schedule.sft_steps, schedule.sft_learning_rate
    else:
        mode, steps, learning_rate = "cfg", schedule.train_steps, schedule.learning_rate
    if alpha_uncond < 0:
        raise ValueError(f"--alpha-uncond {alpha_uncond}: expected >= 0")
    saved = checkpoint_chunk_size(init) if init is not None else None
    if saved is not None and saved != model.chunk_size:
        raise ValueError(
            f"--init {init}: the checkpoint predicts chunks of {saved} actions (its "
            f"config.json chunk_size) but the config's chunk_size is {model.chunk_size}; set "
            f"chunk_size: {saved}"
        )
    in_memory = int(optim.frames_in_memory_gb * 2**30)
    if mode == "sft":
        if not demos:
            raise ValueError("--demos: SFT needs demonstration shards")
        samples = sft_samples(demos, model, schedule, frames_in_memory_bytes=in_memory)
    else:
        if labels is None:
            raise ValueError("--labels: CFG training needs a label table (ript label)")
        samples = cfg_samples(labels, model, frames_in_memory_bytes=in_memory)
    save_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        optim.save_dtype, checkpoint_dtype(init) if init is not None else torch.float32
    )
    rank, world, device = setup_distributed(optim.device)
    precision = Precision.resolve(optim.precision, device)
    try:
        # only rank 0 writes; it holds the run directory against a second run into it
        with claim(out) if rank == 0 else contextlib.nullcontext():
            policy = build_policy(
                model,
                mode=mode,
                init=init,
                norm_stats=norm_stats,
                cond_mode=cond_mode,
                device=device,
                dtype=precision.master_dtype,
            )
            trainer = Trainer(
                policy,
                samples,
                optim,
                mode=mode,
                steps=steps,
                learning_rate=learning_rate,
                out=out,
                alpha_uncond=alpha_uncond,
                rank=rank,
                world=world,
                progress=progress,
                identity=run_identity(
                    [model, optim, schedule],
                    [*(demos or []), labels, init, norm_stats],
                    mode=mode,
                    cond_mode=cond_mode,
                    alpha_uncond=alpha_uncond,
                ),
                save_dtype=save_dtype,
                tracker=tracker,
            )
            if rank == 0:
                Path(out).mkdir(parents=True, exist_ok=True)
                settings = dict(
                    mode=mode,
                    init=None if init is None else str(init),
                    cond_mode=cond_mode,
                    alpha_uncond=trainer.alpha_uncond,
                    samples=len(samples.dataset),
                    positive_fraction=float(samples.is_positive.mean()),
                    batch_size=trainer.batch_size,
                    precision=precision.name,
                    save_dtype=str(save_dtype).removeprefix("torch."),
                    finetune=optim.finetune,
                    activation_checkpointing=optim.activation_checkpointing,
                    world_size=world,
                    parallel="fsdp2" if world > 1 else "none",
                    device=str(device),
                )
                write_text_atomic(Path(out) / SETTINGS_FILE, json.dumps(settings, indent=2))
                log.info("train: %s", settings)
            return trainer.run(resume=resume)
    finally:
        dist.destroy_process_group()
