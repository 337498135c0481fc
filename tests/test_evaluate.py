"""Wilson intervals and the metrics `ript evaluate` writes."""

import dataclasses

import pytest
from helpers import make_episode

from ript.evaluation.evaluate import episode_metrics
from ript.evaluation.metrics import success_summary, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [  # Wilson score intervals worked by hand (z = 1.959964), 6 decimals
        (5, 10, 0.236593, 0.763407),
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
        (1, 20, 0.008881, 0.236131),
        (37, 50, 0.604468, 0.841285),
    ],
)
def test_wilson_interval(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=2e-6)


def test_no_episodes_means_no_information():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert success_summary(0, 0)["success_rate"] == 0.0


def test_episode_metrics_per_task_and_overall():
    episodes = []
    for i, (task, success, length) in enumerate(
        [(3, True, 5), (3, False, 9), (3, True, 7), (5, False, 4)]
    ):
        ep = make_episode(i, t=length, cameras=False, success=success)
        episodes.append(dataclasses.replace(ep, spec=dataclasses.replace(ep.spec, task_id=task)))
    m = episode_metrics(episodes)
    assert m["overall"]["successes"] == 2 and m["overall"]["n"] == 4
    assert m["overall"]["mean_episode_length"] == pytest.approx(25 / 4)
    assert (m["overall"]["ci95_low"], m["overall"]["ci95_high"]) == pytest.approx(
        wilson_interval(2, 4)
    )
    assert m["per_task"]["3"]["successes"] == 2 and m["per_task"]["3"]["n"] == 3
    assert m["per_task"]["5"]["success_rate"] == 0.0
    assert m["per_task"]["5"]["ci95_high"] == pytest.approx(wilson_interval(0, 1)[1])
