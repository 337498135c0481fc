"""`ript label`: the label table from rollout shards."""

import numpy as np
import pandas as pd
import pytest
from rollouts import write_rollouts

from ript.config import load_config
from ript.rl.label import LABEL_COLUMNS, label, read_labels, read_rollouts
from ript.settings import Labels

GROUPS = {"g0": [True, False, False], "g1": [True, True, True], "g2": [False, True, True]}


@pytest.fixture
def shard(tmp_path):
    return write_rollouts(tmp_path / "r.h5", GROUPS, length=6)


def test_episode_labels_and_dynamic_sampling(shard, tmp_path):
    config = load_config(None, {"rollouts_per_init": 3})
    summary = label(Labels.of(config), [shard], tmp_path / "l.parquet")
    table, stored = read_labels(tmp_path / "l.parquet")
    assert stored == summary
    assert list(table.columns) == LABEL_COLUMNS
    assert (summary.groups, summary.groups_kept, summary.episodes_kept) == (3, 2, 6)
    assert set(table["group_id"]) == {"g0", "g2"}  # g1: all successes, no signal
    g0 = table[table["group_id"] == "g0"].sort_values("rollout_index")
    np.testing.assert_allclose(g0["advantage"], [1.0, -0.5, -0.5])
    assert g0["is_positive"].tolist() == [True, False, False]
    assert g0["w_pos"].tolist() == [1.0, 0.0, 0.0]
    assert (table["step_start"] == 0).all()
    assert (table["step_stop"] == table["length"]).all()
    assert (table["shard"] == str(shard)).all()


def test_without_dynamic_sampling_every_group_stays(shard, tmp_path):
    config = load_config(None, {"dynamic_sampling": False})
    summary = label(Labels.of(config), [shard], tmp_path / "l.parquet")
    assert (summary.groups_kept, summary.rows) == (3, 9)


def test_window_rows_carry_discounted_advantages(shard, tmp_path):
    config = load_config(
        None,
        {
            "label_granularity": "window",
            "window_size": 4,
            "label_discount": 0.5,
            "weight_mode": "continuous",
        },
    )
    label(Labels.of(config), [shard], tmp_path / "l.parquet")
    table, _ = read_labels(tmp_path / "l.parquet")
    first = table[(table["group_id"] == "g0") & (table["rollout_index"] == 0)]
    # 6 steps -> windows [0, 4), [4, 6); A = 1
    assert first[["step_start", "step_stop"]].values.tolist() == [[0, 4], [4, 6]]
    np.testing.assert_allclose(first["advantage"], [0.5**2, 1.0])
    steps = label(
        Labels.of(
            load_config(None, {"label_granularity": "timestep", "weight_mode": "continuous"})
        ),
        [shard],
        tmp_path / "t.parquet",
    )
    lengths = read_rollouts([shard]).query("group_id != 'g1'")["length"]
    assert steps.rows == lengths.sum()


def test_a_group_split_over_shards_is_an_error(tmp_path):
    a = write_rollouts(tmp_path / "a.h5", {"g": [True, False]})
    b = write_rollouts(tmp_path / "b.h5", {"g": [True, False]})
    with pytest.raises(ValueError, match="group 'g' appears in several shards"):
        read_rollouts([a, b])


def test_a_foreign_parquet_is_not_a_label_table(tmp_path):
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="not a ript label table"):
        read_labels(tmp_path / "x.parquet")
