"""Env steps per second: the async rollout engine vs the lock-step one vs bare simulators.

    python benchmarks/env_throughput.py [--workers 16 32] [--cameras off 128]
        [--policies expert small] [--episodes-per-worker 2] [--length 100] [--device cuda]
        [--worker-nice 0 10] [--max-wait-ms 5 20]

In one run, for every worker count and camera setting:
  - `bare`: that many processes, each stepping its own LIBERO-Object simulator with zero
    actions, side by side, no pool and no policy: what the simulators can do;
  - the pool with the lock-step engine and with the async engine, rolling out the same
    episodes with the scripted expert (a policy that costs nothing) and with a freshly
    initialised policy of a preset (`small`: its inference on `--device`).
Start-up (worker spawn, simulator creation, CUDA graph capture) is not measured: each
configuration first runs one episode per worker. `vs bare` is the rate against the bare
simulators of the same setting, measured in the same run; for a model policy the rows also
give its calls' mean batch and milliseconds (what the pool waits for per call). The policy
rows repeat per `--worker-nice` (the simulator workers' niceness: the policy process shares
the cores with them) and, for the async engine, per `--max-wait-ms` (its wait budget).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import time
from pathlib import Path

from ript.envs.expert import ScriptedExpert
from ript.envs.observation import DUMMY_ACTION
from ript.envs.pool import EnvPool
from ript.rollouts import episode_specs, rendering_gpu

SUITE = "libero_object"

# `state`: end-effector position (3), axis-angle orientation (3), gripper joints (2)
STATE_DIM = 8


def _bare_worker(cameras: bool, image_size: int, steps: int, start, done) -> None:
    from ript.envs.libero_env import make_env, prepare_process_environment

    prepare_process_environment()
    env = make_env(SUITE, 0, max_episode_length=10**6, cameras=cameras, image_size=image_size)
    env.reset(seed=0, init_state_index=0)
    start.wait()
    for _ in range(steps):
        env.step(DUMMY_ACTION)
    done.put(time.monotonic())
    env.close()


def bare_rate(workers: int, cameras: bool, image_size: int, steps: int) -> float:
    """Steps/s of `workers` simulators stepping side by side (from a common start)."""
    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_bare_worker, args=(cameras, image_size, steps, start, done))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.monotonic()
    ends = [done.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    return workers * steps / (max(ends) - t0)


def make_policy(name: str, cameras: bool, chunk: int, device: str):
    if name == "expert":
        return ScriptedExpert()
    import torch

    from ript.data.norm_stats import NormStats, Stats
    from ript.models.policy import PolicySettings, new_policy

    cams = ["agentview_rgb", "eye_in_hand_rgb"] if cameras else []
    settings = PolicySettings(state_keys=["state"], camera_keys=cams, num_camera_slots=len(cams))
    norm = NormStats(Stats.identity(STATE_DIM), Stats.identity(7))
    policy = new_policy(name, norm, settings, chunk_size=chunk, max_state_dim=STATE_DIM)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    policy.model.to(device, dtype)
    return policy


def pool_rate(
    engine: str,
    workers: int,
    cameras: bool,
    image_size: int,
    policy,
    episodes: int,
    length: int,
    **pool_options,
) -> dict:
    """The measured run's env steps/s, and for a model policy its calls' mean batch and ms."""
    specs = episode_specs(
        suite=SUITE,
        tasks=[0],
        init_states=(0, 50),
        rollouts_per_init=1,
        seed=0,
        use_init_states=True,
    )
    specs = [specs[i % len(specs)] for i in range(workers + episodes)]
    specs = [dataclasses.replace(s, episode_index=i) for i, s in enumerate(specs)]
    with EnvPool(
        workers,
        max_episode_length=length,
        num_steps_wait=10,
        replan_steps=5,
        cameras=cameras,
        image_size=image_size,
        privileged_object_state=True,
        engine=engine,
        render_gpu=rendering_gpu(policy),
        **pool_options,
    ) as pool:
        pool.run(specs[:workers], policy, progress=False)  # start-up, not measured
        steps_before = pool.stats.env_steps
        calls = _inference_counters(policy)
        t0 = time.perf_counter()
        pool.run(specs[workers:], policy, progress=False, keep_observations=False)
        row = dict(rate=(pool.stats.env_steps - steps_before) / (time.perf_counter() - t0))
    if calls is not None:
        n, chunks, seconds = (
            b - a for a, b in zip(calls, _inference_counters(policy), strict=True)
        )
        row |= dict(mean_batch=chunks / max(n, 1), ms_per_call=1e3 * seconds / max(n, 1))
    return row


def _inference_counters(policy) -> tuple[int, int, float] | None:
    if not hasattr(policy, "inference_calls"):
        return None  # the scripted expert
    return policy.inference_calls, policy.inference_chunks, policy.inference_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--cameras", nargs="+", default=["off", "128"], help="off or a size")
    parser.add_argument("--policies", nargs="+", default=["expert", "tiny"])
    parser.add_argument("--episodes-per-worker", type=int, default=2)
    parser.add_argument("--length", type=int, default=100, help="steps per episode")
    parser.add_argument("--bare-steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker-nice", type=int, nargs="+", default=[0])
    parser.add_argument("--max-wait-ms", type=float, nargs="+", default=[5.0])
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    rows: list[dict] = []

    def record(row: dict) -> None:
        """Print and keep a row; the JSON is rewritten each time, so a run stopped at its
        time limit still leaves what it measured."""
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1) + "\n")

    for cams in args.cameras:
        cameras, size = cams != "off", 128 if cams == "off" else int(cams)
        for workers in args.workers:
            bare = bare_rate(workers, cameras, size, args.bare_steps)
            record(dict(workers=workers, cameras=cams, policy="-", engine="bare", rate=bare))
            for name in args.policies:
                policy = make_policy(name, cameras, 10, args.device)
                for engine, nice, wait_ms in variants(name, args):
                    measured = pool_rate(
                        engine, workers, cameras, size, policy,
                        workers * args.episodes_per_worker, args.length,
                        worker_nice=nice, max_wait_ms=wait_ms,
                    )  # fmt: skip
                    row = dict(workers=workers, cameras=cams, policy=name, engine=engine)
                    row |= dict(
                        worker_nice=nice, max_wait_ms=wait_ms if engine == "async" else None
                    )
                    record(row | measured | dict(vs_bare=measured["rate"] / bare))
    print(
        "\n| workers | cameras | policy | engine | worker nice | max wait ms | env steps/s "
        "| vs bare | mean batch | ms per call |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['vs_bare']:.0%}" if "vs_bare" in r else "100%"
        calls = f"{r['mean_batch']:.1f} | {r['ms_per_call']:.1f}" if "mean_batch" in r else "- | -"
        wait = "-" if r.get("max_wait_ms") is None else f"{r['max_wait_ms']:g}"
        print(
            f"| {r['workers']} | {r['cameras']} | {r['policy']} | {r['engine']} "
            f"| {r.get('worker_nice', '-')} | {wait} | {r['rate']:.0f} | {ratio} | {calls} |"
        )


def variants(policy: str, args) -> list[tuple[str, int, float]]:
    """(engine, worker niceness, wait budget) per pool row: the expert runs the defaults."""
    if policy == "expert":
        return [("lockstep", 0, 5.0), ("async", 0, 5.0)]
    rows = []
    for nice in args.worker_nice:
        rows.append(("lockstep", nice, args.max_wait_ms[0]))
        rows += [("async", nice, wait_ms) for wait_ms in args.max_wait_ms]
    return rows


if __name__ == "__main__":
    main()
