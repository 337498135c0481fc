import numpy as np
import pytest
from helpers import make_episode

from ript.data.dataset import ChunkDataset
from ript.data.episode_store import EpisodeReader, write_shard


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "s.h5"
    write_shard(path, [make_episode(0, t=5), make_episode(1, t=3, success=False)], policy_id="x")
    return path


def test_chunks_follow_the_step_and_pad_with_the_last_action(shard):
    ds = ChunkDataset([shard], chunk_size=4, obs_keys=["state", "privileged_object_state"])
    assert len(ds) == 5 + 3
    ep = make_episode(0, t=5)
    b = ds.batch(np.array([0, 3]))  # episode 0 at t=0 and t=3
    np.testing.assert_array_equal(b["actions"][0], ep.actions[0:4])
    np.testing.assert_array_equal(b["actions"][1], ep.actions[[3, 4, 4, 4]])
    np.testing.assert_array_equal(
        b["obs"]["state"][1],
        np.concatenate([ep.obs["ee_pos"][3], ep.obs["ee_ori"][3], ep.obs["gripper_states"][3]]),
    )
    assert b["obs"]["privileged_object_state"].shape == (2, 28)
    assert b["prompts"] == [ep.language] * 2


def test_only_successful_and_missing_keys(shard):
    assert len(ChunkDataset([shard], chunk_size=2, obs_keys=["state"], only_successful=True)) == 5
    with pytest.raises(KeyError, match="no observation 'wrist'"):
        ChunkDataset([shard], chunk_size=2, obs_keys=["wrist"])


@pytest.mark.parametrize("in_memory", [False, True])
def test_read_on_demand_gives_exactly_what_the_episodes_hold_in_memory(
    tmp_path, monkeypatch, in_memory
):
    """Frames one at a time and low-dim arrays through a cache of one episode (evicted at
    every switch), or every episode's arrays held once read, give the arrays that reading
    whole episodes gives."""
    shards = []
    for s in range(2):
        shards.append(tmp_path / f"s{s}.h5")
        episodes = [make_episode(10 * s + i, t=4 + i) for i in range(3)]
        write_shard(shards[-1], episodes, policy_id="x", frame_codec="delta")
    keys = ["state", "privileged_object_state", "agentview_rgb", "eye_in_hand_rgb"]
    budget = 2**30 if in_memory else 0
    lazy = ChunkDataset(
        shards, chunk_size=3, obs_keys=keys, cache_episodes=1, frames_in_memory_bytes=budget
    )
    frame = make_episode(0).obs["agentview_rgb"][0]
    assert lazy.frame_bytes == 2 * frame.nbytes * len(lazy)
    assert lazy.frames_in_memory == in_memory
    whole = []  # (obs, actions, prompt) per episode, read the plain way
    for shard in shards:
        with EpisodeReader(shard) as reader:
            whole += [(ep.observation(keys), ep.actions, ep.attrs["language"]) for ep in reader]
    rows = np.random.default_rng(0).permutation(len(lazy))
    for _ in range(2):  # the second pass reads from what the first one kept
        got = lazy.batch(rows)
        for i, (e, t) in enumerate(lazy.index[rows]):
            obs, actions, prompt = whole[e]
            for key in keys:
                np.testing.assert_array_equal(got["obs"][key][i], obs[key][t], err_msg=key)
            steps = np.minimum(np.arange(t, t + 3), len(actions) - 1)
            np.testing.assert_array_equal(got["actions"][i], actions[steps])
            assert got["prompts"][i] == prompt
        if in_memory:  # nothing is read from the shards any more
            monkeypatch.setattr(EpisodeReader, "read_frame", None)
            monkeypatch.setattr(EpisodeReader, "read_lowdim", None)
    assert len(lazy._held) == (6 if in_memory else 1)  # within its bound when frames are read
