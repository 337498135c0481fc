"""Episode planning of `ript collect` (no simulator needed)."""

import pytest

from ript.config import validate
from ript.rollouts import episode_specs, parse_init_states
from ript.settings import Simulation


def plan(**kw):
    args = dict(
        suite="libero_object",
        tasks=[0, 3],
        init_states=(0, 3),
        rollouts_per_init=2,
        seed=7,
        use_init_states=True,
    )
    return episode_specs(**{**args, **kw})


def test_groups_share_their_start_and_differ_in_policy_seed():
    specs = plan()
    assert len(specs) == 2 * 3 * 2
    assert [s.episode_index for s in specs] == list(range(12))
    by_group = {}
    for s in specs:
        by_group.setdefault(s.group_id, []).append(s)
    assert len(by_group) == 6
    for group in by_group.values():
        assert [s.rollout_index for s in group] == [0, 1]
        assert len({s.reset_seed for s in group}) == 1
        assert len({s.seed for s in group}) == 2
    assert len({g[0].reset_seed for g in by_group.values()}) == 6


def test_random_resets_when_init_states_are_disabled():
    specs = plan(use_init_states=False)
    assert all(s.init_state_index is None for s in specs)
    assert specs[0].group_id == "libero_object/task0/random0"
    assert specs[0].reset_seed == specs[1].reset_seed != specs[2].reset_seed


def test_a_fixed_reset_seed_seeds_every_reset_and_leaves_the_policy_seeds():
    specs = plan(reset_seed=7)
    assert {s.reset_seed for s in specs} == {7}
    assert [s.seed for s in specs] == [s.seed for s in plan()]


def test_seeds_do_not_depend_on_sharding():
    whole = {(s.task_id, s.init_state_index, s.rollout_index): s.seed for s in plan()}
    shard = plan(tasks=[3], init_states=(1, 3))
    for s in shard:
        assert s.seed == whole[(s.task_id, s.init_state_index, s.rollout_index)]
    assert plan(seed=8)[0].seed != plan()[0].seed


def test_videos_go_to_the_first_episodes():
    assert [s.record_video for s in plan(n_video=3)][:4] == [True, True, True, False]


def test_init_state_ranges():
    config = validate({"train_init_states": [0, 20], "eval_init_states": [30, 50]})
    sim = Simulation.of(config)
    assert parse_init_states("train", sim) == (0, 20)
    assert parse_init_states("eval", sim) == (30, 50)
    assert parse_init_states("5:9", sim) == (5, 9)
    for bad in ("9:5", "a:b", "7", "-1:3"):
        with pytest.raises(ValueError, match="--init-states"):
            parse_init_states(bad, sim)
