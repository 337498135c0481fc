"""Parallel rollouts with the real simulator: grouping, recovery, videos, the expert."""

import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import KillingPolicy, RandomPolicy, small_pool

from ript.envs.episode import EpisodeSpec
from ript.envs.expert import ScriptedExpert
from ript.envs.video import write_video
from ript.rollouts import episode_specs, per_task_success

pytestmark = pytest.mark.sim


def short_specs(n_init=2, k=2, **kw):
    return episode_specs(
        suite="libero_object",
        tasks=[0],
        init_states=(0, n_init),
        rollouts_per_init=k,
        seed=0,
        use_init_states=True,
        **kw,
    )


def test_k_rollouts_per_init_state_share_a_group(lowdim_pool):
    specs = short_specs(n_init=2, k=3)
    episodes = lowdim_pool.run(specs, RandomPolicy(), progress=False)
    assert [e.spec.episode_index for e in episodes] == list(range(6))
    groups = {}
    for e in episodes:
        groups.setdefault(e.spec.group_id, []).append(e)
    assert sorted(groups) == ["libero_object/task0/init0", "libero_object/task0/init1"]
    for members in groups.values():
        assert [m.spec.rollout_index for m in members] == [0, 1, 2]
        assert len({m.spec.init_state_index for m in members}) == 1
        assert len({m.spec.seed for m in members}) == 3  # the policy's noise differs
        # the group shares its start: identical first observations
        for m in members[1:]:
            np.testing.assert_array_equal(m.obs["state"][0], members[0].obs["state"][0])
    for e in episodes:
        assert e.length == 130 and not e.success  # random actions run to the limit
        assert e.actions.shape == (130, 7) and e.obs["state"].shape == (130, 8)
        assert e.dones.sum() == 1 and e.dones[-1] == 1


def test_rollouts_are_reproducible(lowdim_pool):
    specs = short_specs(n_init=1, k=2)
    a = lowdim_pool.run(specs, RandomPolicy(), progress=False)
    b = lowdim_pool.run(list(reversed(specs)), RandomPolicy(), progress=False)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.states, y.states)


def test_an_evaluation_that_stores_no_episodes_keeps_no_observations(lowdim_pool):
    specs = short_specs(n_init=1, k=2, n_video=1)
    kept = lowdim_pool.run(specs, RandomPolicy(), progress=False)
    light = lowdim_pool.run(specs, RandomPolicy(), progress=False, keep_observations=False)
    for x, y in zip(kept, light, strict=True):
        np.testing.assert_array_equal(x.actions, y.actions)  # the same episodes
        assert x.obs and x.states.shape[0] == x.length
        assert y.obs == {} and y.states.size == 0
    assert len(light[0].frames) == len(kept[0].frames) > 0  # videos are still recorded


def test_killed_worker_is_recovered_with_the_exact_episode_count(lowdim_pool):
    specs = short_specs(n_init=2, k=2)
    reference = lowdim_pool.run(specs, RandomPolicy(), progress=False)
    restarts = lowdim_pool.stats.worker_restarts
    policy = KillingPolicy(lowdim_pool, kill_on_call=4, worker=1)
    episodes = lowdim_pool.run(specs, policy, progress=False)
    assert policy.killed_pid is not None
    assert policy.killed_pid not in lowdim_pool.worker_pids
    assert lowdim_pool.stats.worker_restarts == restarts + 1
    assert [e.spec.episode_index for e in episodes] == [s.episode_index for s in specs]
    for got, want in zip(episodes, reference, strict=True):  # the re-run is the same episode
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.states, want.states)


def test_worker_dead_before_its_next_chunk_is_sent_is_restarted():
    """The worker is gone when the pool sends it the next chunk (a broken pipe on send),
    not while the pool waits for its reply (EOF on receive): seen in CI as a crash."""
    specs = short_specs(n_init=1, k=2)
    with small_pool(2) as pool:
        policy = KillingPolicy(pool, kill_on_call=2, worker=1, until_dead=True)
        episodes = pool.run(specs, policy, progress=False)
        assert pool.stats.worker_restarts == 1
        assert policy.killed_pid not in pool.worker_pids
    assert [e.spec.episode_index for e in episodes] == [s.episode_index for s in specs]
    assert all(e.length == 130 for e in episodes)


def test_expert_succeeds_and_videos_are_written(lowdim_pool, tmp_path):
    specs = short_specs(n_init=2, k=1, n_video=2)
    episodes = lowdim_pool.run(specs, ScriptedExpert(), progress=False)
    assert all(e.success for e in episodes), [e.length for e in episodes]
    assert all(e.rewards[-1] == 1.0 for e in episodes)
    assert per_task_success(episodes).loc[0, "success_rate"] == 1.0
    paths = [write_video(e, tmp_path, fps=20) for e in episodes]
    assert len({p.name for p in paths}) == 2
    for path, e in zip(paths, episodes, strict=True):
        assert path.stat().st_size > 1000
        assert f"ep{e.spec.episode_index:04d}_success" in path.name
        assert len(e.frames) == e.length + 1  # the first observation and one per step
        assert e.frames[0].shape == (64, 64, 3)


def test_noisy_expert_is_reproducible_and_worse(lowdim_pool):
    specs = short_specs(n_init=2, k=2)
    noisy = ScriptedExpert(action_noise=2.0, grasp_offset=0.05)
    a = lowdim_pool.run(specs, noisy, progress=False)
    b = lowdim_pool.run(specs, noisy, progress=False)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.actions, y.actions)
    assert sum(e.success for e in a) < len(a)


def test_bad_policy_output_is_reported_and_the_pool_stays_usable():
    class Wrong(RandomPolicy):
        def act(self, requests):
            return np.zeros((len(requests), 5, 6))

    specs = short_specs(n_init=1, k=2)
    with small_pool(max_episode_length=5, num_steps_wait=0, privileged_object_state=False) as pool:
        with pytest.raises(ValueError, match=r"shape \(1, 5, 6\); expected \(1, chunk_len, 7\)"):
            pool.run(specs, Wrong(), progress=False)
        episodes = pool.run(specs, RandomPolicy(), progress=False)
        assert [e.spec.episode_index for e in episodes] == [0, 1]
        assert [e.length for e in episodes] == [5, 5]
        with pytest.raises(ValueError, match="distinct episode_index"):
            pool.run([specs[0], specs[0]], RandomPolicy(), progress=False)


def test_switching_tasks_through_a_small_env_cache_changes_nothing():
    """With room for one simulator, every task switch closes and re-creates an env."""
    specs = episode_specs(
        suite="libero_object",
        tasks=[0, 3],
        init_states=(0, 1),
        rollouts_per_init=1,
        seed=0,
        use_init_states=True,
    )
    again = [EpisodeSpec(**{**vars(specs[0]), "episode_index": 2})]
    with small_pool(max_episode_length=3, num_steps_wait=2, max_cached_envs=1) as pool:
        first, other, revisit = pool.run(specs + again, RandomPolicy(), progress=False)
    assert other.spec.task_id == 3 and revisit.spec.task_id == 0
    np.testing.assert_array_equal(first.states, revisit.states)
    np.testing.assert_array_equal(first.actions, revisit.actions)


class StallingPolicy(RandomPolicy):
    """Stops one simulator worker (SIGSTOP) for `stall_s` on one call, and counts the policy
    calls made while it is stopped."""

    def __init__(self, pool, stall_on_call: int, stall_s: float = 2.0) -> None:
        super().__init__()
        self.pool, self.stall_on_call, self.stall_s = pool, stall_on_call, stall_s
        self.stopped_until = 0.0
        self.calls_while_stopped = 0

    def act(self, requests):
        if time.monotonic() < self.stopped_until:
            self.calls_while_stopped += 1
        out = super().act(requests)
        if self.calls == self.stall_on_call:
            pid = self.pool.worker_pids[1]
            os.kill(pid, signal.SIGSTOP)
            self.stopped_until = time.monotonic() + self.stall_s
            threading.Timer(self.stall_s, os.kill, (pid, signal.SIGCONT)).start()
        return out


def test_the_async_engine_gives_the_lockstep_episodes(lowdim_pool, async_pool):
    specs = short_specs(n_init=1, k=3)
    for policy in (RandomPolicy, lambda: ScriptedExpert(action_noise=0.1)):
        lockstep = lowdim_pool.run(specs, policy(), progress=False)
        served = async_pool.run(specs, policy(), progress=False)
        for x, y in zip(lockstep, served, strict=True):
            assert x.spec == y.spec and x.success == y.success
            np.testing.assert_array_equal(x.actions, y.actions)
            np.testing.assert_array_equal(x.states, y.states)


@pytest.mark.parametrize("engine", ["lockstep", "async"])
def test_a_stalled_simulator_holds_up_only_the_lockstep_engine(engine, lowdim_pool, async_pool):
    pool = {"lockstep": lowdim_pool, "async": async_pool}[engine]
    policy = StallingPolicy(pool, stall_on_call=3)
    episodes = pool.run(short_specs(n_init=1, k=2), policy, progress=False)
    assert [e.length for e in episodes] == [130, 130]
    if engine == "lockstep":
        assert policy.calls_while_stopped == 0  # every call waits for the stopped worker
    else:  # the other episode is served meanwhile: 2 s hold ~20 of its 26 chunks
        assert policy.calls_while_stopped >= 5


def test_a_killed_worker_is_recovered_by_the_async_engine(lowdim_pool, async_pool):
    specs = short_specs(n_init=1, k=3)
    reference = lowdim_pool.run(specs, RandomPolicy(), progress=False)
    restarts = async_pool.stats.worker_restarts
    policy = KillingPolicy(async_pool, kill_on_call=4, worker=1)
    episodes = async_pool.run(specs, policy, progress=False)
    assert async_pool.stats.worker_restarts == restarts + 1
    for got, want in zip(episodes, reference, strict=True):
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.states, want.states)


def test_workers_render_on_the_egl_device_they_are_given(monkeypatch):
    # This machine's EGL has one device (Mesa): 0 renders, 3 reaches robosuite and is refused.
    monkeypatch.delenv("MUJOCO_EGL_DEVICE_ID", raising=False)
    specs = short_specs(n_init=1, k=1)
    camera_pool = dict(cameras=True, max_episode_length=2, num_steps_wait=1)
    with small_pool(1, render_gpu="0", **camera_pool) as pool:
        (episode,) = pool.run(specs, RandomPolicy(), progress=False)
    assert episode.obs["agentview_rgb"].shape == (2, 64, 64, 3)
    refused = pytest.raises(RuntimeError, match="MUJOCO_EGL_DEVICE_ID")
    with small_pool(1, render_gpu="3", env_create_retries=1, **camera_pool) as pool, refused:
        pool.run(specs, RandomPolicy(), progress=False)


def test_the_engine_is_checked():
    with pytest.raises(ValueError, match="engine 'fast'"):
        small_pool(1, engine="fast")
