"""Env steps per second of the rollout pool: 1 and 2 workers, with and without cameras.

    python benchmarks/env_throughput.py [--episodes 4] [--length 60] [--image-size 128]

Each configuration first runs one warm-up round (worker start-up and env creation are not
measured), then rolls out the same episodes with a seeded random policy. The last column
is the ratio against 1 worker without cameras, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ript.collect import episode_specs
from ript.envs.pool import EnvPool, PolicyRequest


class RandomPolicy:
    policy_id = "random"

    def act(self, requests: list[PolicyRequest]) -> np.ndarray:
        rng = np.random.default_rng([requests[0].episode.seed, requests[0].step])
        return rng.uniform(-0.5, 0.5, size=(len(requests), 5, 7))


def measure(workers: int, cameras: bool, episodes: int, length: int, image_size: int) -> float:
    specs = episode_specs(
        suite="libero_object",
        tasks=[0],
        init_states=(0, episodes),
        rollouts_per_init=1,
        seed=0,
        use_init_states=True,
    )
    with EnvPool(
        workers,
        max_episode_length=length,
        num_steps_wait=10,
        replan_steps=5,
        cameras=cameras,
        image_size=image_size,
        privileged_object_state=True,
    ) as pool:
        pool.run(specs[:workers], RandomPolicy(), progress=False)  # warm-up: start + create
        steps_before = pool.stats.env_steps
        t0 = time.perf_counter()
        pool.run(specs, RandomPolicy(), progress=False)
        elapsed = time.perf_counter() - t0
        return (pool.stats.env_steps - steps_before) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    rows = []
    for cameras in (False, True):
        for workers in (1, 2):
            rate = measure(workers, cameras, args.episodes, args.length, args.image_size)
            rows.append((workers, cameras, rate))
    reference = rows[0][2]
    print(f"{'workers':>7} {'cameras':>8} {'env steps/s':>12} {'vs 1 worker low-dim':>20}")
    for workers, cameras, rate in rows:
        cams = f"{args.image_size}px" if cameras else "off"
        print(f"{workers:>7} {cams:>8} {rate:>12.1f} {rate / reference:>19.2f}x")


if __name__ == "__main__":
    main()
