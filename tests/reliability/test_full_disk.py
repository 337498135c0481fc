"""A disk that fills up mid-write: the step exits with one line naming the file and why, and
leaves no partial file behind.

Two ways to fill a disk for real: a small tmpfs (ENOSPC; needs the right to mount, as root in
CI's container) and a per-process file size limit (RLIMIT_FSIZE: the kernel refuses the write
with EFBIG, which CPython surfaces as OSError because it ignores SIGXFSZ), available to any
user.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import run_ript
from micro import sft_args

pytestmark = pytest.mark.sim

REASONS = {"tmpfs": "No space left on device", "rlimit": "File too large"}


@contextlib.contextmanager
def small_disk(tmp_path: Path, kind: str, size: int) -> Iterator[tuple[Path, Callable | None]]:
    """A directory where writes fail past `size` bytes, and the preexec_fn that makes it so."""
    where = tmp_path / "disk"
    where.mkdir()
    if kind == "rlimit":
        yield where, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield where, None
    finally:
        subprocess.run(["umount", str(where)], check=True)


def assert_one_line_and_nothing_left(
    result: subprocess.CompletedProcess, path: str, kind: str, where: Path
) -> None:
    """One error line naming the file (`path`, or a path starting with it) and the reason."""
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert f"error: {path}" in errors[0] and f": cannot write ({REASONS[kind]}" in errors[0]
    assert "Traceback" not in result.stderr
    assert not list(where.rglob(".tmp-*")), list(where.rglob("*"))


@pytest.mark.parametrize("kind", ["tmpfs", "rlimit"])
def test_training_on_a_full_disk(micro_run, tmp_path, kind):
    with small_disk(tmp_path, kind, 1 << 20) as (where, preexec):  # the policy alone is 2.2 MB
        out = where / "base"
        settings = ("--set", "sft_steps=20", "--set", "checkpoint_every=10")
        result = run_ript(*sft_args(micro_run, out, *settings), preexec_fn=preexec)
        checkpoint = out / "checkpoints/step_0000010"
        assert_one_line_and_nothing_left(result, f"{checkpoint}:", kind, where)
        assert not (out / "checkpoints/step_0000010").exists() and not (out / "policy").exists()


# Only a real full disk here: a file size limit would also reach the simulator workers, whose
# robosuite appends to /tmp/robosuite.log at import (it outgrows any small limit in a session)
@pytest.mark.parametrize("kind", ["tmpfs"])
def test_collection_on_a_full_disk(micro_run, tmp_path, kind):
    with small_disk(tmp_path, kind, 64 << 10) as (where, preexec):  # the shard is ~130 KB
        out = where / "rollouts.h5"
        result = run_ript(
            "collect", "--config", str(micro_run / "micro.yaml"), "--policy", "expert",
            "--init-states", "0:1", "--rollouts-per-init", "2", "--max-episode-length", "60",
            "--out", str(out), "--no-progress", preexec_fn=preexec,
        )  # fmt: skip
        # the shard or its index, whichever the disk refuses first
        assert_one_line_and_nothing_left(result, f"{where / 'rollouts'}.", kind, where)
        assert sorted(p.name for p in where.iterdir()) == []  # no shard, no index, no lock
