import numpy as np
import pytest
from robosuite.utils import transform_utils

from ript.envs.observation import PRIVILEGED_DIM, adapt_observation, flip_image, quat2axisangle


@pytest.mark.parametrize("seed", range(5))
def test_axis_angle_matches_robosuite(seed):
    quat = np.random.default_rng(seed).normal(size=4)
    quat /= np.linalg.norm(quat)
    np.testing.assert_allclose(quat2axisangle(quat), transform_utils.quat2axisangle(quat))
    assert np.allclose(quat2axisangle(np.array([0.0, 0, 0, 1])), 0.0)


def test_adapter_layout_without_simulator():
    rng = np.random.default_rng(0)
    raw = {
        "robot0_eef_pos": rng.normal(size=3),
        "robot0_eef_quat": np.array([0.0, 1.0, 0.0, 0.0]),
        "robot0_gripper_qpos": np.array([0.03, -0.03]),
        "robot0_joint_pos": rng.normal(size=7),
        "agentview_image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
    }
    bowl = np.array([1.0, 1, 1, 0, 0, 0, 1])
    obs = adapt_observation(raw, cameras=True, object_poses=[bowl])
    assert obs["state"].shape == (8,)
    np.testing.assert_allclose(obs["state"][3:6], [0, np.pi, 0], atol=1e-6)
    np.testing.assert_array_equal(obs["agentview_rgb"], raw["agentview_image"][::-1, ::-1])
    assert obs["privileged_object_state"].shape == (PRIVILEGED_DIM,) == (28,)
    np.testing.assert_array_equal(obs["privileged_object_state"][:7], bowl)
    np.testing.assert_array_equal(obs["privileged_object_state"][7:], 0)
    np.testing.assert_allclose(
        obs["privileged_object_relative"][:3], 1.0 - raw["robot0_eef_pos"], rtol=1e-6
    )
    np.testing.assert_array_equal(obs["privileged_object_relative"][3:], 0)
    lowdim = adapt_observation(raw, cameras=False, object_poses=None)
    assert "agentview_rgb" not in lowdim and "privileged_object_state" not in lowdim
    assert "privileged_object_relative" not in lowdim
    np.testing.assert_array_equal(
        flip_image(flip_image(raw["agentview_image"])), raw["agentview_image"]
    )
