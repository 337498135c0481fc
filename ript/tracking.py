"""Where a job's numbers go besides its own files: TensorBoard and Weights & Biases.

`loggers` lists them; `csv` (metrics.csv, metrics.json, the label summary) is always written
and is what the tables read, the others mirror it for people who follow runs there. Every job
logs under one naming scheme, so the sweep's runs line up in one view:

  train/loss, train/loss_pos, train/loss_uncond, train/positive_weight, train/grad_norm,
  train/lr, train/samples_per_s, train/nonfinite_steps (skipped steps), train/gpu_memory_gib
                                      per training step (metrics.csv's columns, step = its step)
  label/groups, label/groups_kept, label/episodes, label/episodes_kept, label/rows,
  label/positive_rows, label/mean_reward, label/advantage (a histogram of the rows')
  rollouts/success_rate, rollouts/ci95_low, rollouts/ci95_high, rollouts/successes,
  rollouts/n, rollouts/mean_episode_length, rollouts/task<t>/... (the same per task),
  rollouts/ms_per_call, rollouts/ms_per_chunk, rollouts/env_steps_per_s,
  rollouts/worker_restarts, rollouts/video/<episode>          (collection and evaluation)

A job's name is its output's path under results/<experiment>/ (`train/bias_a0.1`,
`round2/eval/bias_a0.1/cfg3`): TensorBoard's event files go to results/<experiment>/tb/<name>,
W&B's runs to results/<experiment>/wandb/ with group = the experiment, job type = the rule,
name = the job, and the settings the job ran with as its config. W&B runs offline unless
`wandb_mode: online`: `wandb sync results/<experiment>/wandb/offline-run-*` uploads them.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> the module it imports


def missing_packages(loggers: list[str]) -> list[str]:
    """The loggers whose package is not installed (checked when the config is read)."""
    return [name for name in loggers if name in PACKAGES and not _installed(PACKAGES[name])]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def job_name(out: str | Path, experiment: str) -> tuple[Path, str]:
    """(the experiment's results directory, the job's name): `out` under
    results/<experiment>/ without its suffix (or its file name for metrics.json); elsewhere
    (a step run by hand) the directory holding `out` and its stem."""
    out = Path(out)
    if out.name == "metrics.json":
        out = out.parent
    out = out.with_suffix("") if out.suffix in (".h5", ".parquet", ".json") else out
    parts = out.parts
    for i in range(len(parts) - 1):
        if parts[i] == "results" and parts[i + 1] == experiment and len(parts) > i + 2:
            return Path(*parts[: i + 2]), "/".join(parts[i + 2 :])
    return out.parent, out.name


class Tracker:
    """The job's TensorBoard writer and W&B run; with neither, every call does nothing."""

    def __init__(self, writer: Any = None, run: Any = None) -> None:
        self.writer, self.run = writer, run

    def log(self, values: Mapping[str, float | None], step: int = 0) -> None:
        """Scalars at `step`; non-finite and missing values are left out."""
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.run is not None:
            self.run.log(values, step=step)

    def histogram(self, key: str, values: np.ndarray, step: int = 0) -> None:
        values = np.asarray(values, dtype=np.float64)
        if not len(values):
            return
        if self.writer is not None:
            self.writer.add_histogram(key, values, step)
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Histogram(values)}, step=step)

    def video(self, key: str, path: str | Path, fps: int, step: int = 0) -> None:
        """A saved video: W&B takes the file; TensorBoard shows it as an animated GIF."""
        if self.writer is not None:
            # add_video would encode with moviepy, which nothing else here needs; TensorBoard
            # shows an image summary holding a GIF as an animation
            from tensorboard.compat.proto.summary_pb2 import Summary

            gif, (height, width) = _gif(path, fps)
            image = Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=gif
            )
            summary = Summary(value=[Summary.Value(tag=key, image=image)])
            self.writer._get_file_writer().add_summary(summary, step)
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Video(str(path), format="mp4")}, step=step)

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)


def _gif(path: str | Path, fps: int) -> tuple[bytes, tuple[int, int]]:
    import imageio.v3 as iio
    from PIL import Image

    frames = [Image.fromarray(f) for f in iio.imread(path)]  # (T, H, W, 3) uint8
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:],
        duration=round(1000 / fps), loop=0,
    )  # fmt: skip
    return buffer.getvalue(), (frames[0].height, frames[0].width)


@contextmanager
def tracked(
    loggers: list[str] | tuple[str, ...],
    *,
    experiment: str,
    out: str | Path,
    job_type: str,
    settings: Mapping[str, Any],
    wandb_mode: str = "offline",
    wandb_project: str = "ript",
) -> Iterator[Tracker]:
    """The tracker of one job writing `out`; closed (W&B marked failed on an error) on exit.
    The loggers' packages are checked when the config is read (`ript.config`)."""
    root, name = job_name(out, experiment)
    writer = run = None
    if "tensorboard" in loggers:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(root / "tb" / name))
    if "wandb" in loggers:
        import wandb

        root.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=wandb_project,
            group=experiment,
            job_type=job_type,
            name=name,
            config=dict(settings),
            dir=str(root),
            mode=wandb_mode,
        )
    tracker = Tracker(writer, run)
    try:
        yield tracker
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close()


def install_hint(missing: list[str]) -> str:
    extras = ",".join(missing)
    return (
        f"loggers {missing}: not installed; pip install -e '.[{extras}]' (or pip install "
        f"{' '.join(PACKAGES[m] for m in missing)})"
    )


def rollout_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The rollouts/ scalars of an evaluation's metrics.json (a collection's: the same
    `rollout_metrics`)."""
    values: dict[str, float] = {}

    def block(prefix: str, b: Mapping[str, Any]) -> None:
        for key in ("success_rate", "ci95_low", "ci95_high", "successes", "n"):
            values[f"{prefix}{key}"] = b[key]
        values[f"{prefix}mean_episode_length"] = b["mean_episode_length"]

    block("rollouts/", metrics["overall"])
    for task, b in metrics["per_task"].items():
        block(f"rollouts/task{task}/", b)
    inference, env = metrics["inference"], metrics["env"]
    values["rollouts/ms_per_call"] = inference["mean_ms_per_call"]
    values["rollouts/ms_per_chunk"] = inference["mean_ms_per_chunk"]
    values["rollouts/env_steps_per_s"] = env["env_steps"] / env["wall_s"] if env["wall_s"] else None
    values["rollouts/worker_restarts"] = env["worker_restarts"]
    return values


def log_videos(tracker: Tracker, videos: list[Mapping[str, Any]], fps: int) -> None:
    """The saved videos, each named by its episode and outcome."""
    for v in videos:
        outcome = "success" if v["success"] else "failure"
        key = f"rollouts/video/task{v['task']}_init{v['init_state']}_r{v['rollout']}_{outcome}"
        tracker.video(key, v["path"], fps)
