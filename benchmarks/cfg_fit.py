"""How well each branch of CFG-trained policies fits positive episodes, against their base.

    python benchmarks/cfg_fit.py --config CONFIG --base BASE_POLICY \\
        --trained NAME=POLICY [NAME=POLICY ...] --labels LABELS.parquet \\
        --heldout SHARD [SHARD ...] [--draws 4] [--stride 3] [--out rows.json]

The flow-matching loss of every model is measured on the same chunks with the same noise
and flow times (paired), on three sets: the positive episodes the policies were trained on
(from the label table), and successful and failed episodes of held-out rollouts (the base on
the training init states with other seeds: never trained on). If the positive branch has
learned what distinguishes successes, its loss falls below the base's on held-out successes
more than on held-out failures; if it only memorised, the fall is on the training positives
alone. Intervals are over episodes (95%, t), since chunks of one episode are correlated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ript.config import load_config
from ript.data.dataset import ChunkDataset
from ript.data.episode_store import EpisodeReader
from ript.models.cfg_pi0 import UNCOND, positive_label
from ript.models.policy import Policy
from ript.rl.train import cfg_samples
from ript.settings import Model


def episode_losses(
    policy: Policy,
    dataset: ChunkDataset,
    rows: np.ndarray,
    labels: list[int],
    draws: int,
    seed: int,
    batch: int = 256,
) -> np.ndarray:
    """(len(labels), episodes) mean loss per episode of `rows`, for each branch label."""
    c = policy.model.config
    sums = np.zeros((len(labels), len(dataset.episodes)))
    counts = np.zeros(len(dataset.episodes))
    for draw in range(draws):
        rng = np.random.default_rng([seed, draw])
        noise = rng.standard_normal((len(rows), c.chunk_size, c.max_action_dim)).astype(np.float32)
        flow_time = (
            rng.beta(c.time_sampling_beta_alpha, c.time_sampling_beta_beta, size=len(rows))
            * c.time_sampling_scale
            + c.time_sampling_offset
        )
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            data = dataset.batch(part)
            with torch.no_grad():
                loss = policy.model.compute_loss(
                    **policy.loss_inputs(data["obs"], data["prompts"], data["actions"]),
                    branches=[torch.full((len(part),), label) for label in labels],
                    noise=torch.from_numpy(noise[start : start + batch]),
                    time=torch.from_numpy(flow_time[start : start + batch]).float(),
                ).numpy()
            episodes = dataset.index[part, 0]
            for b in range(len(labels)):
                np.add.at(sums[b], episodes, loss[b])
            np.add.at(counts, episodes, 1)
    keep = counts > 0
    return sums[:, keep] / counts[keep]


def interval(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t interval (normal beyond 30 episodes)."""
    from scipy import stats

    m = float(x.mean())
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - half, m + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--trained", nargs="+", required=True, metavar="NAME=POLICY")
    parser.add_argument("--labels", required=True, help="the label table they trained on")
    parser.add_argument("--heldout", nargs="+", required=True, help="held-out rollout shards")
    parser.add_argument("--draws", type=int, default=4, help="noise/time draws per chunk")
    parser.add_argument("--stride", type=int, default=3, help="every n-th step of an episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = load_config(args.config)
    obs_keys = config["state_keys"] + config["camera_keys"]
    train = cfg_samples(args.labels, Model.of(config), frames_in_memory_bytes=0)
    successes, failures = set(), set()
    for shard in args.heldout:
        reader = EpisodeReader(shard)
        for demo in reader.demos:
            ok = reader.attributes(demo).get("success", False)
            (successes if ok else failures).add((str(shard), demo))
    sets = {
        "trained-on positives": (train.dataset, np.flatnonzero(train.is_positive)),
    }
    for name, episodes in (("held-out successes", successes), ("held-out failures", failures)):
        dataset = ChunkDataset(
            args.heldout, chunk_size=config["chunk_size"], obs_keys=obs_keys, episodes=episodes
        )
        sets[name] = (dataset, np.arange(len(dataset)))
    base = Policy.from_pretrained(args.base)
    scheme = base.model.config.label_scheme
    rows_out = []
    print("| set | episodes | base | model | branch | loss | vs base (95% CI over episodes) |")
    print("|---|---|---|---|---|---|---|")
    for set_name, (dataset, rows) in sets.items():
        rows = rows[dataset.index[rows, 1] % args.stride == 0]
        positive = [positive_label(scheme)]
        base_loss = episode_losses(base, dataset, rows, positive, args.draws, args.seed)[0]
        for item in args.trained:
            name, path = item.split("=", 1)
            policy = Policy.from_pretrained(path)
            losses = episode_losses(
                policy, dataset, rows, [positive_label(scheme), UNCOND], args.draws, args.seed
            )
            for branch, loss in zip(("positive", "uncond"), losses, strict=True):
                diff = interval(loss - base_loss)
                row = dict(
                    set=set_name,
                    episodes=len(loss),
                    base=float(base_loss.mean()),
                    model=name,
                    branch=branch,
                    loss=float(loss.mean()),
                    diff=diff,
                    relative=diff[0] / float(base_loss.mean()),
                )
                rows_out.append(row)
                print(
                    f"| {set_name} | {len(loss)} | {row['base']:.4f} | {name} | {branch} "
                    f"| {row['loss']:.4f} | {diff[0]:+.4f} [{diff[1]:+.4f}, {diff[2]:+.4f}] "
                    f"({row['relative']:+.1%}) |",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps(rows_out, indent=1) + "\n")


if __name__ == "__main__":
    main()
