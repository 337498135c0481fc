"""The import layering the code review asked for, checked in a fresh interpreter each: the
config check loads no model code, and the episode store, the expert and video writing need no
worker pool (nor torch)."""

import subprocess
import sys

import pytest


def modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(result.stdout.split())


def test_the_config_check_imports_no_model_code():
    loaded = modules_after_import("ript.config")
    assert not {m for m in loaded if m.startswith("ript.models")}, loaded
    assert "torch" not in loaded and "transformers" not in loaded


@pytest.mark.parametrize(
    "module", ["ript.data.episode_store", "ript.envs.expert", "ript.envs.video"]
)
def test_episode_modules_import_no_pool(module):
    loaded = modules_after_import(module)
    assert "ript.envs.pool" not in loaded
    assert "torch" not in loaded
