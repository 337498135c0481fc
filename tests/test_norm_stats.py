import json

import numpy as np
import pytest

from ript.data.norm_stats import NormStats, NormStatsError, Stats


def make(dim=3):
    return Stats(
        np.arange(dim, dtype=np.float32),
        np.full(dim, 2.0, np.float32),
        np.full(dim, -1.0, np.float32),
        np.full(dim, 3.0, np.float32),
    )


def test_openpi_format_round_trip(tmp_path):
    stats = NormStats(make(8), make(7))
    stats.save(tmp_path / "norm_stats.json")
    raw = json.loads((tmp_path / "norm_stats.json").read_text())
    assert set(raw["norm_stats"]) == {"state", "actions"}
    assert set(raw["norm_stats"]["state"]) == {"mean", "std", "q01", "q99"}
    loaded = NormStats.load(tmp_path / "norm_stats.json")
    np.testing.assert_array_equal(loaded.actions.mean, stats.actions.mean)
    assert loaded.state.dim == 8 and loaded.actions.dim == 7


@pytest.mark.parametrize("mode", ["zscore", "quantile"])
def test_normalize_inverts(mode):
    s = make()
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(s.unnormalize(s.normalize(x, mode), mode), x, rtol=1e-5, atol=1e-5)


def test_formulas():
    s = make()
    np.testing.assert_allclose(s.normalize(np.array([2.0, 3.0, 4.0]), "zscore"), [1, 1, 1], 1e-5)
    np.testing.assert_allclose(
        s.normalize(np.array([-1.0, 1.0, 3.0]), "quantile"), [-1, 0, 1], atol=1e-5
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "not valid JSON"),
        (json.dumps({"state": {}}), "top-level 'norm_stats'"),
        (json.dumps({"norm_stats": {"state": {}}}), "norm_stats.state lacks 'mean'"),
        (
            json.dumps(
                {
                    "norm_stats": {
                        "state": {"mean": [0, 1], "std": [1], "q01": [0, 1], "q99": [1, 2]},
                        "actions": {},
                    }
                }
            ),
            "fields differ in length",
        ),
        (
            json.dumps(
                {"norm_stats": {"state": {"mean": ["a"], "std": [1], "q01": [0], "q99": [1]}}}
            ),
            "not a list of numbers",
        ),
    ],
)
def test_corrupt_files_are_named(tmp_path, content, message):
    path = tmp_path / "norm_stats.json"
    path.write_text(content)
    with pytest.raises(NormStatsError, match=message) as err:
        NormStats.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(NormStatsError, match="not found"):
        NormStats.load(tmp_path / "missing.json")
