"""Memory, speed and numerics of pi0-size training settings, measured against each other.

    python benchmarks/train_memory.py [--out DIR]                  # every setting, in one run
    python benchmarks/train_memory.py --preset tiny --device cpu   # the same code on a CPU

Random weights, `PI0Config()` sizes (the `pi0` preset), a fixed synthetic batch of 32 with
both 224 px cameras, the CFG objective with both branches (alpha_uncond 0.1), lr 2.5e-5
without warm-up, EMA 0.99, as `config/pi0_libero.yaml` trains. Every setting runs in a fresh
process (`ript.rl.train.Trainer.train_step`, the code a training job runs; several GPUs under
torchrun) and reports its peak GPU memory (the largest over ranks), its median step time and
its loss per step. Printed: a table with ratios against the pure-bf16 step (the reference),
the loss curves of `mixed` and `bf16`, and how closely a 2-GPU FSDP run follows the 1-GPU
run over the same steps. `--out` keeps the rows (JSON) and the curves (PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# name -> (GPUs, precision, activation checkpointing, finetune, steps)
SETTINGS = {
    "bf16": (1, "bf16", False, "full", 50),
    "bf16+ac": (1, "bf16", True, "full", 10),
    "mixed": (1, "mixed", False, "full", 10),
    "mixed+ac": (1, "mixed", True, "full", 50),
    "fp32+ac": (1, "fp32", True, "full", 20),
    "fsdp2": (2, "mixed", False, "full", 10),
    "fsdp2+ac": (2, "mixed", True, "full", 20),
    "lora": (1, "mixed", False, "lora", 10),
    "lora+ac": (1, "mixed", True, "lora", 10),
}
BATCH = 32
PROMPT = "pick up the alphabet soup and place it in the basket"


class FixedBatch:
    """A dataset of BATCH fixed samples (each step draws its global batch from them)."""

    def __init__(self, image_size: int, chunk_size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        images = [rng.integers(0, 256, (BATCH, image_size, image_size, 3), np.uint8) for _ in "ab"]
        self.data = {
            "obs": {
                "state": rng.normal(size=(BATCH, 8)).astype(np.float32),
                "agentview_rgb": images[0],
                "eye_in_hand_rgb": images[1],
            },
            "prompts": [PROMPT] * BATCH,
            "actions": rng.uniform(-1, 1, (BATCH, chunk_size, 7)).astype(np.float32),
        }

    def __len__(self) -> int:
        return BATCH

    def batch(self, rows: np.ndarray) -> dict:
        return {
            "obs": {k: v[rows] for k, v in self.data["obs"].items()},
            "prompts": [self.data["prompts"][r] for r in rows],
            "actions": self.data["actions"][rows],
        }


def run_setting(name: str, preset: str, device_name: str, out: Path) -> None:
    """One setting in this process (one rank of it under torchrun); rank 0 writes the row."""
    from ript.config import load_config
    from ript.data.norm_stats import NormStats, Stats
    from ript.models.cfg_pi0 import CFGPI0ForConditionalGeneration
    from ript.models.policy import Policy, PolicySettings
    from ript.models.presets import build_config
    from ript.models.tokenizer import build_word_tokenizer
    from ript.rl.distributed import setup_distributed
    from ript.rl.train import Precision, Trainer, TrainSamples
    from ript.settings import Optimisation

    gpus, precision, checkpointing, finetune, steps = SETTINGS[name]
    config = load_config(
        None,
        {
            "preset": preset,
            "cameras": True,
            "image_size": 224,
            "camera_keys": ["agentview_rgb", "eye_in_hand_rgb"],
            "batch_size": BATCH,
            "learning_rate": 2.5e-5,
            "warmup_steps": 0,
            "final_lr_ratio": 1.0,
            "train_steps": steps,
            "ema_decay": 0.99,
            "precision": precision,
            "activation_checkpointing": checkpointing,
            "finetune": finetune,
            "device": device_name,
        },
    )
    rank, world, device = setup_distributed(config["device"])
    tokenizer = build_word_tokenizer([PROMPT])
    model_config = build_config(
        preset,
        chunk_size=config["chunk_size"],
        vocab_size=None if preset == "pi0" else len(tokenizer),
    )
    torch.manual_seed(0)
    with torch.device(device):  # built where it trains: a 3.5B model initialises in seconds
        model = CFGPI0ForConditionalGeneration(model_config)
    model.to(dtype=Precision.resolve(precision, device).master_dtype)

    stats = NormStats(Stats.identity(8), Stats.identity(7))
    settings = PolicySettings(camera_keys=["agentview_rgb", "eye_in_hand_rgb"], num_camera_slots=3)
    policy = Policy(model, tokenizer, stats, settings, cuda_graphs=False)
    data = FixedBatch(model_config.vlm_config.vision_config.image_size, config["chunk_size"])
    samples = TrainSamples(data, np.ones(BATCH), np.ones(BATCH, dtype=bool))
    row = {"setting": name, "gpus": world, "steps": steps}
    cuda = device.type == "cuda"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(
                policy, samples, Optimisation.of(config), mode="cfg", steps=steps,
                learning_rate=config["learning_rate"], out=tmp, alpha_uncond=0.1, rank=rank,
                world=world, progress=False,
            )  # fmt: skip
            start = None
            if world == 1:  # a copy on the CPU, so the GPU's peak is the training's own
                start = [p.detach().float().cpu().clone() for p in trainer.params]
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            times, losses = [], []
            for _ in range(steps):
                t0 = time.perf_counter()
                result = trainer.train_step()
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
                losses.append(result["loss"])
            if start is not None:  # how far the weights moved: bf16 loses most of an update
                deltas = [
                    p.detach().float().cpu() - w for p, w in zip(trainer.params, start, strict=True)
                ]
                moved = sum(int((d != 0).sum()) for d in deltas)
                norm = sum(float((d**2).sum()) for d in deltas)
                size = sum(w.numel() for w in start)
                row |= {"moved_fraction": moved / size, "update_norm": norm**0.5}
        row |= {"step_s": float(np.median(times[2:] or times)), "loss": losses}
        if cuda:
            peaks = torch.tensor(
                [torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)],
                device=device,
            )
            torch.distributed.all_reduce(peaks, op=torch.distributed.ReduceOp.MAX)
            row |= {"peak_gib": peaks[0].item() / 2**30, "reserved_gib": peaks[1].item() / 2**30}
    except torch.cuda.OutOfMemoryError as e:
        row |= {"oom": str(e).splitlines()[0][:200]}
    if rank == 0:
        out.write_text(json.dumps(row))
    torch.distributed.destroy_process_group()


def launch(name: str, preset: str, device: str, out: Path) -> dict:
    gpus = SETTINGS[name][0]
    script = [__file__, "--one", name, "--preset", preset, "--device", device, "--row", str(out)]
    if gpus > 1:
        command = ["torchrun", "--standalone", f"--nproc-per-node={gpus}", *script]
    else:
        command = [sys.executable, *script]
    env = os.environ | ({"CUDA_VISIBLE_DEVICES": "0"} if gpus == 1 and device == "cuda" else {})
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if not out.is_file():
        errors = [line for line in result.stderr.splitlines() if "Error" in line]
        return {"setting": name, "gpus": gpus, "error": (errors or ["no result"])[-1][-300:]}
    return json.loads(out.read_text())


def table(rows: list[dict]) -> str:
    ref = next((r for r in rows if r["setting"] == "bf16" and "step_s" in r), None)
    lines = [
        "| setting | GPUs | peak GiB per GPU (reserved) | step s | vs pure-bf16 step |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "step_s" not in r:
            lines.append(f"| {r['setting']} | {r['gpus']} | {r.get('oom') or r.get('error')} | | |")
            continue
        peak = f"{r['peak_gib']:.1f} ({r['reserved_gib']:.1f})" if "peak_gib" in r else "-"
        ratio = f"{r['step_s'] / ref['step_s']:.2f}x" if ref else ""
        lines.append(f"| {r['setting']} | {r['gpus']} | {peak} | {r['step_s']:.3f} | {ratio} |")
    return "\n".join(lines)


def curves(rows: list[dict], out: Path | None) -> str:
    by = {r["setting"]: r["loss"] for r in rows if "loss" in r}
    text = []
    moved = {r["setting"]: r for r in rows if "update_norm" in r}
    for name in ("mixed+ac", "bf16"):
        if name in by:
            loss = by[name]
            update = (
                f"; {moved[name]['moved_fraction']:.1%} of the weights moved, update norm "
                f"{moved[name]['update_norm']:.3g}"
                if name in moved
                else ""
            )
            text.append(
                f"{name}: loss {loss[0]:.4f} -> {loss[-1]:.4f} "
                f"(mean of the last 10 steps {np.mean(loss[-10:]):.4f}){update}"
            )
    if {"fsdp2+ac", "mixed+ac", "fp32+ac"} <= set(by):
        # bf16 tolerance: how far bf16 autocast alone moves the curve away from fp32's
        n = min(len(by["fsdp2+ac"]), len(by["fp32+ac"]))
        one, two, ref = (np.array(by[k][:n]) for k in ("mixed+ac", "fsdp2+ac", "fp32+ac"))
        fsdp, tolerance = np.abs(two - one) / one, np.abs(one - ref) / ref
        text.append(
            f"over {n} steps, largest relative loss difference: 2-GPU FSDP vs 1 GPU (both "
            f"mixed) {fsdp.max():.2e}; bf16 tolerance (1-GPU mixed vs fp32) {tolerance.max():.2e}"
        )
    if out is not None and by:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name in ("mixed+ac", "bf16", "fsdp2+ac", "fp32+ac"):
            if name in by:
                ax.plot(range(1, len(by[name]) + 1), by[name], label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("CFG objective")
        ax.set_title("pi0, random weights, fixed batch of 32, lr 2.5e-5")
        ax.legend()
        fig.savefig(out / "train_loss.png", dpi=120, bbox_inches="tight")
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pi0")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--out", type=Path, help="keep rows.json (merged with earlier runs') and train_loss.png"
    )
    parser.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--row", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_setting(args.one, args.preset, args.device, args.row)
        return
    gpus = torch.cuda.device_count() if args.device == "cuda" else 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            if SETTINGS[name][0] > gpus:
                print(f"{name}: needs {SETTINGS[name][0]} GPUs, {gpus} here; skipped")
                continue
            rows.append(launch(name, args.preset, args.device, Path(tmp) / f"{name}.json"))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "loss"}), flush=True)
    if args.out:  # rows of earlier runs into the same folder are kept (settings run apart)
        args.out.mkdir(parents=True, exist_ok=True)
        kept = args.out / "rows.json"
        earlier = json.loads(kept.read_text()) if kept.is_file() else []
        ran = {r["setting"] for r in rows}
        rows = [r for r in earlier if r["setting"] not in ran] + rows
        rows.sort(key=lambda r: list(SETTINGS).index(r["setting"]))
        kept.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print(curves(rows, args.out))


if __name__ == "__main__":
    main()
