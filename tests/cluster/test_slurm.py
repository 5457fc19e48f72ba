"""jobs/ on a real single-node Slurm (tests/cluster/slurm.py starts it): the submit script chains stages
with afterok, a failed stage cancels the rest, --dry-run submits nothing, a stage runs as 2
ranks through srun, and a stage signalled with USR1 checkpoints, is requeued and resumes."""

import json
import re
import subprocess
import time

import pytest

from tests.cluster.slurm import Cluster, unavailable
from tests.conftest import ROOT

# time limit per test: a real Slurm cluster's start and queued jobs
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200), pytest.mark.distributed,
              pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

TWO_RANKS = "--ntasks-per-node 2 --cpus-per-task 1"
SMALL = ["data.toy.num_prompts=1000", "sft.max_steps=6", "sft.gold_eval_prompts=8", "rm.max_steps=4",
         "rm.normalize_max_demonstrations=32", "ppo.updates=2", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4",
         "ppo.eval_prompts=8", "ppo.critic_warmup_updates=0", "compare.prompts=8", "compare.samples_per_prompt=1",
         "compare.bootstrap_resamples=50"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def submit(slurm, *args, stages=None, sbatch=TWO_RANKS, dry_run=False):
    """stages=None: submit.sh's default, the registry's pipeline (`rlhf --list-stages`)."""
    cmd = ["jobs/submit.sh", *(["--stages", stages] if stages else []),
           "--sbatch", f"{sbatch} --output {slurm.root}/%x-%j.out"]
    cmd += ["--dry-run"] if dry_run else []
    env = {**slurm.env, "GPUS_PER_NODE": "0", "RLHF_LAUNCHER": "srun"}
    out = subprocess.run([*cmd, *SMALL, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def job_ids(stdout: str) -> dict[str, str]:
    return dict(line.split(": ") for line in stdout.strip().splitlines())


def log_of(slurm, stage: str, job: str) -> str:
    return (slurm.root / f"rlhf-{stage}-{job}.out").read_text()


def test_dry_run_prints_the_chain_and_submits_nothing(slurm, runs):
    out = submit(slurm, f"runs_dir={runs}", dry_run=True)
    lines = out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("sbatch ") for line in lines)
    assert "afterok" not in lines[0] and all("afterok:<job id of" in line for line in lines[1:])
    assert slurm.run("squeue", "-h").stdout.strip() == ""


def test_chain_runs_every_stage_as_two_ranks_after_the_one_before(slurm, runs):
    jobs = job_ids(submit(slurm, f"runs_dir={runs}", "run=chain"))
    assert list(jobs) == ["sft", "rm", "ppo", "compare"]
    dependency = slurm.run("scontrol", "show", "job", jobs["rm"]).stdout
    assert f"afterok:{jobs['sft']}" in dependency
    states = slurm.wait(list(jobs.values()), timeout=1200)
    assert set(states.values()) == {"COMPLETED"}, {s: (states[j], log_of(slurm, s, j)[-2000:]) for s, j in jobs.items()}
    for stage in ("sft", "rm", "ppo"):  # each ran as 2 ranks, the srun tasks
        manifest = json.loads((runs / "chain" / stage / "manifest.json").read_text())
        report = manifest["distributed"]["policy"] if stage == "ppo" else manifest["distributed"]
        assert manifest["status"] == "completed" and report["world_size"] == 2
        assert [r["rank"] for r in report["ranks"]] == [0, 1]
    assert (runs / "chain" / "compare" / "report.md").exists()


def test_a_failed_stage_cancels_the_stages_after_it(slurm, runs):
    jobs = job_ids(submit(slurm, f"runs_dir={runs}", "run=broken", "sft.init_from=/nonexistent/model",
                          stages="sft rm ppo"))
    states = slurm.wait(list(jobs.values()), timeout=600)
    assert states[jobs["sft"]] == "FAILED"
    assert states[jobs["rm"]] == "CANCELLED" and states[jobs["ppo"]] == "CANCELLED"


def test_usr1_checkpoints_requeues_and_the_job_resumes_from_that_checkpoint(slurm, runs):
    chain = runs / "chain"
    jobs = job_ids(submit(slurm, f"runs_dir={runs}", "run=preempted", f"ppo.policy_from={chain}/sft/final",
                          f"ppo.reward_from={chain}/rm/final", "ppo.updates=8", "ppo.save_every_updates=2",
                          stages="ppo"))
    job = jobs["ppo"]
    first = runs / "preempted" / "ppo" / "checkpoints" / "update_2"
    deadline = time.time() + 600
    while not first.exists():
        assert slurm.state(job) in ("PENDING", "RUNNING"), log_of(slurm, "ppo", job)[-3000:]
        assert time.time() < deadline
        time.sleep(0.5)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    states = slurm.wait([job], timeout=1200)
    log = log_of(slurm, "ppo", job)
    assert states[job] == "COMPLETED", log[-3000:]
    assert "USR1, asking the stage to checkpoint" in log and f"requeueing job {job}" in log
    written = re.search(r"stopped by SIGTERM after writing \S*update_(\d+)", log)
    resumed = re.search(r"resumed from \S*update_(\d+)", log)
    assert written and resumed, log[-3000:]
    assert resumed.group(1) == written.group(1)  # from the checkpoint the signal wrote
    assert "start 2," in log  # the second start of the job
    manifest = json.loads((runs / "preempted" / "ppo" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["metrics"]["updates"] == 8


def test_a_sweep_goes_to_slurm_through_the_submitit_launcher(slurm, runs, run_cli):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    run_cli("-m", "hydra/launcher=slurm", "stage=prepare", "run=sweep_a,sweep_b", f"runs_dir={runs}",
            "data.toy.num_prompts=500", "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=null",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", cwd=ROOT, env=slurm.env, timeout=600)
    for name in ("sweep_a", "sweep_b"):  # each point a Slurm job of its own, each its own run
        manifest = json.loads((runs / name / "prepare" / "manifest.json").read_text())
        assert manifest["status"] == "completed" and manifest["run"] == name
