"""Typed settings: every config key has one home, sections are frozen, and the rules' key
lists come from them."""

from __future__ import annotations

import dataclasses

import pytest

from ript.config import load_schema, validate
from ript.settings import (
    Collection,
    Inference,
    Section,
    Simulation,
    Videos,
    section_keys,
)

# Keys only the workflow reads (the Snakefile and the steps that need no config file): the
# grid, rounds, how episodes split into jobs, the selection schedule, training's GPUs and the
# pretrained start.
WORKFLOW_KEYS = {
    "collect_init_chunk", "demos_per_init", "pretrained_path", "train_gpus",
    "rounds", "eval_schedule", "screen_init_states", "contend_init_states",
    "select_rollouts_per_init", "max_contenders",
}  # fmt: skip


def all_sections() -> list[type[Section]]:
    return Section.__subclasses__()


def test_every_schema_key_is_in_a_section_or_read_by_the_workflow_alone():
    schema = set(load_schema()["properties"])
    in_sections = {key for section in all_sections() for key in section.config_keys()}
    assert in_sections <= schema, in_sections - schema
    assert schema - in_sections == WORKFLOW_KEYS


def test_sections_are_frozen_and_hold_tuples():
    sim = Simulation.of(validate({"tasks": [0, 3], "train_init_states": [0, 5]}))
    assert sim.tasks == (0, 3) and sim.train_init_states == (0, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sim.seed = 1
    assert sim.as_dict()["tasks"] == (0, 3)


def test_a_rules_keys_are_its_sections_keys_once_in_order():
    keys = section_keys(Simulation, Videos, Inference, Collection, exclude=["num_parallel_envs"])
    assert keys[: len(Simulation.config_keys()) - 1] == [
        k for k in Simulation.config_keys() if k != "num_parallel_envs"
    ]
    assert keys[-1] == "rollouts_per_init" and len(keys) == len(set(keys))
    assert "num_parallel_envs" not in keys
