"""RLOO advantages, dynamic sampling, granularity spans and positive weights."""

import numpy as np
import pandas as pd
import pytest

from ript.rl.advantages import (
    fast_success_reward,
    informative_groups,
    positive_weights,
    rloo_advantages,
    span_advantage,
    spans,
)


def test_rloo_on_hand_computed_groups():
    rewards = np.array([1, 0, 0, 1, 1, 1, 1, 0.5, 0])
    groups = np.array(["a"] * 4 + ["b"] * 3 + ["c"] * 2)
    a = rloo_advantages(rewards, groups)
    # group a: others' means 1/3, 2/3, 2/3, 1/3
    np.testing.assert_allclose(a[:4], [1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3])
    np.testing.assert_allclose(a[4:7], [0, 0, 0])  # all equal: no signal
    np.testing.assert_allclose(a[7:], [0.5, -0.5])
    assert np.isclose(a[:4].sum(), 0)  # zero-mean within a group up to (K-1)/K scaling


def test_rloo_needs_two_rollouts_per_group():
    with pytest.raises(ValueError, match="group 'x' has 1 rollout; RLOO needs at least 2"):
        rloo_advantages(np.array([1.0, 0, 1]), np.array(["x", "y", "y"]))


def test_dynamic_sampling_drops_groups_with_equal_rewards():
    rewards = np.array([1, 1, 0, 0, 1, 0])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    assert informative_groups(rewards, groups).tolist() == [False] * 4 + [True] * 2


def test_granularity_spans():
    assert spans(7, "episode", 3) == [(0, 7)]
    assert spans(7, "window", 3) == [(0, 3), (3, 6), (6, 7)]
    assert spans(3, "timestep", 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="granularity 'chunk'"):
        spans(3, "chunk", 3)


def test_span_advantage_is_discounted_from_the_outcome():
    assert span_advantage(0.5, 7, 3, "episode", 0.9) == 0.5
    # window [3, 6) of a 7-step episode ends 1 step before the last: A * 0.9 ** 1
    assert np.isclose(span_advantage(0.5, 7, 6, "window", 0.9), 0.5 * 0.9)
    assert np.isclose(span_advantage(-1.0, 7, 7, "timestep", 0.9), -1.0)  # last step
    assert np.isclose(span_advantage(-1.0, 7, 1, "timestep", 0.9), -(0.9**6))


def test_binary_weights():
    assert positive_weights(np.array([0.5, 0, -0.2]), "binary").tolist() == [1, 0, 0]


def test_continuous_std_weights_are_clipped_tempered_and_positive():
    a = np.array([-2.0, -1, 0, 1, 2, 10])
    w = positive_weights(a, "continuous", normalization="std", temperature=2, clip_quantile=1.0)
    np.testing.assert_allclose(w, np.clip(a / a.std() / 2, 0, None))
    clipped = positive_weights(a, "continuous", clip_quantile=0.8)
    z = a / a.std()
    assert np.isclose(clipped.max(), np.quantile(z, 0.8))  # the outlier is clipped
    assert (clipped[:3] == 0).all()


def test_continuous_rank_weights_keep_the_sign():
    a = np.array([-0.5, -0.5, -0.5, 1.5, 0.2])
    w = positive_weights(a, "continuous", normalization="rank", clip_quantile=1.0)
    assert (w[:3] == 0).all()  # negative advantages never get weight
    assert w[3] > w[4] > 0
    assert np.isclose(w[3], 1.0)  # largest |A| has rank n


def test_unknown_modes_are_named():
    with pytest.raises(ValueError, match="weight mode 'soft'"):
        positive_weights(np.ones(2), "soft")
    with pytest.raises(ValueError, match="normalization 'minmax'"):
        positive_weights(np.ones(2), "continuous", normalization="minmax")


def test_fast_success_prefers_quick_successes():
    episodes = pd.DataFrame({"success": [True, True, False], "length": [50, 100, 30]})
    np.testing.assert_allclose(fast_success_reward(episodes, 100), [0.75, 0.5, 0])
