"""`snakemake --profile slurm sweep` on a real single-node SLURM cluster on localhost.

Installs Debian's slurm-wlm and munge when absent (root only; CI runs as root), starts munged,
slurmctld and slurmd with a private config (SLURM_CONF), runs the sweep target of the micro
config through the repository's SLURM profile and stops the daemons it started, by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from micro import MICRO, ROOT

pytestmark = [pytest.mark.sim, pytest.mark.slurm]

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by ript's tests/test_slurm.py"
SLURM_CONF = """\
ClusterName=ripttest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmdSpoolDir={d}/slurmd
StateSaveLocation={d}/state
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmUser=root
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_slurm_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        pytest.skip("needs root to install slurm-wlm and munge")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "slurm-wlm", "munge"]):
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=900)


def start(cmd: list[str], env: dict, pid_file: Path, log: Path) -> int:
    """Start a daemon and return its pid once it has written its pid file.

    The daemons fork: the command returns before the child writes the file, so it is polled.
    """
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=60)
    for _ in range(300):
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(pid_file.read_text())
        time.sleep(0.1)
    tail = log.read_text()[-2000:] if log.exists() else f"(no {log})"
    pytest.fail(f"{cmd[0]} wrote no {pid_file} within 30 s; its log ends:\n{tail}")


@pytest.fixture
def cluster(tmp_path_factory):
    """The environment of a running single-node cluster; its daemons stopped afterwards."""
    ensure_slurm_installed()
    d = tmp_path_factory.mktemp("slurm")
    (d / "slurmd").mkdir()
    (d / "state").mkdir()
    host = socket.gethostname()
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    # Job steps (srun inside a batch job) read the default path, not SLURM_CONF.
    conf = SYSTEM_CONF
    if conf.exists() and MARKER not in conf.read_text():
        pytest.skip(f"{conf} belongs to a real SLURM installation; not replacing it")
    conf.write_text(
        MARKER
        + "\n"
        + SLURM_CONF.format(
            host=host,
            d=d,
            cpus=os.cpu_count(),
            mem_mb=min(20_000, mem_mb - 2_000),
            ctld_port=free_port(),
            d_port=free_port(),
        )
    )
    env = os.environ | {"SLURM_CONF": str(conf)}
    pids: list[int] = []
    munge_pid = Path("/run/munge/munged.pid")
    try:
        if not munge_pid.exists():
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge")
            munge_log = Path("/var/log/munge/munged.log")
            pids.append(start(["munged", "--force"], env, munge_pid, munge_log))
        pids.append(start(["slurmctld"], env, d / "slurmctld.pid", d / "slurmctld.log"))
        pids.append(start(["slurmd"], env, d / "slurmd.pid", d / "slurmd.log"))
        for _ in range(60):
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout.strip()
            if state == "idle":
                break
            time.sleep(1)
        else:
            pytest.fail(f"SLURM node never became idle ({state!r}); see {d}")
        yield env
    finally:
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
        conf.unlink(missing_ok=True)


def test_sweep_runs_through_the_slurm_profile(cluster, tmp_path):
    micro = tmp_path / "micro.yaml"
    micro.write_text(yaml.safe_dump(MICRO))
    result = subprocess.run(
        [
            "snakemake",
            "--profile",
            str(ROOT / "slurm"),
            "sweep",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(micro),
            "--slurm-init-seconds-before-status-checks",
            "2",
            # no accounting database here: sacct cannot answer, squeue can (MinJobAge=600)
            "--slurm-status-command",
            "squeue",
            "--jobs",
            "4",
        ],
        env=cluster,
        capture_output=True,
        text=True,
        timeout=1800,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # every job of the micro sweep went through sbatch (`sweep` itself is local): demos,
    # norm_stats, bootstrap, a collect per init state, label, train, 3 evaluations, tables, plots
    start, stop = MICRO["train_init_states"]
    jobs = 10 + (stop - start) // MICRO["collect_init_chunk"]
    assert output.count("has been submitted with SLURM jobid") == jobs, output[-4000:]
    res = tmp_path / "results/micro"
    table = pd.read_csv(res / "tables/sweep.csv")
    assert table["policy"].tolist() == ["base", "cfg", "cfg"]
    assert (res / "plots/success_vs_cfg.png").is_file()
