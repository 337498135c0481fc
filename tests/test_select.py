"""The adaptive evaluation schedule: screen, contenders, selection, and the choice it feeds."""

import json

import pytest
from helpers import episodes, fake_policy, write_metrics

from ript.choose import choose
from ript.evaluation.metrics import paired_counts, paired_newcombe_difference
from ript.select import contenders, read_contenders, screen_table, selection_table, write_selection


def point(tmp_path, stage, alpha, cfg, successes, policy=None):
    training = {"mode": "cfg", "cond_mode": "bias", "alpha_uncond": alpha}
    path = tmp_path / f"select/{stage}/bias_a{alpha:g}/cfg{cfg:g}/metrics.json"
    return write_metrics(path, successes, training, cfg, policy=policy or "")


def screen(tmp_path, outcomes):
    return [point(tmp_path, "screen", a, c, ok) for (a, c), ok in outcomes.items()]


def test_contenders_are_the_points_not_clearly_worse_than_the_screens_best(tmp_path):
    strong = [True] * 16 + [False] * 4
    close = [True] * 14 + [False] * 6  # within the interval of the best
    weak = [True] * 2 + [False] * 18  # clearly worse on the same episodes
    paths = screen(tmp_path, {(0.1, 1.0): close, (0.1, 3.0): strong, (0.3, 1.0): weak})
    table = screen_table(paths)
    assert table["screen_best"].tolist() == [False, True, False]
    for row, ok in zip(table.itertuples(), [close, strong, weak], strict=True):
        expected = paired_newcombe_difference(*paired_counts(episodes(ok), episodes(strong)))
        assert (row.diff_vs_screen_best, row.diff_ci95_low, row.diff_ci95_high) == (
            pytest.approx(expected)
        )
    out = tmp_path / "contenders.json"
    result = contenders(paths, max_contenders=3, out=out)
    assert result["contenders"] == [paths[1], paths[0]]  # best first, the weak one dropped
    assert read_contenders(out) == result["contenders"]
    assert contenders(paths, max_contenders=1, out=out)["contenders"] == [paths[1]]


def test_screen_ties_go_to_the_grid_order_and_unpaired_screens_are_refused(tmp_path):
    same = [True] * 5 + [False] * 5
    paths = screen(tmp_path, {(0.3, 1.0): same, (0.1, 3.0): same, (0.1, 1.0): same})
    table = screen_table(paths)
    best = table[table["screen_best"]].iloc[0]
    assert (best.alpha_uncond, best.cfg_scale) == (0.1, 1.0)
    shorter = point(tmp_path, "screen", 0.3, 3.0, same[:8])
    with pytest.raises(ValueError, match="do not pair"):
        screen_table([*paths, shorter])


def test_selection_chooses_the_contender_with_the_most_selection_successes(tmp_path):
    policy = fake_policy(tmp_path / "train/bias_a0.1/policy")
    outcomes = {(0.1, 1.0): [True] * 8 + [False] * 2, (0.1, 3.0): [True] * 7 + [False] * 3}
    paths = [point(tmp_path, "screen", a, c, ok, policy=policy) for (a, c), ok in outcomes.items()]
    kept = contenders(paths, 2, tmp_path / "contenders.json")["contenders"]
    assert kept == paths
    # the screen's best does worse on the contend episodes; the runner-up wins overall
    contend = [
        point(tmp_path, "contend", 0.1, 1.0, [True] * 10 + [False] * 10, policy=policy),
        point(tmp_path, "contend", 0.1, 3.0, [True] * 15 + [False] * 5, policy=policy),
    ]
    csv, md = tmp_path / "tables/selection.csv", tmp_path / "tables/selection.md"
    table = write_selection(paths, contend, csv, md)
    chosen = table[table["best"]].iloc[0]
    assert (chosen.cfg_scale, chosen.successes, chosen.n) == (3.0, 22, 30)
    assert table["contender"].all() and table["n"].tolist() == [30, 30]
    assert "**chosen** bias | 0.1 | 3 | 7/10" in md.read_text()
    # the next round starts from the chosen point, at its cfg_scale
    choice = choose(csv, tmp_path / "chosen")
    assert (choice["cfg_scale"], choice["n"]) == (3.0, 30)
    assert json.loads((tmp_path / "chosen/policy/policy.json").read_text())["cfg_scale"] == 3.0


def test_points_out_of_contention_keep_their_screen_only(tmp_path):
    outcomes = {(0.1, 1.0): [True] * 20, (0.1, 3.0): [False] * 20}
    paths = screen(tmp_path, outcomes)
    (kept,) = contenders(paths, 2, tmp_path / "contenders.json")["contenders"]
    contend = [point(tmp_path, "contend", 0.1, 1.0, [True] * 5 + [False] * 5)]
    table = selection_table(paths, contend)
    assert table["contender"].tolist() == [True, False]
    assert table["n"].tolist() == [30, 20] and table["best"].tolist() == [True, False]
    stranger = point(tmp_path, "contend", 0.5, 1.0, [True] * 10)
    with pytest.raises(ValueError, match="not screened"):
        selection_table(paths, [stranger])
