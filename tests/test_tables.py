"""The sweep table's difference to the base: paired and independent Newcombe intervals."""

import json

import numpy as np
import pytest
from helpers import episodes, write_metrics

from ript.evaluation.metrics import (
    newcombe_difference,
    paired_counts,
    paired_episodes_needed,
    paired_newcombe_difference,
)
from ript.report.tables import markdown, sweep_table


def test_paired_interval_without_correlation_is_the_independent_one():
    # phi = (4*6 - 4*6) / ... = 0: the pairing carries no information
    both, only_1, only_2, neither = 4, 4, 6, 6
    n = both + only_1 + only_2 + neither
    paired = paired_newcombe_difference(both, only_1, only_2, neither)
    independent = newcombe_difference(both + only_1, n, both + only_2, n)
    assert paired == pytest.approx(independent)


def test_paired_interval_is_antisymmetric_and_narrows_with_correlation():
    d, low, high = paired_newcombe_difference(10, 8, 2, 30)
    d_swap, low_swap, high_swap = paired_newcombe_difference(10, 2, 8, 30)
    assert (d_swap, low_swap, high_swap) == pytest.approx((-d, -high, -low))
    _, ind_low, ind_high = newcombe_difference(18, 50, 12, 50)
    assert ind_low < low < d < high < ind_high


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    # correlated pairs: a shared init-state difficulty u decides both outcomes in part
    rng = np.random.default_rng(0)
    p1, p2, n, trials, covered, width_paired, width_ind = 0.45, 0.3, 50, 2000, 0, 0.0, 0.0
    for _ in range(trials):
        u = rng.random(n)
        x1 = np.where(rng.random(n) < 0.6, u < p1, rng.random(n) < p1)
        x2 = np.where(rng.random(n) < 0.6, u < p2, rng.random(n) < p2)
        counts = (
            int(np.sum(x1 & x2)),
            int(np.sum(x1 & ~x2)),
            int(np.sum(~x1 & x2)),
            int(np.sum(~x1 & ~x2)),
        )
        _, low, high = paired_newcombe_difference(*counts)
        covered += low <= p1 - p2 <= high
        width_paired += high - low
        _, low, high = newcombe_difference(int(x1.sum()), n, int(x2.sum()), n)
        width_ind += high - low
    assert 0.93 <= covered / trials <= 0.975
    assert width_paired < 0.9 * width_ind


def test_paired_counts_need_the_same_episodes():
    a, b = episodes([True, True, False, False]), episodes([True, False, True, False])
    assert paired_counts(a, b) == (1, 1, 1, 1)
    assert paired_counts(a, b[:3]) is None
    assert paired_counts(a, [{**e, "rollout": 1} for e in b]) is None
    assert paired_counts(a + a[:1], b + b[:1]) is None
    assert paired_counts([], []) is None


@pytest.mark.parametrize("base_has_episodes", [True, False])
def test_sweep_table_pairs_rows_with_the_base_when_the_episodes_match(tmp_path, base_has_episodes):
    base_ok = [True] * 10 + [False] * 30
    trained_ok = [True] * 10 + [True] * 12 + [False] * 18  # never worse than the base
    base = write_metrics(tmp_path / "base.json", base_ok, with_episodes=base_has_episodes)
    training = {"mode": "cfg", "cond_mode": "bias", "alpha_uncond": 0.1}
    grid = [write_metrics(tmp_path / "g.json", trained_ok, training, 2.0)]
    table = sweep_table(grid, base)
    row = table.iloc[1]
    if base_has_episodes:
        expected, method = paired_newcombe_difference(10, 12, 0, 18), "paired"
    else:
        expected, method = newcombe_difference(22, 40, 10, 40), "independent"
    assert row["diff_interval"] == method
    assert (row["diff_vs_base"], row["diff_ci95_low"], row["diff_ci95_high"]) == pytest.approx(
        expected
    )
    assert row["success_rate"] == 22 / 40 and row["best"]
    assert ("paired outcomes" in markdown(table)) == base_has_episodes


def test_a_metrics_file_without_its_blocks_is_named(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"overall": {}}))
    with pytest.raises(ValueError, match=r"metrics\.json.*per_task"):
        sweep_table([], bad)


def test_episodes_needed_follow_mcnemar_sample_size():
    # discordance 13/50, difference 5/50: (1.96 sqrt(.26) + 0.84 sqrt(.25))^2 / .01 = 202
    assert paired_episodes_needed(20, 9, 4, 17) == 202
    assert paired_episodes_needed(10, 5, 5, 30) == float("inf")
    # simulated: at that many episodes, a McNemar test rejects about 80% of the time
    rng = np.random.default_rng(1)
    n, rejected = 202, 0
    for _ in range(2000):
        cells = rng.multinomial(n, [20 / 50, 9 / 50, 4 / 50, 17 / 50])
        b, c = cells[1], cells[2]
        rejected += (b - c) ** 2 / max(b + c, 1) > 3.841
    assert 0.74 <= rejected / 2000 <= 0.86


def test_an_unresolved_best_point_says_how_many_episodes_it_would_need(tmp_path):
    base = write_metrics(tmp_path / "base.json", [True] * 20 + [False] * 20)
    trained = [True] * 18 + [False] * 2 + [True] * 5 + [False] * 15  # +3 of 40, discordant 7
    training = {"mode": "cfg", "cond_mode": "bias", "alpha_uncond": 0.1}
    table = sweep_table([write_metrics(tmp_path / "g.json", trained, training, 2.0)], base)
    row = table.iloc[1]
    assert not row["resolved_vs_base"]
    assert row["episodes_needed"] == paired_episodes_needed(18, 5, 2, 15)
    assert f"about {row['episodes_needed']:.0f} paired episodes per policy" in markdown(table)
