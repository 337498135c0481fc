"""Where one rollout policy call goes: host preparation, sampling, the rest.

    python benchmarks/policy_call.py --preset small --device cuda --batch 1 2 4 8 16 \
        [--cameras 0 2] [--image-size 128] [--cfg-scale 1 3] [--repeats 20] [--out rows.json]

A freshly initialised policy of the preset (what `ript collect` and `ript evaluate` call,
with CUDA graphs on a GPU) gets LIBERO-shaped observations: the 8-dim state, and 0 or 2
uint8 cameras of `--image-size` px. Per (cameras, batch, cfg_scale) it prints the median of
`--repeats` calls, after a warm-up that captures the graphs:
  - call:    `Policy.sample_actions`, the whole call the env pool makes per batch;
  - prepare: `Policy.prepare` (tokenising, state normalisation, images to the device and
             resized to the model's size);
  - sample:  the sampler on prepared inputs (graph replay on a GPU);
  - other:   call - prepare - sample (noise, actions to the host, unnormalising).
Why: with two cameras the GPU vision run's policy calls cost 35-41 ms against 10-13 ms
without (README, Benchmarks), and the async engine, which serves smaller batches, lost to
the lock-step one there; this separates the host's share from the model's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ript.data.norm_stats import NormStats, Stats
from ript.models.policy import PolicySettings, new_policy
from ript.models.tokenizer import build_word_tokenizer

PROMPT = "pick up the alphabet soup and place it in the basket"
CAMERAS = ["agentview_rgb", "eye_in_hand_rgb"]
STATE_DIM = 8


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def make_policy(preset: str, cameras: int, device: torch.device, chunk: int):
    settings = PolicySettings(
        state_keys=["state"], camera_keys=CAMERAS[:cameras], num_camera_slots=cameras
    )
    policy = new_policy(
        preset,
        NormStats(Stats.identity(STATE_DIM), Stats.identity(7)),
        settings,
        tokenizer=build_word_tokenizer([PROMPT]),
        chunk_size=chunk,
        max_state_dim=STATE_DIM,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    policy.model.to(device, dtype)
    return policy


def rows_for(policy, cameras: int, batch: int, cfg_scale: float, args, device) -> dict:
    rng = np.random.default_rng(batch)
    obs = {"state": rng.normal(size=(batch, STATE_DIM)).astype(np.float32)}
    for key in CAMERAS[:cameras]:
        size = (batch, args.image_size, args.image_size, 3)
        obs[key] = rng.integers(0, 256, size, dtype=np.uint8)
    prompts = [PROMPT] * batch
    c = policy.model.config
    noise = torch.randn(batch, c.chunk_size, c.max_action_dim)
    steps = policy.settings.num_steps
    sample = policy.sampler or policy.model.sample_actions

    def call():
        with torch.no_grad():
            policy.sample_actions(obs, prompts, cfg_scale=cfg_scale, noise=noise)

    inputs = policy.prepare(obs, prompts)
    inputs["noise"] = noise.to(device, policy.dtype)

    def sampled():
        with torch.no_grad():
            sample(**inputs, num_steps=steps, cfg_scale=cfg_scale)

    for _ in range(3):  # graph capture and allocator warm-up
        call()
        sampled()
    total = median_ms(call, args.repeats, device)
    prepare = median_ms(lambda: policy.prepare(obs, prompts), args.repeats, device)
    sample_ms = median_ms(sampled, args.repeats, device)
    return {
        "cameras": cameras,
        "batch": batch,
        "cfg_scale": cfg_scale,
        "call_ms": total,
        "prepare_ms": prepare,
        "sample_ms": sample_ms,
        "other_ms": total - prepare - sample_ms,
        "ms_per_chunk": total / batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--cameras", type=int, nargs="+", default=[0, 2], choices=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--cfg-scale", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--chunk", type=int, default=10, help="actions per chunk")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    print(
        "| cameras | batch | cfg_scale | call ms | prepare ms | sample ms | other ms | ms/chunk |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cameras in args.cameras:
        policy = make_policy(args.preset, cameras, device, args.chunk)
        for cfg_scale in args.cfg_scale:
            for batch in args.batch:
                row = rows_for(policy, cameras, batch, cfg_scale, args, device)
                rows.append(row)
                print(
                    f"| {cameras} | {batch} | {cfg_scale:g} | {row['call_ms']:.1f} | "
                    f"{row['prepare_ms']:.1f} | {row['sample_ms']:.1f} | {row['other_ms']:.1f} | "
                    f"{row['ms_per_chunk']:.2f} |",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
