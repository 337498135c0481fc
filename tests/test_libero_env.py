"""The environment layer against the real LIBERO simulator."""

import numpy as np
import pytest
from robosuite.utils import transform_utils

from ript.envs.libero_env import load_init_states, make_env
from ript.envs.observation import DUMMY_ACTION
from ript.envs.suites import check_suite_task

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def lowdim_env():
    env = make_env("libero_object", 0, max_episode_length=4, num_steps_wait=3)
    yield env
    env.close()


def inner_timestep(env) -> int:
    return env._env.env.timestep  # robosuite's own count of control steps since reset


def test_state_is_composed_from_raw_robosuite_values(lowdim_env):
    obs = lowdim_env.reset(seed=0, init_state_index=0)
    for _ in range(2):
        raw = lowdim_env.raw_observation
        expected = np.concatenate(
            [
                raw["robot0_eef_pos"],
                transform_utils.quat2axisangle(raw["robot0_eef_quat"]),
                raw["robot0_gripper_qpos"],
            ]
        )
        np.testing.assert_allclose(obs["state"], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(obs["joint_states"], raw["robot0_joint_pos"], rtol=1e-6)
        obs = lowdim_env.step(np.array([0.3, 0, 0, 0, 0, 0, -1])).obs


def test_privileged_object_state_holds_the_objects_of_interest(lowdim_env):
    obs = lowdim_env.reset(seed=0, init_state_index=0)
    raw = lowdim_env.raw_observation
    target, basket = lowdim_env.objects_of_interest
    assert (target, basket) == ("alphabet_soup_1", "basket_1")
    sim = lowdim_env.sim
    for i, name in enumerate((target, basket)):
        pose = obs["privileged_object_state"][7 * i : 7 * i + 7]
        body = sim.model.body_name2id(lowdim_env._env.env.objects_dict[name].root_body)
        np.testing.assert_allclose(pose[:3], sim.data.body_xpos[body], atol=1e-6)
        # (x, y, z, w) like robosuite's own `<name>_quat` observable
        wxyz = sim.data.body_xquat[body]
        np.testing.assert_allclose(pose[3:], [*wxyz[1:], wxyz[0]], atol=1e-6)
        np.testing.assert_allclose(np.abs(pose[3:]), np.abs(raw[f"{name}_quat"]), atol=1e-2)
    np.testing.assert_array_equal(obs["privileged_object_state"][14:], 0)
    assert "agentview_rgb" not in obs  # low-dim: nothing rendered


def test_wait_steps_and_max_length_are_honoured(lowdim_env):
    lowdim_env.reset(seed=0, init_state_index=1)
    assert inner_timestep(lowdim_env) == 3  # num_steps_wait dummy actions, then the policy
    dones = [lowdim_env.step(DUMMY_ACTION).done for _ in range(4)]
    assert dones == [False, False, False, True]
    assert lowdim_env.steps == 4
    assert inner_timestep(lowdim_env) == 3 + 4


def test_fixed_init_state_is_restored(tmp_path):
    env = make_env("libero_object", 0, max_episode_length=4, num_steps_wait=0)
    try:
        states = load_init_states("libero_object", 0)
        assert states.shape[0] == 50
        env.reset(seed=123, init_state_index=7)
        np.testing.assert_allclose(env.sim_state()[1:], states[7][1:], atol=1e-9)
        with pytest.raises(ValueError, match=r"init state 50 does not exist.*0\.\.49"):
            env.reset(seed=0, init_state_index=50)
    finally:
        env.close()


def test_a_hard_reset_starts_the_episode_a_soft_one_starts(lowdim_env):
    """LIBERO's default hard reset rebuilds the simulator; from an init state both give the
    same first observation (what makes soft resets, ript's default, safe)."""
    hard = make_env("libero_object", 0, max_episode_length=4, num_steps_wait=3, hard_reset=True)
    try:
        assert hard._env.env.hard_reset and not lowdim_env._env.env.hard_reset
        lowdim_env.reset(seed=0, init_state_index=0)
        lowdim_env.step(np.full(7, 0.5))  # something of a last episode a soft reset must undo
        for init in (3, 4):
            soft_obs = lowdim_env.reset(seed=7, init_state_index=init)
            hard_obs = hard.reset(seed=7, init_state_index=init)
            for key, value in soft_obs.items():
                np.testing.assert_allclose(hard_obs[key], value, atol=1e-6, err_msg=key)
    finally:
        hard.close()


def test_random_resets_are_seeded(lowdim_env):
    def placement(seed):
        return lowdim_env.reset(seed=seed, init_state_index=None)["privileged_object_state"]

    np.testing.assert_array_equal(placement(5), placement(5))
    assert not np.allclose(placement(5), placement(6))


def test_images_are_the_flipped_raw_frames():
    env = make_env(
        "libero_object", 1, max_episode_length=2, num_steps_wait=1, cameras=True, image_size=64
    )
    try:
        obs = env.reset(seed=0, init_state_index=0)
        raw = env.raw_observation
        for ours, theirs in [
            ("agentview_rgb", "agentview_image"),
            ("eye_in_hand_rgb", "robot0_eye_in_hand_image"),
        ]:
            assert obs[ours].shape == (64, 64, 3) and obs[ours].dtype == np.uint8
            np.testing.assert_array_equal(obs[ours], raw[theirs][::-1, ::-1])
            assert not np.array_equal(obs[ours], raw[theirs])
        frame = env.render()
        assert frame.shape == (64, 64, 3)
    finally:
        env.close()


def test_unknown_suite_and_task_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown LIBERO suite 'libero_moon'.*libero_object"):
        check_suite_task("libero_moon", 0)
    with pytest.raises(ValueError, match=r"task id 10 for suite 'libero_goal'.*0\.\.9"):
        make_env("libero_goal", 10, max_episode_length=1)


def test_every_task_fits_privileged_object_state():
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    from ript.envs.libero_env import task_info
    from ript.envs.observation import MAX_PRIVILEGED_OBJECTS
    from ript.envs.suites import SUITE_NUM_TASKS

    counts = [
        len(robosuite_parse_problem(task_info(suite, t).bddl_file)["obj_of_interest"])
        for suite, n in SUITE_NUM_TASKS.items()
        for t in range(n)
    ]
    assert len(counts) == 130
    assert max(counts) == MAX_PRIVILEGED_OBJECTS


@pytest.mark.parametrize("suite", ["libero_spatial", "libero_goal", "libero_10", "libero_90"])
def test_other_suites_run(suite):
    env = make_env(suite, 0, max_episode_length=2, num_steps_wait=1)
    try:
        obs = env.reset(seed=0, init_state_index=0)
        assert obs["state"].shape == (8,) and obs["privileged_object_state"].shape == (28,)
        assert not env.step(DUMMY_ACTION).done and env.step(DUMMY_ACTION).done
    finally:
        env.close()
