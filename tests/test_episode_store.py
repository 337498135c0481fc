import json

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import make_episode, moving_frames

from ript.data.episode_store import (
    KEYFRAME_INTERVAL,
    EpisodeFileError,
    EpisodeReader,
    index_path,
    read_index,
    write_shard,
)


def test_round_trip(tmp_path):
    episodes = [make_episode(0), make_episode(1, t=9, success=False)]
    path = tmp_path / "shard.h5"
    index = write_shard(path, episodes, policy_id="expert")
    assert not list(tmp_path.glob("*.tmp-*"))
    with EpisodeReader(path) as reader:
        assert reader.demos == ["demo_0", "demo_1"]
        for ep, stored in zip(episodes, reader, strict=True):
            np.testing.assert_array_equal(stored.actions, ep.actions)
            np.testing.assert_array_equal(stored.states, ep.states)
            np.testing.assert_array_equal(stored.dones, ep.dones)
            for key in ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "privileged_object_state"):
                np.testing.assert_array_equal(stored.obs[key], ep.obs[key])
            np.testing.assert_array_equal(
                stored.state,
                np.concatenate(
                    [ep.obs["ee_pos"], ep.obs["ee_ori"], ep.obs["gripper_states"]], axis=1
                ),
            )
            assert stored.attrs["success"] == ep.success
            assert stored.attrs["group_id"] == ep.spec.group_id
            assert stored.attrs["init_state_index"] == 7
            assert stored.attrs["language"] == ep.language
    on_disk = read_index(path)
    pd.testing.assert_frame_equal(on_disk, index)
    assert list(on_disk["length"]) == [6, 9]
    assert list(on_disk["success"]) == [True, False]
    with h5py.File(path) as f:  # images are stored compressed
        assert f["data/demo_0/obs/agentview_rgb"].compression == "gzip"


def test_reads_official_libero_layout_in_policy_orientation(tmp_path):
    """LIBERO's demo files keep raw (upside-down) renders and the language in problem_info."""
    path = tmp_path / "official_demo.hdf5"
    raw = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": "open the drawer"})
        demo = data.create_group("demo_0")
        demo.create_dataset("actions", data=np.zeros((2, 7)))
        obs = demo.create_group("obs")
        obs.create_dataset("agentview_rgb", data=raw)
        for key, dim in [("ee_pos", 3), ("ee_ori", 3), ("gripper_states", 2)]:
            obs.create_dataset(key, data=np.ones((2, dim)))
    with EpisodeReader(path) as reader:
        episode = reader.read("demo_0")
    assert episode.attrs["language"] == "open the drawer"
    np.testing.assert_array_equal(episode.obs["agentview_rgb"], raw[:, ::-1, ::-1])
    assert episode.state.shape == (2, 8)


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(EpisodeFileError, match="not found"):
        EpisodeReader(tmp_path / "missing.h5")

    path = tmp_path / "shard.h5"
    write_shard(path, [make_episode(0)], policy_id="expert")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(EpisodeFileError, match=r"truncated\.h5.*truncated or corrupt"):
        EpisodeReader(truncated)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(EpisodeFileError, match=r"foreign\.h5.*no 'data' group.*weights"):
        EpisodeReader(foreign)

    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(EpisodeFileError, match="not a readable HDF5"):
        EpisodeReader(text)


def test_index_that_disagrees_with_its_shard(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_shard(a, [make_episode(0)], policy_id="expert")
    write_shard(b, [make_episode(0), make_episode(1)], policy_id="expert")
    index_path(a).write_bytes(index_path(b).read_bytes())
    with pytest.raises(EpisodeFileError, match="index lists 2 episodes but .*a.h5 holds 1"):
        read_index(a)
    index_path(a).unlink()
    with pytest.raises(EpisodeFileError, match="episode index not found"):
        read_index(a)


def test_failed_write_leaves_nothing_behind(tmp_path):
    broken = make_episode(0)
    broken.obs["ee_pos"] = object()  # h5py cannot store this
    with pytest.raises(TypeError):
        write_shard(tmp_path / "shard.h5", [make_episode(1), broken], policy_id="expert")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no episodes"):
        write_shard(tmp_path / "empty.h5", [], policy_id="expert")


@pytest.mark.parametrize("codec", ["gzip", "delta", "jpeg"])
def test_frame_codecs_round_trip(tmp_path, codec):
    """Every codec reads back through the whole-episode, one-camera and one-frame paths; gzip and
    delta bit for bit (frames across keyframes included), jpeg within its quality."""
    episode = make_episode(0, t=KEYFRAME_INTERVAL * 2 + 3)
    for key in ("agentview_rgb", "eye_in_hand_rgb"):
        episode.obs[key] = moving_frames(episode.length)
    path = tmp_path / f"{codec}.h5"
    write_shard(path, [episode], policy_id="expert", frame_codec=codec)
    with EpisodeReader(path) as reader:
        whole = reader.read("demo_0").obs["agentview_rgb"]
        frames = [reader.read_frame("demo_0", "agentview_rgb", t) for t in range(episode.length)]
        np.testing.assert_array_equal(reader.read_frames("demo_0", "agentview_rgb"), whole)
    want = episode.obs["agentview_rgb"]
    assert whole.shape == want.shape and whole.dtype == np.uint8
    np.testing.assert_array_equal(np.stack(frames), whole)
    if codec == "jpeg":
        error = whole.astype(float) - want
        assert 10 * np.log10(255**2 / np.mean(error**2)) > 30  # PSNR in dB
    else:
        np.testing.assert_array_equal(whole, want)


def test_delta_frames_are_smaller_than_gzip_on_a_mostly_static_scene(tmp_path):
    episode = make_episode(0, t=48)
    for key in ("agentview_rgb", "eye_in_hand_rgb"):
        episode.obs[key] = moving_frames(episode.length)
    sizes = {}
    for codec in ("gzip", "delta"):
        write_shard(tmp_path / f"{codec}.h5", [episode], policy_id="expert", frame_codec=codec)
        sizes[codec] = (tmp_path / f"{codec}.h5").stat().st_size
    assert sizes["delta"] < 0.5 * sizes["gzip"]


def test_an_unknown_frame_codec_is_refused(tmp_path):
    with pytest.raises(ValueError, match="frame codec 'png'"):
        write_shard(tmp_path / "x.h5", [make_episode(0)], policy_id="expert", frame_codec="png")
