"""SFT, RM, PPO and GRPO under DeepSpeed ZeRO-2 and ZeRO-3 (and DPO under ZeRO-2) on 2 CPU ranks
(torchrun, gloo), as a cluster runs them: `torchrun --nproc_per_node 2 -m rlhf.cli stage=... deepspeed=zero3`.

Each launch has a timeout, after which torchrun is stopped with its ranks, so a rank that
crashes or hangs cannot stall the suite (torchrun itself stops every rank when one fails)."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import cli_command, manifest

# time limit per test: 2-rank runs under ZeRO
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.distributed]

DATA = ["data.toy.num_prompts=3000", "logger.every_steps=1"]
SFT = ["stage=sft", "sft.max_steps=2", "sft.eval_every_steps=0", "sft.gold_eval_prompts=8", "sft.save_every_steps=1",
       "sft.warmup=0", "sft.lr_scheduler=constant", "sft.learning_rate=1e-3"]
RM = ["stage=rm", "rm.max_steps=2", "rm.per_device_batch_size=4", "rm.eval_every_steps=0", "rm.save_every_steps=0",
      "rm.normalize_max_demonstrations=32"]
PPO = ["stage=ppo", "ppo.updates=2", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4", "ppo.micro_batch_size=1",
       "ppo.ppo_epochs=1", "ppo.eval_prompts=8", "ppo.save_every_updates=1", "ppo.critic_warmup_updates=0",
       "ppo.learning_rate=1e-3"]


def launch(cwd, *args, ranks=2, timeout=300):
    cmd = cli_command(*DATA, *args, ranks=ranks)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun passes SIGTERM on to its ranks (each in a session of its own)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"{' '.join(args)} did not finish in {timeout} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def weights(root, run, stage):
    return load_file(root / "runs" / run / stage / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """zero2 and zero3: SFT -> RM -> PPO, 2 steps each on 2 ranks; and SFT alone in one process
    on the same global batch (8 = 2 ranks x 4)."""
    root = tmp_path_factory.mktemp("deepspeed")
    for zero in ("zero2", "zero3"):
        for stage in (SFT + ["sft.per_device_batch_size=4"], RM, PPO):
            launch(root, f"run={zero}", f"deepspeed={zero}", *stage)
    launch(root, "run=single", *SFT, "sft.per_device_batch_size=8", ranks=1)
    return root


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_sft_first_steps_equal_a_single_process_run_on_the_same_global_batch(root, zero):
    single, sharded = weights(root, "single", "sft"), weights(root, zero, "sft")
    from rlhf.config import ModelConfig
    from rlhf.models import build_tiny_model, build_tiny_tokenizer

    init = build_tiny_model(ModelConfig(), build_tiny_tokenizer()).state_dict()
    moved = max((single[k] - init[k]).abs().max().item() for k in single)
    differ = max((single[k] - sharded[k]).abs().max().item() for k in single)
    assert moved > 1e-3  # two steps really moved the weights...
    assert differ < 0.01 * moved  # ...and the 2-rank run moved them the same way (within 1% of the move)
    assert set(single) == set(sharded)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_state_is_really_sharded_across_the_two_ranks(root, zero):
    reports = [manifest(root / "runs" / zero, "sft")["distributed"], manifest(root / "runs" / zero, "rm")["distributed"],
               *manifest(root / "runs" / zero, "ppo")["distributed"].values()]
    for report in reports:
        assert report["zero_stage"] == int(zero[-1]) and report["world_size"] == 2
        ranks = report["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        for r in ranks:
            if r["trainable_numel"]:  # Adam keeps 2 values per parameter; each rank holds about half
                assert 0.4 * 2 * r["trainable_numel"] < r["optimizer_state_numel"] < 0.6 * 2 * r["trainable_numel"]
            if zero == "zero3":  # parameters too, frozen reference and reward included
                assert r["param_numel_held"] < 0.6 * r["param_numel_total"]
            else:
                assert r["param_numel_held"] == r["param_numel_total"]


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_every_stage_learns_and_its_consolidated_final_loads_in_a_fresh_process(root, zero):
    sft, rm, ppo = (manifest(root / "runs" / zero, s) for s in ("sft", "rm", "ppo"))
    assert all(m["status"] == "completed" for m in (sft, rm, ppo))
    assert sft["metrics"]["steps"] == 2 and rm["metrics"]["steps"] == 2 and ppo["metrics"]["updates"] == 2
    # PPO moved the policy away from SFT
    before, after = weights(root, zero, "sft"), weights(root, zero, "ppo")
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 1e-5
    code = f"""
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
runs = {str(root / "runs" / zero)!r}
for cls, stage in ((AutoModelForCausalLM, "sft"), (AutoModelForSequenceClassification, "rm"), (AutoModelForCausalLM, "ppo")):
    model = cls.from_pretrained(f"{{runs}}/{{stage}}/final")
    saved = load_file(f"{{runs}}/{{stage}}/final/model.safetensors")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items()), stage
    assert all(v.numel() > 0 and torch.isfinite(v).all() for v in saved.values()), stage
    out = model(input_ids=torch.tensor([[5, 6, 7]]))
    assert torch.isfinite(out.logits).all()
print("loaded")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "loaded" in out.stdout, out.stderr[-3000:]


def test_zero3_checkpoints_resume_sft_and_ppo(root):
    out = launch(root, "run=zero3", "deepspeed=zero3", *SFT, "sft.per_device_batch_size=4", "sft.max_steps=3")
    assert "resuming from" in out and "checkpoint-2" in out
    assert manifest(root / "runs" / "zero3", "sft")["metrics"]["steps"] == 3
    out = launch(root, "run=zero3", "deepspeed=zero3", *PPO, "ppo.updates=3")
    assert "resumed from" in out and "update_2 at update 2" in out
    assert manifest(root / "runs" / "zero3", "ppo")["metrics"]["updates"] == 3
    # DeepSpeed's own checkpoint: every rank's shard of the optimizer state
    shards = sorted(p.name for p in (root / "runs" / "zero3" / "ppo" / "checkpoints" / "update_3" / "policy").iterdir())
    assert any("rank_0" in s and "optim" in s for s in shards) and any("rank_1" in s and "optim" in s for s in shards)


def test_a_checkpoint_from_another_zero_stage_is_refused_by_name(root, run_cli):
    proc = run_cli(*DATA, "run=zero3", "deepspeed=none", *PPO, "ppo.updates=9", cwd=root, expect=2, timeout=300)
    assert "written with DeepSpeed ZeRO setting 'zero3'" in proc.stdout + proc.stderr


DPO = ["stage=dpo", "dpo.per_device_batch_size=2", "dpo.save_every_steps=1", "dpo.save_total_limit=10",
       "dpo.eval_every_steps=0", "dpo.gold_eval_prompts=8", "dpo.train_accuracy_pairs=16", "dpo.learning_rate=1e-3",
       "dpo.lr_scheduler=constant", "dpo.warmup=0"]


def test_zero2_dpo_trains_on_two_ranks_and_resumes_after_sigkill(root):
    """2 steps, killed once checkpoint-2 is complete, then rerun to 4 steps: the rerun continues
    from checkpoint-2 (not from scratch) on both ranks."""
    import time

    args = [*DATA, "run=zero2", "deepspeed=zero2", *DPO, "dpo.max_steps=4"]
    done = root / "runs" / "zero2" / "dpo" / "checkpoints" / "checkpoint-2" / "COMPLETE"
    proc = subprocess.Popen(cli_command(*args, ranks=2), cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not done.exists():
        assert proc.poll() is None, f"dpo ended before checkpoint 2: {proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no {done} after 300 s"
        time.sleep(0.05)
    # SIGKILL to torchrun and to every rank: the ranks run in sessions of their own, so killing
    # torchrun's process group alone would leave them to finish the job
    import psutil

    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    proc.communicate(timeout=120)
    assert not (root / "runs" / "zero2" / "dpo" / "final").exists()

    out = launch(root, "run=zero2", "deepspeed=zero2", *DPO, "dpo.max_steps=4")
    resumed = [int(line.rsplit("checkpoint-", 1)[1].split()[0]) for line in out.splitlines()
               if "resuming from" in line and "checkpoint-" in line]
    assert resumed and resumed[0] >= 2, out[-3000:]
    m = manifest(root / "runs" / "zero2", "dpo")
    assert m["status"] == "completed" and m["metrics"]["steps"] == 4
    assert m["distributed"]["zero_stage"] == 2 and m["distributed"]["world_size"] == 2
    before, after = weights(root, "zero2", "sft"), weights(root, "zero2", "dpo")
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 1e-5


# (with gradient checkpointing: recomputation under ZeRO-2's and ZeRO-3's hooks)
GRPO = ["stage=ppo", "algo=grpo", "ppo.updates=3", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4",
        "ppo.micro_batch_size=1", "ppo.eval_prompts=8", "ppo.save_every_updates=1", "ppo.learning_rate=1e-3",
        "model.gradient_checkpointing=true"]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to torchrun and to every rank (each in a session of its own, so killing torchrun's
    process group alone would leave them to finish the job)."""
    import psutil

    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    proc.wait(timeout=120)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_grpo_trains_on_two_ranks_without_a_critic_and_resumes_after_sigkill(root, zero):
    """GRPO (algo=grpo: no critic) from this module's SFT policy and RM (under ZeRO-3 as an
    ensemble of two, whose members are sharded engines too), 3 updates with a checkpoint
    after each, killed once update_1 is complete, then rerun: the rerun continues from the newest
    complete checkpoint (not from scratch), on the prompts after the ones already used, and ends
    with a policy that moved and no value model anywhere."""
    import time

    import torch

    run = f"grpo_{zero}"
    rm = root / "runs" / zero / "rm" / "final"
    # under ZeRO-3 the reward is an ensemble (the RM twice): each member its own sharded engine
    reward = [f"ppo.reward_from={rm}"] if zero == "zero2" else ["reward=ensemble", f"reward.members=[{rm},{rm}]"]
    inputs = [f"ppo.policy_from={root / 'runs' / zero / 'sft' / 'final'}", *reward]
    args = [f"run={run}", f"deepspeed={zero}", *GRPO, *inputs]
    stage = root / "runs" / run / "ppo"
    checkpoints = stage / "checkpoints"
    # Output to a file, not a pipe: nothing reads a pipe while this waits, and ZeRO-3's warnings
    # (one per reduce-scatter) fill one in a few updates, which blocks the ranks on their next write.
    printed = root / f"{run}.killed.log"
    with open(printed, "w") as sink:
        proc = subprocess.Popen(cli_command(*DATA, *args, ranks=2), cwd=root, stdout=sink,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (checkpoints / "update_1").exists():  # renamed from update_1.tmp once every rank wrote its part
        if proc.poll() is not None:
            pytest.fail(f"grpo ended before checkpoint 1:\n{printed.read_text()[-3000:]}")
        if time.time() > deadline:
            kill_tree(proc)
            pytest.fail(f"no {checkpoints / 'update_1'} after 300 s:\n{printed.read_text()[-3000:]}")
        time.sleep(0.05)
    kill_tree(proc)
    assert not (stage / "final").exists()
    written = sorted(int(p.name.split("_")[1]) for p in checkpoints.glob("update_*") if not p.name.endswith(".tmp"))
    assert written and written[-1] < 3, written  # killed before the last update's checkpoint
    killed_at = written[-1]
    assert not (checkpoints / f"update_{killed_at}" / "value").exists()
    saved = torch.load(checkpoints / f"update_{killed_at}" / "trainer_state.pt", weights_only=True)
    prompts_per_update = 8 // 4  # rollout_batch_size / grpo's samples_per_prompt
    assert saved["update"] == killed_at and saved["format"] == zero
    assert saved["prompts"]["position"] == killed_at * prompts_per_update

    out = launch(root, *args)
    resumed = [line for line in out.splitlines() if "resumed from" in line]
    assert resumed and resumed[0].endswith(f"checkpoints/update_{killed_at} at update {killed_at}"), out[-3000:]
    assert f"{run}/ppo/checkpoints" in resumed[0]
    m = manifest(root / "runs" / run, "ppo")
    assert m["status"] == "completed" and m["metrics"]["updates"] == 3
    # no critic: neither trained (no value/ state in any checkpoint) nor built (not among the roles)
    assert set(m["distributed"]) == {"policy", "ref", *(["reward"] if zero == "zero2" else ["reward_0", "reward_1"])}
    assert m["distributed"]["policy"]["zero_stage"] == int(zero[-1]) and m["distributed"]["policy"]["world_size"] == 2
    assert m["distributed"]["policy"]["gradient_checkpointing"] and not m["distributed"]["ref"]["gradient_checkpointing"]
    kept = sorted(p.name for p in checkpoints.iterdir())
    assert "update_3" in kept and not any(p.endswith(".tmp") for p in kept), kept
    for name in kept:
        assert sorted(p.name for p in (checkpoints / name).iterdir() if p.is_dir()) == ["policy"], name
    # the resumed run went on with the prompt stream where the killed one stopped: 3 updates' prompts in all
    final_state = torch.load(checkpoints / "update_3" / "trainer_state.pt", weights_only=True)
    assert final_state["update"] == 3 and final_state["prompts"]["position"] == 3 * prompts_per_update
    # the policy learned, and final/ loads as a plain Hugging Face model
    before, after = weights(root, zero, "sft"), weights(root, run, "ppo")
    assert set(before) == set(after)
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 1e-5
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stage / "final")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in after.items())
    assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()
