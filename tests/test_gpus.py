import os
import subprocess
import sys

import torch

from ript.gpus import claim_gpu, egl_device_id
from ript.rollouts import rendering_gpu


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_jobs_spread_over_the_gpus_and_dead_claims_are_dropped(tmp_path):
    here, parent = os.getpid(), os.getppid()
    assert claim_gpu(2, tmp_path, pid=parent) == 0
    assert claim_gpu(2, tmp_path, pid=here) == 1  # GPU 0 is taken by a live process
    gone = dead_pid()
    (tmp_path / f"gpu0-{gone}").touch()  # a job that died without removing its claim
    (tmp_path / f"gpu1-{gone + 10**7}").touch()
    assert claim_gpu(3, tmp_path, pid=here) == 2
    assert claim_gpu(2, tmp_path, pid=parent) in (0, 1)
    assert not (tmp_path / f"gpu0-{gone}").exists()


def test_one_visible_gpu_is_always_the_first(tmp_path):
    assert claim_gpu(1, tmp_path) == 0 and not list(tmp_path.iterdir())


def test_a_claim_ends_with_its_process(tmp_path):
    code = (
        "from pathlib import Path; from ript.gpus import claim_gpu; "
        f"print(claim_gpu(2, Path({str(tmp_path)!r})))"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    second = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert (
        first.stdout.strip() == second.stdout.strip() == "0"
    )  # the first one's claim left with it
    assert not list(tmp_path.glob("gpu*"))


def test_renderers_take_the_policys_gpu_by_its_machine_wide_id(monkeypatch):
    assert egl_device_id(1, "2,3") == "3" and egl_device_id(0, " 5 , 6") == "5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert egl_device_id(1) == "1"  # every GPU visible: the numbering is the machine's
    assert egl_device_id(0, "GPU-8f2c4d1e") is None  # UUIDs: left to robosuite
    assert egl_device_id(2, "0,1") is None

    class OnDevice:
        def __init__(self, device):
            self.device = device

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert rendering_gpu(OnDevice(torch.device("cuda", 1))) == "6"
    assert rendering_gpu(OnDevice(torch.device("cpu"))) is None
    assert rendering_gpu(object()) is None  # the scripted expert has no device
