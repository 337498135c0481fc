"""Docs and style that CI keeps true."""

import subprocess
from pathlib import Path

import yaml

from ript.config import load_schema

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_key_is_documented_with_its_default():
    readme = (ROOT / "config/README.md").read_text().splitlines()
    for key, spec in load_schema()["properties"].items():
        rows = [line for line in readme if line.startswith(f"| `{key}` |")]
        assert len(rows) == 1, f"config/README.md needs one row for {key!r}"
        default_cell = rows[0].split("|")[2].strip()
        shown = yaml.safe_dump(spec["default"], default_flow_style=True).strip()
        shown = shown.removesuffix("\n...").strip()
        assert default_cell == f"`{shown}`", f"{key}: README says {default_cell}, schema {shown}"


def test_schema_is_shared_with_the_workflow():
    assert (ROOT / "workflow/schemas/config.schema.yaml").resolve() == (
        ROOT / "ript/config.schema.yaml"
    ).resolve()


def test_ruff_is_clean():
    result = subprocess.run(["ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    result = subprocess.run(
        ["ruff", "format", "--check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
