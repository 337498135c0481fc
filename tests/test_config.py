import pytest

from ript.cli import _parse_settings
from ript.config import ConfigError, load_config, validate


def test_defaults_come_from_the_schema():
    config = validate({})
    assert config["num_steps_wait"] == 10
    assert config["max_episode_length"] is None
    assert config["train_init_states"] == [0, 25]
    assert config["eval_init_states"] == [25, 50]


def test_embedded_default_config_is_valid():
    config = load_config("config/config.yaml")
    assert config["suite"] == "libero_object"


ADAPTIVE = {
    "eval_schedule": "adaptive",
    "train_init_states": [0, 10],
    "screen_init_states": [10, 15],
    "contend_init_states": [15, 25],
}


def test_an_adaptive_schedule_on_disjoint_init_states_is_valid():
    assert validate(dict(ADAPTIVE))["contend_init_states"] == [15, 25]


def test_the_openpi_protocol_sets_its_keys_and_may_evaluate_trained_init_states():
    config = validate({"eval_protocol": "openpi", "num_steps_wait": 10})
    assert config["eval_init_states"] == [0, 50] and config["eval_rollouts_per_init"] == 1
    assert config["max_episode_length"] is None and config["hard_reset"] is True
    assert config["train_init_states"] == [0, 25]  # overlaps the evaluation: allowed here
    assert validate({})["hard_reset"] is False


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"suite": "libero_moon"}, ["'suite'", "libero_moon", "libero_object"]),
        ({"num_steps_wait": -1}, ["'num_steps_wait'", "-1"]),
        ({"tasks": []}, ["'tasks'"]),
        ({"tasks": [12]}, ["'tasks'", "12", "0..9"]),
        ({"cond_mod": "token"}, ["cond_mod", "allowed keys"]),
        ({"train_init_states": [0, 30]}, ["train_init_states", "eval_init_states", "overlap"]),
        ({"eval_init_states": [40, 60]}, ["eval_init_states"]),
        ({"train_init_states": [5, 5]}, ["train_init_states", "[5, 5]"]),
        ({"n_video": 2, "render_source": "obs"}, ["render_source", "cameras"]),
        ({"eval_schedule": "adaptive"}, ["'screen_init_states' is not set"]),
        ({"label_granularity": "window"}, ["label_granularity", "weight_mode: binary"]),
        (ADAPTIVE | {"screen_init_states": [26, 28]}, ["screen_init_states", "eval_init_states"]),
        (ADAPTIVE | {"contend_init_states": [5, 9]}, ["contend_init_states", "train_init_states"]),
        (
            ADAPTIVE | {"contend_init_states": [14, 20]},
            ["screen_init_states", "contend_init_states"],
        ),
        (ADAPTIVE | {"screen_init_states": [15, 12]}, ["screen_init_states", "[15, 12]"]),
        (
            {"eval_protocol": "openpi", "eval_init_states": [25, 50]},
            ["'eval_init_states'", "[25, 50]", "eval_protocol: openpi runs [0, 50]"],
        ),
        (ADAPTIVE | {"eval_protocol": "openpi"}, ["'eval_schedule'", "'adaptive'"]),
        ({"eval_protocol": "openpi", "max_episode_length": 220}, ["'max_episode_length'"]),
    ],
)
def test_bad_values_name_the_key(bad, words):
    with pytest.raises(ConfigError) as err:
        validate(bad, source="my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml")
    for word in words:
        assert word in message


def test_env_switches_override_and_config_values_are_kept(monkeypatch, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_episode_length: 33\nn_video: 0\ncameras: true\n")
    monkeypatch.setenv("PI0_DISABLE_INIT_STATES", "1")
    monkeypatch.setenv("PI0_N_VIDEO", "3")
    monkeypatch.setenv("PI0_RENDER_SOURCE", "render")
    config = load_config(path)
    assert config["use_init_states"] is False
    assert config["n_video"] == 3
    assert config["render_source"] == "render"
    assert config["max_episode_length"] == 33  # never silently replaced by the suite default


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [0, 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_set_parses_yaml_values():
    assert _parse_settings(["tasks=[0, 3]", "cameras=true", "video_dir=out/v"]) == {
        "tasks": [0, 3],
        "cameras": True,
        "video_dir": "out/v",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_settings(["tasks"])


def test_numbers_from_the_snakemake_command_line_are_coerced():
    from ript.config import coerce_numbers

    raw = {"cfg_scale": ["1.0", "2"], "seed": "3", "alpha_uncond": [0.1], "suite": "libero_object"}
    out = coerce_numbers(raw)
    assert out == {
        "cfg_scale": [1.0, 2.0],
        "seed": 3,
        "alpha_uncond": [0.1],
        "suite": "libero_object",
    }
    assert coerce_numbers({"cfg_scale": ["big"]}) == {"cfg_scale": ["big"]}  # validation names it
    # a key that may also be null (type [array, "null"])
    assert coerce_numbers({"screen_init_states": ["4", "6"]}) == {"screen_init_states": [4, 6]}
