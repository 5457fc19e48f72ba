"""A non-finite reward, advantage, loss or gradient norm stops a training stage before its
optimizer steps on it: NonFiniteError naming the quantity and the step, the weights as the last
checkpoint left them, that checkpoint untouched and no final/. With skip_nonfinite the step is
skipped instead (no optimizer step: Adam's step count shows it) and counted."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlhf.config import (DataConfig, LoggerBackend, LoggerConfig, ModelConfig, PPOStageConfig, RLHFConfig,
                         SFTStageConfig, StageConfig, ToyConfig)
from rlhf.checks import check
from rlhf.core.artifacts import StageRun, save_final, sha256_of
from rlhf.core.nonfinite import NonFiniteError, NonFiniteGuard
from rlhf.models import build_tiny_model, load_tokenizer
from rlhf.stages.online_rl.roles import LocalEngine
from tests.conftest import ROOT

NAN = float("nan")
QUIET = LoggerConfig(backend=LoggerBackend.none)


def small_data() -> DataConfig:
    return DataConfig(toy=ToyConfig(num_prompts=300), max_prompt_tokens=16, max_response_tokens=8)


def same_weights(module: torch.nn.Module, saved: dict) -> bool:
    state = module.state_dict()
    return all(torch.equal(state[k], v) for k, v in saved.items())


def adam_steps(optimizer) -> list[int]:
    """Adam's step count of each parameter: how many optimizer steps it took part in."""
    return sorted({int(s["step"]) for s in optimizer.state.values()})


# ---- PPO ----

def ppo_config(tmp_path, **ppo) -> RLHFConfig:
    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    policy = build_tiny_model(ModelConfig(), tokenizer)
    save_final(policy, tokenizer, tmp_path / "policy")
    policy.config.num_labels = 1
    save_final(AutoModelForSequenceClassification.from_config(policy.config), tokenizer, tmp_path / "reward")
    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r", stage=StageConfig("ppo"), logger=QUIET, data=small_data(),
                     ppo=PPOStageConfig(policy_from=str(tmp_path / "policy"), reward_from=str(tmp_path / "reward"),
                                        updates=2, rollout_batch_size=8, mini_batch_size=4, ppo_epochs=1,
                                        learning_rate=1e-3, eval_prompts=2, save_every_updates=1, **ppo))
    check(cfg)
    return cfg


@pytest.fixture
def poisoned_ppo(monkeypatch):
    """Runs the PPO loop with a nan reward model score on the second response of update `at`;
    returns what it saw: the roles, each update's prompts, and the hash of checkpoints/ then."""
    from rlhf.stages.online_rl import loop

    seen = {"prompts": []}
    load_roles, rollout = loop.load_roles, loop.rollout

    def keep_roles(*args, **kwargs):
        seen["roles"] = load_roles(*args, **kwargs)
        return seen["roles"]

    def run(cfg, at: int):
        def poisoned(*args, **kwargs):
            r = rollout(*args, **kwargs)
            seen["prompts"].append(kwargs["prompts"])
            if len(seen["prompts"]) == at:
                if (cfg.stage_dir / "checkpoints").exists():
                    seen["checkpoints"] = sha256_of(cfg.stage_dir / "checkpoints")
                r.scores[1] = NAN
            return r

        monkeypatch.setattr(loop, "load_roles", keep_roles)
        monkeypatch.setattr(loop, "rollout", poisoned)
        with StageRun(cfg.stage_dir, OmegaConf.structured(cfg)) as stage_run:
            loop.run(cfg, stage_run)
        return seen

    return run, seen


def test_a_nan_reward_stops_ppo_before_any_weight_changes_with_the_last_checkpoint_intact(tmp_path, poisoned_ppo):
    run, seen = poisoned_ppo
    cfg = ppo_config(tmp_path)
    with pytest.raises(NonFiniteError, match=r"the reward has 1 non-finite values of 8 \(the first on prompt .+\) "
                                             r"at update 2: stopped before the optimizer step") as stopped:
        run(cfg, at=2)
    assert repr(seen["prompts"][1][1]) in str(stopped.value)  # the prompt whose answer scored nan
    assert "ppo.skip_nonfinite=true" in str(stopped.value)
    checkpoints = cfg.stage_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["update_1"]
    assert sha256_of(checkpoints) == seen["checkpoints"]  # nothing written or changed since update 1
    assert not (cfg.stage_dir / "final").exists()
    # the weights in memory are update 1's: the nan update optimised nothing
    roles = seen["roles"]
    assert same_weights(roles.policy.module, load_file(checkpoints / "update_1" / "policy" / "model.safetensors"))
    assert same_weights(roles.critic.module, load_file(checkpoints / "update_1" / "value" / "model.safetensors"))
    manifest = json.loads((cfg.stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"].startswith("NonFiniteError: the reward")


def test_with_skip_nonfinite_ppo_skips_the_update_counts_it_and_finishes(tmp_path, poisoned_ppo):
    run, seen = poisoned_ppo
    cfg = ppo_config(tmp_path, skip_nonfinite=True)
    run(cfg, at=1)
    assert (cfg.stage_dir / "final").exists()
    metrics = json.loads((cfg.stage_dir / "manifest.json").read_text())["metrics"]
    assert metrics["nonfinite_skipped"] == 1 and metrics["last_update"]["nonfinite_skipped"] == 1
    # no step in update 1 (nor its checkpoint), two mini-batch steps in update 2
    assert adam_steps(seen["roles"].policy.optimizer) == [2]
    assert sorted(p.name for p in (cfg.stage_dir / "checkpoints").iterdir()) == ["update_2"]


@pytest.fixture
def rollout_and_roles(tokenizer):
    """A rollout of 8 responses from tiny roles with local engines: two mini-batches of two
    micro-batches each."""
    from rlhf.algos.rewards import shape_scores
    from rlhf.data import encode_prompts
    from rlhf.stages.online_rl.rollout import rollout
    from rlhf.stages.online_rl.update import advantages_of
    from tests.conftest import tiny_roles, trainable

    p = PPOStageConfig(rollout_batch_size=8, mini_batch_size=4, micro_batch_size=2, ppo_epochs=1)
    roles = trainable(tiny_roles(tokenizer, critic=True), p, lr=1e-3)
    prompts = ["sort ascending: 3 1 2", "sort descending: 5 9 1 0", "reverse: 1 2 3", "sort ascending: 7 7"] * 2
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, prompts), p, max_new_tokens=4)
    scores = shape_scores(r.scores, r.ended, clip=p.score_clip, no_eos_score=p.no_eos_score)
    _, advantages, returns = advantages_of(r, scores, p, 0.05)
    return roles, r, advantages, returns, p


@pytest.fixture
def nan_second_policy_loss(monkeypatch):
    """The policy loss of the second micro-batch (the first mini-batch's last) is nan."""
    from rlhf.algos.policy_loss import POLICY_LOSSES
    from rlhf.stages.online_rl import update

    calls = []

    def policy_loss(*args):
        loss, stats = POLICY_LOSSES["ppo_clip"](*args)
        calls.append(1)
        return (loss * NAN if len(calls) == 2 else loss), stats

    monkeypatch.setattr(update, "POLICY_LOSSES", {"ppo_clip": policy_loss})


def test_a_nan_loss_stops_before_its_backward(rollout_and_roles, nan_second_policy_loss):
    from rlhf.stages.online_rl.update import optimise

    roles, r, advantages, returns, p = rollout_and_roles
    before = {k: v.clone() for k, v in roles.policy.module.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"the policy's loss is nan at update 7, epoch 1, mini-batch 1"):
        optimise(roles, r, advantages, returns, p, [], pad_id=0, where="update 7")
    assert same_weights(roles.policy.module, before)


def test_with_skip_nonfinite_a_nan_loss_drops_its_mini_batch_step(rollout_and_roles, nan_second_policy_loss):
    from rlhf.stages.online_rl.update import optimise

    roles, r, advantages, returns, p = rollout_and_roles
    guard = NonFiniteGuard(skip=True, setting="ppo.skip_nonfinite")
    stats = optimise(roles, r, advantages, returns, p, [], pad_id=0, guard=guard)
    assert guard.skipped == 1 and all(v == v for v in stats.values())  # no nan in the reported losses
    # the first mini-batch's policy step is dropped, with the gradient of its first micro-batch
    assert adam_steps(roles.policy.optimizer) == [1] and adam_steps(roles.critic.optimizer) == [2]


def test_the_local_engine_takes_no_step_on_non_finite_gradients():
    model = torch.nn.Linear(3, 1)
    engine = LocalEngine(model, torch.optim.AdamW(model.parameters(), lr=0.1), accumulation_steps=1,
                         max_grad_norm=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine.backward(model(torch.ones(2, 3)).sum() * NAN)
    engine.step()
    assert engine.get_global_grad_norm() != engine.get_global_grad_norm()  # nan, for the loop to stop or count
    assert same_weights(model, before) and not engine.optimizer.state
    engine.backward(model(torch.ones(2, 3)).sum())
    engine.step()
    assert engine.get_global_grad_norm() > 0 and not same_weights(model, before)


# ---- the Trainer-based stages (SFT here; RM, DPO and bon_sft share the callback) ----

def sft_config(tmp_path, **sft) -> RLHFConfig:
    cfg = RLHFConfig(runs_dir=str(tmp_path), run="r", stage=StageConfig("sft"), logger=QUIET, data=small_data(),
                     sft=SFTStageConfig(max_steps=4, per_device_batch_size=4, save_every_steps=2,
                                        save_total_limit=5, eval_every_steps=0, gold_eval_prompts=0,
                                        learning_rate=1e-3, **sft))
    check(cfg)
    return cfg


@pytest.fixture
def nan_loss_at_step_3(monkeypatch):
    """Runs SFT with a nan training loss at step 3; returns what it saw: the trainer, the
    weights and the hash of checkpoints/ just before that step."""
    from trl import SFTTrainer

    from rlhf.stages import sft

    seen = {}
    compute_loss = SFTTrainer.compute_loss

    def nan_at_step_3(self, model, inputs, *args, **kwargs):
        out = compute_loss(self, model, inputs, *args, **kwargs)
        seen["trainer"] = self
        if self.state.global_step != 2 or not model.training:
            return out
        seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["checkpoints"] = sha256_of(Path(self.args.output_dir))
        return (out[0] * NAN, *out[1:]) if isinstance(out, tuple) else out * NAN

    monkeypatch.setattr(SFTTrainer, "compute_loss", nan_at_step_3)

    def run(cfg):
        with StageRun(cfg.stage_dir, OmegaConf.structured(cfg)) as stage_run:
            sft.run(cfg, stage_run)

    return run, seen


def test_a_nan_loss_stops_sft_before_the_optimizer_steps_with_the_last_checkpoint_intact(tmp_path,
                                                                                          nan_loss_at_step_3):
    run, seen = nan_loss_at_step_3
    cfg = sft_config(tmp_path)
    with pytest.raises(NonFiniteError, match=r"the gradient norm is nan at step 3: stopped before the optimizer step"
                                             r".*sft.skip_nonfinite=true"):
        run(cfg)
    checkpoints = cfg.stage_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]
    assert sha256_of(checkpoints) == seen["checkpoints"]
    assert not (cfg.stage_dir / "final").exists()
    model = seen["trainer"].model  # step 3 changed no weight: they are step 2's, as saved
    assert same_weights(model, seen["weights"])
    assert same_weights(model, load_file(checkpoints / "checkpoint-2" / "model.safetensors"))


def test_with_skip_nonfinite_sft_skips_the_step_counts_it_and_finishes(tmp_path, nan_loss_at_step_3):
    run, seen = nan_loss_at_step_3
    cfg = sft_config(tmp_path, skip_nonfinite=True)
    run(cfg)
    assert (cfg.stage_dir / "final").exists()
    manifest = json.loads((cfg.stage_dir / "manifest.json").read_text())
    assert manifest["metrics"]["nonfinite_skipped"] == 1 and manifest["metrics"]["steps"] == 4
    assert adam_steps(seen["trainer"].optimizer) == [3]  # steps 1, 2 and 4: step 3 was not taken


@pytest.mark.slow
def test_the_command_exits_4_naming_the_quantity_and_the_step(tmp_path, run_cli):
    """A learning rate of 1e30 makes the gradients nan within a few steps."""
    out = run_cli("stage=sft", "run=n", "data.toy.num_prompts=300", "logger=none", "sft.max_steps=6",
                  "sft.learning_rate=1e30", "sft.per_device_batch_size=4", "sft.save_every_steps=0",
                  "sft.eval_every_steps=0", "sft.gold_eval_prompts=0", cwd=tmp_path, expect=4, timeout=300)
    said = out.stdout + out.stderr
    assert re.search(r"the gradient norm is (nan|inf) at step \d+: stopped before the optimizer step", said)
    assert "Traceback" not in said and not (tmp_path / "runs/n/sft/final").exists()


# Under torchrun: a nan on rank 1 only stops both ranks, and rank 0's message names it.
RANKS = """
import torch
from rlhf.core import distributed
from rlhf.core.nonfinite import NonFiniteError, NonFiniteGuard
distributed.init(use_deepspeed=False)
rank = distributed.rank()
value = torch.tensor([1.0, float("nan") if rank == 1 else 2.0])
guard = NonFiniteGuard(skip=False, setting="ppo.skip_nonfinite")
try:
    guard.finite("update 5", "this update", {"the reward": value}, rows=[f"p{rank}a", f"p{rank}b"])
    print(f"rank {distributed.rank()} went on", flush=True)
except NonFiniteError as e:
    print(f"rank {distributed.rank()} stopped: {e}", flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()  # (gloo aborts the process at exit otherwise, now and then)
"""


@pytest.mark.distributed
def test_under_torchrun_a_nan_on_one_rank_stops_every_rank(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    # (--standalone: a free port, not one another test may hold)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for rank in (0, 1):
        assert (f"rank {rank} stopped: the reward has 1 non-finite values of 2 (the first on prompt 'p1b') "
                "at update 5") in out.stdout
    assert "went on" not in out.stdout
