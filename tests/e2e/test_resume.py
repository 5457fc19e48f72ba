"""Killed or preempted mid-training, each stage resumes from its last complete checkpoint (not
from scratch) and ends where an uninterrupted run with the same seed ends."""

import json
import os
import re
import signal
import subprocess
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import TOY_DATA, TOY_RM, TOY_SFT, cli_command, copy_toy_sft_rm, run_cli

pytestmark = pytest.mark.slow

DATA, SFT, RM = TOY_DATA, TOY_SFT, TOY_RM  # the session's trained toy SFT and RM (tests/conftest.py)
PPO = ["stage=ppo", "ppo.updates=12", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1",
       "ppo.save_every_updates=3", "ppo.eval_prompts=8", "ppo.critic_warmup_updates=0", "ppo.learning_rate=1e-4"]
CHECKPOINT = {"sft": "checkpoint-{}", "rm": "checkpoint-{}", "ppo": "update_{}"}


def run(cwd, *args):
    out = run_cli(*DATA, *args, cwd=cwd, timeout=600)
    return out.stdout + out.stderr


def interrupt(cwd, stage, args, sig, after):
    """Starts the stage, and once its checkpoint number `after` is complete sends `sig`."""
    marker = {"sft": "COMPLETE", "rm": "COMPLETE", "ppo": "trainer_state.pt"}[stage]
    done = cwd / "runs" / "cut" / stage / "checkpoints" / CHECKPOINT[stage].format(after) / marker
    proc = subprocess.Popen(cli_command(*DATA, "run=cut", *args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not done.exists():
        assert proc.poll() is None, f"{stage} ended before checkpoint {after}: {proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no {done} after 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def resumed_step(log: str) -> int:
    found = re.search(r"resum\w* from \S*(?:checkpoint-|update_)(\d+)", log)
    assert found, log[-3000:]
    return int(found.group(1))


def final(cwd, run_name, stage):
    return load_file(cwd / "runs" / run_name / stage / "final" / "model.safetensors")


def initial_tiny_model():
    from rlhf.config import ModelConfig
    from rlhf.models import build_tiny_model, build_tiny_tokenizer

    return build_tiny_model(ModelConfig(), build_tiny_tokenizer()).state_dict()


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def root(tmp_path_factory, toy_sft_rm):
    """Uninterrupted SFT -> RM -> PPO ("whole": the session's SFT and RM, then PPO); the
    interrupted runs ("cut") start from the same SFT and RM."""
    root = tmp_path_factory.mktemp("resume")
    copy_toy_sft_rm(toy_sft_rm, root)
    run(root, "run=whole", *PPO)
    return root


@pytest.mark.parametrize("stage,args,after", [("sft", SFT, 20), ("rm", RM, 20), ("ppo", PPO, 6)])
def test_killed_stage_resumes_from_its_last_checkpoint_and_ends_like_an_uninterrupted_run(root, stage, args, after):
    if stage != "sft":  # the same starting point as the uninterrupted run
        args = [*args, f"{stage}.{'init_from' if stage == 'rm' else 'policy_from'}={root}/runs/whole/sft/final"]
        if stage == "ppo":
            args.append(f"ppo.reward_from={root}/runs/whole/rm/final")
    code, out = interrupt(root, stage, args, signal.SIGKILL, after)
    assert code == -signal.SIGKILL
    assert not (root / "runs" / "cut" / stage / "final").exists()
    out = run(root, "run=cut", *args)
    assert resumed_step(out) >= after  # from the last complete checkpoint, not from scratch
    whole, cut = final(root, "whole", stage), final(root, "cut", stage)
    start = final(root, "whole", "sft") if stage != "sft" else initial_tiny_model()
    moved = max_diff({k: v for k, v in whole.items() if k in start}, start)
    assert moved > 1e-3 and max_diff(whole, cut) < 0.01 * moved, (max_diff(whole, cut), moved)




@pytest.mark.parametrize("stage,args", [("sft", SFT), ("ppo", PPO)])
def test_sigusr1_checkpoints_exits_for_requeue_and_the_rerun_continues_from_there(root, stage, args):
    """Slurm's preemption warning: a checkpoint at the end of the current step, exit code 3."""
    if stage == "ppo":
        args = [*args, f"ppo.policy_from={root}/runs/whole/sft/final", f"ppo.reward_from={root}/runs/whole/rm/final"]
    run_dir = root / "runs" / "cut" / stage
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    code, out = interrupt(root, stage, args, signal.SIGUSR1, {"sft": 10, "ppo": 3}[stage])
    assert code == 3, out[-3000:]
    assert "stopped by SIGUSR1" in out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "preempted"
    out = run(root, "run=cut", *args)
    step = resumed_step(out)
    assert step > 0 and f"{step}" in manifest["error"]  # from the checkpoint the signal wrote
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["metrics"]["steps" if stage == "sft" else "updates"] == (60 if stage == "sft" else 12)
