"""A real single-node Slurm for the job-script tests: munged, slurmctld and slurmd started by hand
(no systemd) from a config in a temporary folder. Needs root and Debian's slurmctld, slurmd,
slurm-client and munge packages (.ci/run installs them); `unavailable()` says why not otherwise."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


def unavailable() -> str | None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"Slurm not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd slurm-client munge"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    return None


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "Cluster":
        host = socket.gethostname().split(".")[0]
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join([
            "ClusterName=rlhftest", f"SlurmctldHost={host}(127.0.0.1)", "AuthType=auth/munge",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "MpiDefault=none", "ReturnToService=2", "MailProg=/bin/true", "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "SlurmctldPort=16817", "SlurmdPort=16818",
            # a failed parent cancels its dependents (else they pend forever); requeue in ~10 s, not ~140
            "DependencyParameters=kill_invalid_depend", "AuthInfo=cred_expire=10",
            "SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1",
            "JobRequeue=1", "KillWait=30", "InactiveLimit=0",
            f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName=debug Nodes={node.split()[0].split('=')[1]} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        self._munge()
        self.procs.append(subprocess.Popen(["slurmctld", "-D", "-c", "-f", str(self.conf)], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)
        self.procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(self.conf)], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.time() + 60
        while "idle" not in self.run("sinfo", "-h", "-o", "%T", check=False).stdout:
            if time.time() > deadline:
                raise RuntimeError("Slurm did not come up: " + (self.root / "log" / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.5)
        return self

    def _munge(self) -> None:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0:
            return
        munge = pwd.getpwnam("munge")
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chown(run_dir, munge.pw_uid, munge.pw_gid)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True)
            os.chown(key, munge.pw_uid, munge.pw_gid)
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def state(self, job: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...), once gone from
        the queue from scontrol's memory of it."""
        out = self.run("scontrol", "show", "job", job, check=False).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def wait(self, jobs: list[str], timeout: float = 900) -> dict[str, str]:
        deadline = time.time() + timeout
        while True:
            states = {j: self.state(j) for j in jobs}
            if all(s not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED") for s in states.values()):
                return states
            if time.time() > deadline:
                raise TimeoutError(f"jobs still not done after {timeout} s: {states}")
            time.sleep(1)

    def stop(self) -> None:
        self.run("scancel", "--user", "root", check=False)
        deadline = time.time() + 60
        while self.run("squeue", "-h", check=False).stdout.strip() and time.time() < deadline:
            time.sleep(1)
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
