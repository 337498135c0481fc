"""Episode videos as mp4, named so that no two episodes share a file."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from ript.envs.episode import Episode
from ript.files import atomic_output


def video_name(episode: Episode) -> str:
    s = episode.spec
    init = "random" if s.init_state_index is None else f"init{s.init_state_index:02d}"
    outcome = "success" if episode.success else "failure"
    return (
        f"{s.suite}_task{s.task_id:02d}_{init}_k{s.rollout_index}"
        f"_ep{s.episode_index:04d}_{outcome}.mp4"
    )


def write_video(episode: Episode, video_dir: str | Path, fps: int = 20) -> Path:
    if not episode.frames:
        raise ValueError(f"episode {episode.spec.episode_index} has no recorded frames")
    video_dir = Path(video_dir)
    video_dir.mkdir(parents=True, exist_ok=True)
    path = video_dir / video_name(episode)
    # Frames of 16-multiple size avoid ffmpeg's resize warning; LIBERO sizes usually are.
    with (
        atomic_output(path) as tmp,
        imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as writer,
    ):
        for frame in episode.frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))
    return path


def write_videos(
    episodes: list[Episode], video_dir: str | Path, fps: int = 20
) -> list[tuple[Episode, Path]]:
    """The videos of the episodes that recorded frames (the first `n_video` of a run), each
    with its episode."""
    return [(e, write_video(e, video_dir, fps)) for e in episodes if e.frames]
