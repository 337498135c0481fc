"""Episodes on disk: HDF5 shards in LIBERO's demo layout plus a parquet index per shard.

Layout (the same as LIBERO's official demonstration files, so one reader serves both):

    data/                        attrs: num_demos, total, problem_info (json), ...
      demo_<i>/                  attrs: num_samples, suite, task_id, language, ...
        actions      (T, 7)
        obs/ee_pos (T, 3), ee_ori (T, 3), gripper_states (T, 2), joint_states (T, 7),
            agentview_rgb, eye_in_hand_rgb (T, H, W, 3) uint8, when cameras are on
                 (frame_storage: gzip by default; see FRAME_CODECS)
            privileged_object_state (T, 28), when enabled
        rewards (T,), dones (T,), states (T, S)

LIBERO's own files store camera images as rendered (upside down); ours store them flipped
the way policies see them, and say so in the root attribute `image_orientation`. The
reader returns every episode in policy orientation.

Shards are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from PIL import Image

from ript.envs.episode import Episode
from ript.envs.observation import flip_image
from ript.files import atomic_output

# How camera frames are stored (`frame_storage`; benchmarks/frame_storage.py measures them):
#   gzip   one deflated chunk per frame: LIBERO's layout, readable by any HDF5 tool;
#   delta  lossless, every frame minus the last keyframe (one in KEYFRAME_INTERVAL steps, mod
#          256) then deflated: the static scene becomes zeros; a read decodes two frames;
#          only ript's reader undoes it (attribute frame_codec on the dataset);
#   jpeg   lossy (quality JPEG_QUALITY) and smallest: opt in only.
FRAME_CODECS = ("gzip", "delta", "jpeg")
KEYFRAME_INTERVAL = 16
JPEG_QUALITY = 95
FORMAT = "ript-episodes"
FORMAT_VERSION = 1
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
INDEX_COLUMNS = [
    "demo",
    "episode_index",
    "suite",
    "task_id",
    "language",
    "init_state_index",
    "rollout_index",
    "seed",
    "reset_seed",
    "group_id",
    "success",
    "length",
    "policy_id",
    "shard",
]


class EpisodeFileError(ValueError):
    """A shard or index that is missing, truncated or not what it claims to be."""


@dataclass
class StoredEpisode:
    demo: str
    attrs: dict[str, Any]
    actions: np.ndarray
    obs: dict[str, np.ndarray]
    rewards: np.ndarray
    dones: np.ndarray
    states: np.ndarray | None

    @property
    def state(self) -> np.ndarray:
        """The 8-dim pi0 LIBERO state: eef pos + axis-angle + gripper joints."""
        return np.concatenate(
            [self.obs["ee_pos"], self.obs["ee_ori"], self.obs["gripper_states"]], axis=-1
        ).astype(np.float32)

    def observation(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The named observation arrays (T, ...), `state` derived, as a policy reads them."""
        missing = [k for k in keys if k != "state" and k not in self.obs]
        if missing:
            raise KeyError(
                f"episode {self.demo} has no observation {missing[0]!r}; has {sorted(self.obs)}"
            )
        return {k: self.state if k == "state" else self.obs[k] for k in keys}


def index_path(shard: str | Path) -> Path:
    shard = Path(shard)
    return shard.with_name(shard.stem + ".index.parquet")


def write_shard(
    path: str | Path,
    episodes: list[Episode],
    *,
    policy_id: str,
    frame_codec: str = "gzip",
) -> pd.DataFrame:
    """Write episodes and their index atomically; return the index."""
    if frame_codec not in FRAME_CODECS:
        raise ValueError(f"frame codec {frame_codec!r}: expected one of {FRAME_CODECS}")
    path = Path(path)
    if not episodes:
        raise ValueError(f"{path}: refusing to write a shard with no episodes")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    # The file is built in memory and written in one go: HDF5 writing into a full disk
    # prints tracebacks from its destructors and can crash the process, where a plain write
    # raises one OSError. The image is the compressed episodes, smaller than the episodes.
    # The index is renamed into place first: a shard without its index is rewritten.
    with atomic_output(path) as tmp_h5, atomic_output(index_path(path)) as tmp_idx:
        with h5py.File(tmp_h5.name, "w", driver="core", backing_store=False) as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["image_orientation"] = "flipped_180"
            data = f.create_group("data")
            total = 0
            for i, ep in enumerate(episodes):
                demo = f"demo_{i}"
                _write_episode(data.create_group(demo), ep, policy_id, frame_codec)
                total += ep.length
                rows.append(_index_row(demo, ep, policy_id, path.name))
            data.attrs["num_demos"] = len(episodes)
            data.attrs["total"] = total
            languages = sorted({ep.language for ep in episodes})
            data.attrs["problem_info"] = json.dumps(
                {"language_instruction": languages[0] if len(languages) == 1 else languages}
            )
            f.flush()
            image = f.id.get_file_image()
        tmp_h5.write_bytes(image)
        del image
        index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
        index.to_parquet(tmp_idx, index=False)
    return index


def write_frames(group: h5py.Group, key: str, frames: np.ndarray, codec: str) -> None:
    """Camera frames (T, H, W, 3) uint8 as dataset `key` of `group`, in `codec`."""
    if codec == "jpeg":
        dataset = group.create_dataset(key, shape=(len(frames),), dtype=h5py.vlen_dtype(np.uint8))
        for t, frame in enumerate(frames):
            buffer = io.BytesIO()
            # 4:4:4: small frames lose too much colour to chroma subsampling
            Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
            dataset[t] = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
        dataset.attrs["frame_shape"] = frames.shape[1:]
    else:
        if codec == "delta":
            keys = frames[(np.arange(len(frames)) // KEYFRAME_INTERVAL) * KEYFRAME_INTERVAL]
            frames = frames - keys  # uint8 arithmetic wraps: undone by adding mod 256
            frames[::KEYFRAME_INTERVAL] = keys[::KEYFRAME_INTERVAL]
        dataset = group.create_dataset(
            key, data=frames, chunks=(1, *frames.shape[1:]), compression="gzip",
            compression_opts=4,
        )  # fmt: skip
    if codec != "gzip":
        dataset.attrs["frame_codec"] = codec
    if codec == "delta":
        dataset.attrs["keyframe_interval"] = KEYFRAME_INTERVAL


def read_stored_frame(dataset: h5py.Dataset, step: int) -> np.ndarray:
    """Frame `step` of a dataset that `write_frames` wrote (or LIBERO's plain frames)."""
    codec = dataset.attrs.get("frame_codec", "gzip")
    if codec == "gzip":
        return np.asarray(dataset[step])
    if codec == "delta":
        key = step - step % int(dataset.attrs["keyframe_interval"])
        frame = np.asarray(dataset[step])
        return frame if key == step else frame + np.asarray(dataset[key])
    if codec == "jpeg":
        return np.asarray(Image.open(io.BytesIO(dataset[step].tobytes())).convert("RGB"))
    raise EpisodeFileError(
        f"{dataset.file.filename}: {dataset.name}: unknown frame codec {codec!r}"
    )


def read_stored_frames(dataset: h5py.Dataset) -> np.ndarray:
    """Every frame of a dataset that `write_frames` wrote, (T, H, W, 3) uint8."""
    codec = dataset.attrs.get("frame_codec", "gzip")
    if codec == "delta":
        frames, interval = np.asarray(dataset), int(dataset.attrs["keyframe_interval"])
        steps = np.arange(len(frames))
        keys = steps - steps % interval
        out = frames + frames[keys]
        out[keys == steps] = frames[keys == steps]
        return out
    if codec == "jpeg":
        return np.stack([read_stored_frame(dataset, t) for t in range(len(dataset))])
    return np.asarray(dataset)


def _write_episode(group: h5py.Group, ep: Episode, policy_id: str, frame_codec: str) -> None:
    spec = ep.spec
    attrs = {
        "num_samples": ep.length,
        "suite": spec.suite,
        "task_id": spec.task_id,
        "language": ep.language,
        "init_state_index": -1 if spec.init_state_index is None else spec.init_state_index,
        "rollout_index": spec.rollout_index,
        "episode_index": spec.episode_index,
        "seed": spec.seed,
        "reset_seed": spec.reset_seed,
        "group_id": spec.group_id,
        "success": bool(ep.success),
        "episode_length": ep.length,
        "policy_id": policy_id,
    }
    for key, value in attrs.items():
        group.attrs[key] = value
    group.create_dataset("actions", data=ep.actions.astype(np.float32))
    group.create_dataset("rewards", data=ep.rewards.astype(np.float32))
    group.create_dataset("dones", data=ep.dones.astype(np.uint8))
    group.create_dataset("states", data=ep.states.astype(np.float64))
    obs = group.create_group("obs")
    for key, value in ep.obs.items():
        if key == "state":
            continue  # derived from ee_pos, ee_ori and gripper_states
        if key in IMAGE_KEYS:
            write_frames(obs, key, value, frame_codec)
        else:
            obs.create_dataset(key, data=value)


def _index_row(demo: str, ep: Episode, policy_id: str, shard: str) -> dict[str, Any]:
    s = ep.spec
    return {
        "demo": demo,
        "episode_index": s.episode_index,
        "suite": s.suite,
        "task_id": s.task_id,
        "language": ep.language,
        "init_state_index": -1 if s.init_state_index is None else s.init_state_index,
        "rollout_index": s.rollout_index,
        "seed": s.seed,
        "reset_seed": s.reset_seed,
        "group_id": s.group_id,
        "success": bool(ep.success),
        "length": ep.length,
        "policy_id": policy_id,
        "shard": shard,
    }


class EpisodeReader:
    """Reads our shards and LIBERO's official demo files alike; validates on open."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EpisodeFileError(f"{self.path}: episode file not found")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as e:
            raise EpisodeFileError(
                f"{self.path}: not a readable HDF5 file (truncated or corrupt?): {e}"
            ) from e
        try:
            self._validate()
        except Exception:
            self._file.close()
            raise

    def _validate(self) -> None:
        data = self._file.get("data")
        if not isinstance(data, h5py.Group):
            raise EpisodeFileError(
                f"{self.path}: not an episode file in LIBERO's demo layout (no 'data' group; "
                f"top-level keys: {sorted(self._file.keys())})"
            )
        demos = self.demos
        if not demos:
            raise EpisodeFileError(f"{self.path}: 'data' holds no demo_<i> episodes")
        for demo in demos:
            group = data[demo]
            missing = [k for k in ("actions", "obs") if k not in group]
            if missing:
                raise EpisodeFileError(f"{self.path}: data/{demo} lacks {missing}")
        fmt = self._file.attrs.get("format")
        if fmt is not None and fmt != FORMAT:
            raise EpisodeFileError(f"{self.path}: unknown format {fmt!r}; expected {FORMAT!r}")

    @property
    def demos(self) -> list[str]:
        names = [k for k in self._file["data"] if k.startswith("demo_")]
        return sorted(names, key=lambda k: int(k.split("_")[1]))

    @property
    def flipped(self) -> bool:
        return self._file.attrs.get("image_orientation") == "flipped_180"

    def __len__(self) -> int:
        return len(self.demos)

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _language(self, group: h5py.Group) -> str:
        if "language" in group.attrs:
            return str(group.attrs["language"])
        info = self._file["data"].attrs.get("problem_info")
        if info is not None:
            return str(json.loads(info).get("language_instruction", ""))
        return ""

    def attributes(self, demo: str) -> dict[str, Any]:
        """The episode's attributes (task, init state, success, ...) without its arrays."""
        return {k: _plain(v) for k, v in self._file["data"][demo].attrs.items()}

    def read_actions(self, demo: str) -> tuple[np.ndarray, str, list[str]]:
        """An episode's actions, language and observation keys, without its observations."""
        try:
            group = self._file["data"][demo]
            return (
                np.asarray(group["actions"]),
                str(self.attributes(demo).get("language", self._language(group))),
                sorted(group["obs"]),
            )
        except (OSError, KeyError) as e:
            raise EpisodeFileError(f"{self.path}: cannot read data/{demo}: {e}") from e

    def read_lowdim(self, demo: str, keys: list[str]) -> dict[str, np.ndarray]:
        """Whole low-dim observation arrays (T, ...) of an episode, `state` derived."""
        try:
            obs = self._file["data"][demo]["obs"]
            names = {"ee_pos", "ee_ori", "gripper_states"} if "state" in keys else set()
            arrays = {k: np.asarray(obs[k]) for k in names | (set(keys) - {"state"})}
        except (OSError, KeyError) as e:
            raise EpisodeFileError(f"{self.path}: cannot read data/{demo}/obs: {e}") from e
        if "state" in keys:
            arrays["state"] = np.concatenate(
                [arrays["ee_pos"], arrays["ee_ori"], arrays["gripper_states"]], axis=-1
            ).astype(np.float32)
        return {k: arrays[k] for k in keys}

    def read_frame(self, demo: str, key: str, step: int) -> np.ndarray:
        """One camera frame (images are stored one gzip chunk per frame), in policy
        orientation."""
        try:
            frame = read_stored_frame(self._file["data"][demo]["obs"][key], step)
        except (OSError, KeyError) as e:
            raise EpisodeFileError(f"{self.path}: cannot read data/{demo}/obs/{key}: {e}") from e
        return frame if self.flipped else flip_image(frame)

    def read_frames(self, demo: str, key: str) -> np.ndarray:
        """Every frame (T, H, W, 3) of one camera of an episode, in policy orientation."""
        try:
            frames = read_stored_frames(self._file["data"][demo]["obs"][key])
        except (OSError, KeyError) as e:
            raise EpisodeFileError(f"{self.path}: cannot read data/{demo}/obs/{key}: {e}") from e
        return frames if self.flipped else np.ascontiguousarray(frames[:, ::-1, ::-1])

    def read(self, demo: str) -> StoredEpisode:
        try:
            group = self._file["data"][demo]
            attrs = self.attributes(demo)
            attrs.setdefault("language", self._language(group))
            obs = {
                k: self.read_frames(demo, k) if k in IMAGE_KEYS else np.asarray(v)
                for k, v in group["obs"].items()
            }
            actions = np.asarray(group["actions"])
            n = len(actions)
            rewards = np.asarray(group["rewards"]) if "rewards" in group else np.zeros(n)
            dones = np.asarray(group["dones"]) if "dones" in group else np.eye(n)[-1]
            states = np.asarray(group["states"]) if "states" in group else None
        except (OSError, KeyError) as e:
            raise EpisodeFileError(f"{self.path}: cannot read data/{demo}: {e}") from e
        bad = [k for k, v in obs.items() if len(v) != n]
        if bad:
            raise EpisodeFileError(
                f"{self.path}: data/{demo}: obs {bad} do not have one entry per action ({n})"
            )
        return StoredEpisode(demo, attrs, actions, obs, rewards, dones, states)

    def __iter__(self) -> Iterator[StoredEpisode]:
        for demo in self.demos:
            yield self.read(demo)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


# index column -> per-episode attribute of the shard that must agree with it
INDEX_CHECKED_ATTRS = {
    "episode_index": "episode_index",
    "task_id": "task_id",
    "init_state_index": "init_state_index",
    "rollout_index": "rollout_index",
    "group_id": "group_id",
    "success": "success",
    "length": "episode_length",
}


def read_index(shard: str | Path) -> pd.DataFrame:
    """The parquet index beside a shard, checked against the shard's episode count."""
    shard = Path(shard)
    path = index_path(shard)
    if not path.is_file():
        raise EpisodeFileError(f"{path}: episode index not found (expected beside {shard.name})")
    try:
        index = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise EpisodeFileError(f"{path}: not a readable parquet file: {e}") from e
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise EpisodeFileError(f"{path}: index lacks columns {missing}")
    with EpisodeReader(shard) as reader:
        if len(reader) != len(index):
            raise EpisodeFileError(
                f"{path}: index lists {len(index)} episodes but {shard} holds {len(reader)}"
            )
        demos = set(reader.demos)
        for row in index.itertuples():
            if row.demo not in demos:
                raise EpisodeFileError(f"{path}: index lists {row.demo}, which {shard} lacks")
            attrs = reader.attributes(row.demo)
            for column, attr in INDEX_CHECKED_ATTRS.items():
                if attr in attrs and attrs[attr] != getattr(row, column):
                    raise EpisodeFileError(
                        f"{path}: {row.demo} {column}={getattr(row, column)!r} in the index "
                        f"but {attrs[attr]!r} in {shard}; the index does not belong to "
                        "this shard (remove both and regenerate them)"
                    )
    return index
