"""LoRA (model.lora.enabled) through the CLI: SFT, RM, PPO and DPO train adapters only, each stage's
merged `final/` is a plain checkpoint (the RM's with its reward normalisation), and PPO resumes
from the adapters of its last checkpoint. The in-process checks: unit/test_lora.py."""

import json

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlhf.models import REWARD_NORM_KEY


@pytest.mark.slow
def test_sft_rm_and_ppo_stages_run_with_lora(tmp_path, run_cli):
    # with gradient checkpointing in every stage: the adapters' gradients flow through recomputed layers
    args = ["run=lora", "logger=none", "model.lora.enabled=true", "model.lora.r=4", "data.toy.num_prompts=1500",
            "model.gradient_checkpointing=true"]

    def rlhf(*extra):
        run_cli(*args, *extra, cwd=tmp_path, timeout=600)

    rlhf("stage=sft", "sft.max_steps=30", "sft.learning_rate=1e-2", "sft.gold_eval_prompts=0", "sft.eval_every_steps=0")
    rlhf("stage=rm", "rm.max_steps=10", "rm.eval_every_steps=0")
    rlhf("stage=ppo", "ppo.updates=3", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4", "ppo.eval_prompts=8",
         "ppo.critic_warmup_updates=1", "ppo.save_every_updates=2")
    # DPO: the reference is the policy with its adapter off (no second copy)
    rlhf("stage=dpo", "dpo.max_steps=4", "dpo.learning_rate=1e-2", "dpo.gold_eval_prompts=0",
         "dpo.train_accuracy_pairs=16", "dpo.eval_every_steps=0")
    runs = tmp_path / "runs" / "lora"
    dpo = json.loads((runs / "dpo" / "manifest.json").read_text())
    assert "adapter off" in dpo["inputs"]["reference"] and dpo["metrics"]["steps"] == 4
    # measured on dpo.train_accuracy_pairs=16 pairs, a tie counting half: a multiple of 1/32
    assert (dpo["metrics"]["train_reward_accuracy"] * 32).is_integer()
    for stage in ("sft", "rm", "dpo"):
        assert json.loads((runs / stage / "manifest.json").read_text())["distributed"]["gradient_checkpointing"], stage
    for stage in ("sft", "rm", "ppo", "dpo"):
        assert (runs / stage / "final" / "model.safetensors").exists()
        keys = load_file(runs / stage / "final_adapter" / "adapter_model.safetensors").keys()
        assert all("lora_" in k or "score" in k for k in keys), stage
        assert any("score" in k for k in keys) == (stage == "rm"), stage
    sft, dpo = load_file(runs / "sft" / "final" / "model.safetensors"), load_file(runs / "dpo" / "final" / "model.safetensors")
    assert max((sft[k] - dpo[k]).abs().max().item() for k in sft) > 1e-6  # the merged adapter moved the policy
    rm = AutoModelForSequenceClassification.from_pretrained(runs / "rm" / "final")
    assert getattr(rm.config, REWARD_NORM_KEY)["raw_std"] > 0  # normalisation survived the merge
    ppo = json.loads((runs / "ppo" / "manifest.json").read_text())
    assert ppo["metrics"]["updates"] == 3
    assert ppo["distributed"]["policy"]["gradient_checkpointing"] and ppo["distributed"]["value"]["gradient_checkpointing"]
    assert (runs / "ppo" / "checkpoints" / "update_2" / "policy" / "adapter_model.safetensors").exists()
    rlhf("stage=ppo", "ppo.updates=4", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4", "ppo.eval_prompts=8",
         "ppo.critic_warmup_updates=1", "ppo.save_every_updates=2")  # resumes from the adapters of update_3
    assert json.loads((runs / "ppo" / "manifest.json").read_text())["metrics"]["updates"] == 4
