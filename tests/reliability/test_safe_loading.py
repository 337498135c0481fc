"""Nothing in a checkpoint or a config is ever executed: weights load through safetensors,
trainer state through `torch.load(weights_only=True)`, YAML through `safe_load`, and no
`trust_remote_code` anywhere."""

from __future__ import annotations

import ast
import importlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from micro import ROOT

from ript.config import ConfigError, load_config
from ript.models.policy import Policy

pytestmark = pytest.mark.sim


class Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_trainer_state_holding_code_is_refused_and_never_run(micro_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(micro_run / "results/micro/base", out)
    marker = tmp_path / "pwned"
    (state,) = out.glob("checkpoints/step_*/trainer_state.pt")
    torch.save({"step": 1, "optimizer": Payload(marker)}, state)
    res = micro_run / "results/micro"
    result = subprocess.run(
        [
            "ript",
            "train",
            "--mode",
            "sft",
            "--demos",
            str(res / "demos/task0.h5"),
            "--norm-stats",
            str(res / "norm_stats.json"),
            "--out",
            str(out),
            "--resume",
            "--config",
            str(micro_run / "micro.yaml"),
            "--no-progress",
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and str(state) in errors[0] and "weights_only" in errors[0]
    assert not marker.exists()


def test_checkpoint_code_and_pickled_weights_are_never_run(micro_run, tmp_path):
    ckpt = tmp_path / "policy"
    shutil.copytree(micro_run / "results/micro/base/policy", ckpt)
    marker = tmp_path / "pwned"
    (ckpt / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    config = json.loads((ckpt / "config.json").read_text())
    auto_map = {"AutoConfig": "evil.Evil", "AutoModel": "evil.Evil"}
    (ckpt / "config.json").write_text(json.dumps(config | {"auto_map": auto_map}))
    Policy.from_pretrained(ckpt)  # the auto_map is ignored: our own classes load it
    assert not marker.exists()

    with (ckpt / "model.safetensors").open("wb") as f:  # weights replaced by a pickle
        pickle.dump(Payload(marker), f)
    with pytest.raises(Exception, match="safetensors|header|deserializ"):
        Policy.from_pretrained(ckpt)
    assert not marker.exists()


def test_yaml_config_cannot_construct_objects(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"experiment: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not marker.exists()


def test_source_loads_nothing_unsafely():
    """Every torch.load passes weights_only=True, every yaml.load a SafeLoader; nothing
    passes trust_remote_code."""
    for path in sorted((ROOT / "ript").rglob("*.py")):
        module = importlib.import_module(
            ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        )
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            assert "trust_remote_code" not in keywords, f"{path}: {ast.unparse(node)}"
            if name in ("torch.load", "pickle.load", "pickle.loads"):
                assert keywords.get("weights_only") == "True", f"{path}: {ast.unparse(node)}"
            if name == "yaml.load":
                loader = getattr(module, keywords.get("Loader", "?"), None)
                assert isinstance(loader, type) and issubclass(loader, yaml.SafeLoader), (
                    f"{path}: {ast.unparse(node)}"
                )
