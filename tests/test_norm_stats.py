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


def test_streamed_stats_agree_with_numpy(tmp_path):
    from helpers import make_episode

    from ript.data.episode_store import write_shard
    from ript.data.norm_stats import compute_norm_stats

    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    eps_a = [make_episode(i, t=40 + i) for i in range(3)]
    eps_b = [make_episode(10 + i, t=25) for i in range(2)]
    for ep in eps_a + eps_b:
        ep.actions[:, 5] = 0.25  # a constant dimension: reported and guarded
    write_shard(a, eps_a, policy_id="x")
    write_shard(b, eps_b, policy_id="x")
    keys = ["state", "privileged_object_state"]
    bins = 1000
    stats, guarded = compute_norm_stats([a, b], keys, bins=bins)
    eps = eps_a + eps_b
    keys_on_disk = ("ee_pos", "ee_ori", "gripper_states", "privileged_object_state")
    # the store's state is eef pos + axis-angle + gripper, derived on read
    state = np.concatenate(
        [np.concatenate([e.obs[k] for k in keys_on_disk], 1) for e in eps]
    ).astype(np.float64)
    actions = np.concatenate([e.actions for e in eps]).astype(np.float64)
    for got, want in ((stats.state, state), (stats.actions, actions)):
        live = want.std(0) > 0
        np.testing.assert_allclose(got.mean, want.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got.std[live], want.std(0)[live], rtol=1e-6)
        bin_width = (want.max(0) - want.min(0)) / bins
        for q, field in ((0.01, got.q01), (0.99, got.q99)):
            # the histogram finds the inverted-CDF quantile (an order statistic) to one bin
            err = np.abs(field - np.quantile(want, q, axis=0, method="inverted_cdf"))
            assert (err[live] <= bin_width[live] + 1e-6).all()
    assert guarded == {"state": [], "actions": [5]}
    assert stats.actions.std[5] == 1.0
    assert stats.actions.q01[5] == pytest.approx(-0.75) and stats.actions.q99[5] == pytest.approx(
        1.25
    )


def test_norm_stats_command_names_missing_keys(tmp_path):
    from helpers import make_episode, run_ript

    from ript.data.episode_store import write_shard

    write_shard(tmp_path / "a.h5", [make_episode(0)], policy_id="x")
    ok = run_ript(
        "norm-stats", "--shards", str(tmp_path / "a.h5"), "--out", str(tmp_path / "ns.json")
    )
    assert ok.returncode == 0, ok.stderr
    assert NormStats.load(tmp_path / "ns.json").state.dim == 8
    bad = run_ript(
        "norm-stats",
        "--shards",
        str(tmp_path / "a.h5"),
        "--state-keys",
        "state",
        "wrist_depth",
        "--out",
        str(tmp_path / "x.json"),
    )
    assert bad.returncode == 2 and "no observation 'wrist_depth'" in bad.stderr
    assert not (tmp_path / "x.json").exists()
