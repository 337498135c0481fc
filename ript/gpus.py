"""Which GPU a single-process job takes on a machine with several.

Snakemake runs several jobs at once on one machine and says nothing about which GPU each
should use; left alone, every job takes the first. On the two-H200 machine the GPU
experiment's jobs all shared GPU 0 (90-100% busy while five collection jobs and an evaluation
ran) while GPU 1 idled (docs/results/gpu_object/run2/usage.log). So each job registers in a
directory shared by the machine's jobs and takes the GPU with the fewest live registrations.
Where one GPU is visible (SLURM's allocation, CUDA_VISIBLE_DEVICES) this always gives 0, and
torchrun's processes keep their LOCAL_RANK.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import os
import tempfile
from pathlib import Path

REGISTRY_ENV = "RIPT_GPU_REGISTRY"


def registry_dir() -> Path:
    default = Path(tempfile.gettempdir()) / f"ript-gpus-{os.getuid()}"
    return Path(os.environ.get(REGISTRY_ENV) or default)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def claim_gpu(count: int, registry: Path | None = None, pid: int | None = None) -> int:
    """The least-claimed of `count` GPUs (the lowest index on a tie), claimed for process
    `pid` (default: this one) until it exits; claims of processes that died are dropped."""
    if count <= 1:
        return 0
    registry = registry or registry_dir()
    registry.mkdir(parents=True, exist_ok=True)
    pid = os.getpid() if pid is None else pid
    with open(registry / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        claims = [0] * count
        for entry in registry.glob("gpu*-*"):
            index, owner = (int(part) for part in entry.name[3:].split("-"))
            if not _alive(owner):
                entry.unlink(missing_ok=True)
            elif index < count:
                claims[index] += 1
        index = claims.index(min(claims))
        claim = registry / f"gpu{index}-{pid}"
        claim.touch()
    if pid == os.getpid():
        atexit.register(claim.unlink, missing_ok=True)
    return index


@functools.cache
def process_gpu(count: int) -> int:
    """`claim_gpu` for this process, once: every later call gives the same GPU."""
    return claim_gpu(count)


def egl_device_id(cuda_index: int, visible: str | None = None) -> str | None:
    """The device id EGL knows CUDA device `cuda_index` by, for MUJOCO_EGL_DEVICE_ID.

    EGL enumerates every GPU of the machine, CUDA only those in CUDA_VISIBLE_DEVICES
    (`visible`, default: this process's), renumbered from 0; so the simulator workers of a
    job that runs its policy on GPU 1 render on GPU 0 unless told otherwise (all renderers of
    the vision run sat on the first of two GPUs). None where the mapping is unknown: devices
    named by UUID or MIG id. Assumes EGL and CUDA order the GPUs alike, which holds for one
    model of GPU (CUDA's default order ties by PCI bus, EGL's follows it).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is None:
        return str(cuda_index)
    ids = [part.strip() for part in visible.split(",")]
    if cuda_index < len(ids) and ids[cuda_index].isdigit():
        return ids[cuda_index]
    return None
