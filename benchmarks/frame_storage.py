"""Camera frames on disk: size and read speed of the shard codecs, on real LIBERO frames.

    python benchmarks/frame_storage.py [--image-size 224] [--episodes 2] [--shard SHARD]

Frames come from `--shard` (any shard with camera observations) or from expert episodes
collected here with both cameras. Each codec stores every episode's frames in one HDF5 file
in memory; the table gives bytes per step (both cameras), the ratio to raw pixels, and
frames read per second in random order (what training does) and in order, and the PSNR
of what is read back (lossless codecs: exact).
"""

from __future__ import annotations

import argparse
import time

import h5py
import numpy as np

from ript.data.episode_store import (
    FRAME_CODECS,
    IMAGE_KEYS,
    EpisodeReader,
    read_stored_frame,
    read_stored_frames,
    write_frames,
)


def collect(image_size: int, episodes: int) -> list[dict[str, np.ndarray]]:
    from ript.envs.expert import ScriptedExpert
    from ript.envs.pool import EnvPool
    from ript.rollouts import episode_specs

    specs = episode_specs(
        suite="libero_object",
        tasks=[0],
        init_states=(0, episodes),
        rollouts_per_init=1,
        seed=0,
        use_init_states=True,
    )
    with EnvPool(
        min(episodes, 2),
        max_episode_length=150,
        num_steps_wait=10,
        replan_steps=1,
        cameras=True,
        image_size=image_size,
        privileged_object_state=True,
    ) as pool:
        return [e.obs for e in pool.run(specs, ScriptedExpert(), progress=False)]


def from_shard(path: str) -> list[dict[str, np.ndarray]]:
    reader = EpisodeReader(path)
    return [reader.read(demo).obs for demo in reader.demos]


def measure(codec: str, episodes: list[dict[str, np.ndarray]]) -> dict[str, float]:
    with h5py.File(f"{codec}.h5", "w", driver="core", backing_store=False) as f:
        for i, obs in enumerate(episodes):
            group = f.create_group(f"demo_{i}")
            for key in IMAGE_KEYS:
                write_frames(group, key, obs[key], codec)
        f.flush()
        size = len(f.id.get_file_image())
        steps = sum(len(obs[IMAGE_KEYS[0]]) for obs in episodes)
        raw = sum(obs[k].nbytes for obs in episodes for k in IMAGE_KEYS)
        order = [(i, t) for i, obs in enumerate(episodes) for t in range(len(obs[IMAGE_KEYS[0]]))]
        rng = np.random.default_rng(0)
        rates = {}
        for name, sequence in (("random", rng.permutation(order)), ("in order", order)):
            t0 = time.perf_counter()
            for i, t in sequence:
                for key in IMAGE_KEYS:
                    frame = read_stored_frame(f[f"demo_{i}"][key], int(t))
            rates[name] = len(sequence) * len(IMAGE_KEYS) / (time.perf_counter() - t0)
        squared_error = [
            np.mean((read_stored_frames(f[f"demo_{i}"][k]).astype(float) - obs[k]) ** 2)
            for i, obs in enumerate(episodes)
            for k in IMAGE_KEYS
        ]
    del frame
    return dict(
        bytes_per_step=size / steps,
        vs_raw=raw / size,
        random=rates["random"],
        in_order=rates["in order"],
        psnr=10 * np.log10(255**2 / max(np.mean(squared_error), 1e-12)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--shard", help="read frames from this shard instead of collecting")
    args = parser.parse_args()
    episodes = from_shard(args.shard) if args.shard else collect(args.image_size, args.episodes)
    size = episodes[0][IMAGE_KEYS[0]].shape[1]
    steps = sum(len(obs[IMAGE_KEYS[0]]) for obs in episodes)
    print(f"{len(episodes)} episodes, {steps} steps, 2 cameras at {size} px\n")
    rows = {codec: measure(codec, episodes) for codec in FRAME_CODECS}
    reference = rows["gzip"]["bytes_per_step"]
    header = "| codec | KB per step | vs raw | vs gzip | frames/s random | frames/s in order |"
    print(header + " PSNR |")
    print("|---|---|---|---|---|---|---|")
    for codec, r in rows.items():
        quality = "lossless" if r["psnr"] > 100 else f"{r['psnr']:.1f} dB"
        print(
            f"| {codec} | {r['bytes_per_step'] / 1e3:.1f} | {r['vs_raw']:.1f}x "
            f"| {reference / r['bytes_per_step']:.2f}x | {r['random']:.0f} | {r['in_order']:.0f} "
            f"| {quality} |"
        )


if __name__ == "__main__":
    main()
