import numpy as np
import pytest
from test_episode_store import make_episode

from ript.data.dataset import ChunkDataset
from ript.data.episode_store import write_shard


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
    assert b["action_is_pad"][1].tolist() == [False, False, True, True]
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
