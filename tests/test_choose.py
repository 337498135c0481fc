"""`ript choose` and the rounds table: the model a next round starts from."""

import json

import pandas as pd
import pytest
from helpers import episodes, fake_policy, write_metrics

from ript.checkpoint import CHECKPOINT_FILES, POLICY_FILE
from ript.choose import choose
from ript.evaluation.metrics import paired_counts, paired_newcombe_difference
from ript.report.tables import (
    read_sweep,
    rounds_markdown,
    rounds_table,
    write_tables,
)


def sweep(tmp_path, successes_by_cfg, name="sweep.csv"):
    """A sweep table over one trained policy at several cfg_scales."""
    policy = tmp_path / "train/bias_a0.1/policy"
    if not policy.exists():
        fake_policy(policy)
    base = write_metrics(tmp_path / "eval/base.json", [True] * 4 + [False] * 6)
    grid = []
    training = {"mode": "cfg", "cond_mode": "bias", "alpha_uncond": 0.1}
    for cfg, ok in successes_by_cfg.items():
        path = tmp_path / f"eval/{name}/cfg{cfg}.json"
        grid.append(write_metrics(path, ok, training, cfg, policy=policy))
    csv = tmp_path / name
    write_tables(grid, base, csv, tmp_path / f"{name}.md")
    return csv, policy


def test_choose_links_the_best_policy_with_its_cfg_scale(tmp_path):
    table, policy = sweep(tmp_path, {1.0: [True] * 5 + [False] * 5, 2.0: [True] * 7 + [False] * 3})
    (policy / ".snakemake_timestamp").write_text("")  # Snakemake's marker of a directory output
    choice = choose(table, tmp_path / "chosen")
    assert (choice["cfg_scale"], choice["success_rate"], choice["policy"]) == (
        2.0,
        0.7,
        str(policy),
    )
    chosen = tmp_path / "chosen/policy"
    for name in CHECKPOINT_FILES:
        assert (chosen / name).stat().st_ino == (policy / name).stat().st_ino
    # not linked: Snakemake touching the chosen policy's marker would date the trained one
    assert not (chosen / ".snakemake_timestamp").exists()
    assert json.loads((chosen / POLICY_FILE).read_text()) == {"num_steps": 10, "cfg_scale": 2.0}
    assert json.loads((policy / POLICY_FILE).read_text())["cfg_scale"] == 1.0  # untouched
    assert json.loads((tmp_path / "chosen/choice.json").read_text()) == choice
    again = choose(table, tmp_path / "chosen")  # a rerun replaces the choice
    assert again == choice and sorted(p.name for p in (tmp_path / "chosen").iterdir()) == [
        "choice.json",
        "policy",
    ]


def test_choose_names_what_is_missing(tmp_path):
    table, policy = sweep(tmp_path, {1.0: [True] * 5 + [False] * 5})
    (policy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"policy lacks \['model.safetensors'\]"):
        choose(table, tmp_path / "chosen")
    assert not (tmp_path / "chosen/policy").exists()
    pd.DataFrame({"policy": ["base"], "best": [False]}).to_csv(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"bad\.csv: not a sweep or selection table"):
        choose(tmp_path / "bad.csv", tmp_path / "chosen")


def test_rounds_table_lists_each_rounds_best_point(tmp_path):
    first, _ = sweep(tmp_path, {1.0: [True] * 5 + [False] * 5, 2.0: [True] * 6 + [False] * 4})
    second, _ = sweep(tmp_path, {1.0: [True] * 8 + [False] * 2}, name="round2.csv")
    table = rounds_table([read_sweep(first), read_sweep(second)], [first, second])
    assert table["round"].tolist() == [1, 2]
    assert table["success_rate"].tolist() == [0.6, 0.8]
    assert table["cfg_scale"].tolist() == [2.0, 1.0]
    # round 1 against the base, round 2 against round 1's point, each on paired episodes
    base, best_1 = [True] * 4 + [False] * 6, [True] * 6 + [False] * 4
    best_2 = [True] * 8 + [False] * 2
    for row, (ours, start) in zip(
        table.itertuples(), [(best_1, base), (best_2, best_1)], strict=True
    ):
        counts = paired_counts(episodes(ours), episodes(start))
        assert (row.diff_vs_start, row.start_ci95_low, row.start_ci95_high) == pytest.approx(
            paired_newcombe_difference(*counts)
        )
    text = rounds_markdown(table, "0.40 [0.17, 0.69]")
    assert "| 2 | bias | 0.1 | 1 | 0.80 [0.49, 0.94] | 10 |" in text
    assert "selection effect" in text
    assert "selection effect" not in rounds_markdown(table, "0.40", selection="separate")
