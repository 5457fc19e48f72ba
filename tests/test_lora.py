"""LoRA (model.lora.enabled): only adapter and score-head parameters train, PPO's reference is
the policy with its adapter off, and a stage's merged `final/` is a plain checkpoint giving the
adapter model's logits."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf.artifacts import save_final
from rlhf.config import LoraConfig, ModelConfig, PPOStageConfig
from rlhf.data import encode_prompts
from rlhf.generation import REWARD_NORM_KEY, response_logprobs
from rlhf.models import AdapterDisabled, apply_lora, build_tiny_model
from rlhf.ppo.engines import local_engine
from rlhf.ppo.trainer import Roles, optimise, rollout

PROMPTS = ["sort ascending: 3 1 2", "sort descending: 5 9 1 0", "sort ascending: 7 7", "sort descending: 4 2"]
LORA = LoraConfig(enabled=True, r=4, alpha=8)


def score_model(tokenizer):
    torch.manual_seed(1)
    config = copy.deepcopy(build_tiny_model(ModelConfig(), tokenizer).config)
    config.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(config)
    model.config.pad_token_id = tokenizer.pad_token_id
    setattr(model.config, REWARD_NORM_KEY, {"bias": 0.0})
    return model


def test_ppo_with_lora_trains_adapters_and_the_critic_head_only(tokenizer):
    torch.manual_seed(0)
    base = build_tiny_model(ModelConfig(), tokenizer)
    untouched = copy.deepcopy(base)
    policy = apply_lora(base, LORA, "causal")
    value = apply_lora(score_model(tokenizer), LORA, "score")
    roles = Roles(policy=policy, ref=AdapterDisabled(policy), reward=score_model(tokenizer).eval(), value=value)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    value_before = {k: v.clone() for k, v in value.state_dict().items()}
    p = PPOStageConfig(rollout_batch_size=4, mini_batch_size=4, ppo_epochs=2, learning_rate=1e-2, max_new_tokens=4)
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, PROMPTS), p, max_new_tokens=4)
    # the reference (adapter off) is exactly the base model
    prompt_len = r.sequences.shape[1] - r.mask.shape[1]
    with torch.no_grad():
        expected, _ = response_logprobs(untouched, r.sequences, r.attention_mask, prompt_len, 1.0)
    assert torch.allclose(r.ref_logprobs * r.mask, expected * r.mask, atol=1e-5)
    params = lambda m: [w for w in m.parameters() if w.requires_grad]  # noqa: E731
    roles.policy = local_engine(policy, torch.optim.SGD(params(policy), lr=1.0), p)
    roles.value = local_engine(value, torch.optim.SGD(params(value), lr=1.0), p)
    optimise(roles, r, p, 0.05, tokenizer, [], train_policy=True)

    changed = {k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed), changed
    changed = {k for k, v in value.state_dict().items() if not torch.equal(v, value_before[k])}
    assert any("score" in k for k in changed) and any("lora_" in k for k in changed)
    assert all("lora_" in k or "score" in k for k in changed), changed


def test_merged_final_is_a_plain_checkpoint_with_the_adapter_models_logits(tokenizer, tmp_path):
    torch.manual_seed(0)
    policy = apply_lora(build_tiny_model(ModelConfig(), tokenizer), LORA, "causal")
    with torch.no_grad():
        for name, w in policy.named_parameters():
            if "lora_B" in name:
                w.normal_(0, 0.5)  # B starts at zero: make the adapter do something
    ids = torch.tensor(encode_prompts(tokenizer, PROMPTS[:1]))
    with torch.no_grad():
        adapter_logits = policy(input_ids=ids).logits
    save_final(policy, tokenizer, tmp_path / "final")
    adapter_keys = load_file(tmp_path / "final_adapter" / "adapter_model.safetensors").keys()
    assert adapter_keys and all("lora_" in k for k in adapter_keys)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapter_logits, atol=1e-4)


@pytest.mark.slow
def test_sft_rm_and_ppo_stages_run_with_lora(tmp_path):
    args = ["run=lora", "logger=none", "model.lora.enabled=true", "model.lora.r=4", "data.toy.num_prompts=1500"]

    def rlhf(*extra):
        out = subprocess.run([sys.executable, "-m", "rlhf.cli", *args, *extra], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    rlhf("stage=sft", "sft.max_steps=30", "sft.learning_rate=1e-2", "sft.gold_eval_prompts=0", "sft.eval_every_steps=0")
    rlhf("stage=rm", "rm.max_steps=10", "rm.eval_every_steps=0")
    rlhf("stage=ppo", "ppo.updates=3", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4", "ppo.eval_prompts=8",
         "ppo.critic_warmup_updates=1", "ppo.save_every_updates=2")
    runs = tmp_path / "runs" / "lora"
    for stage in ("sft", "rm", "ppo"):
        assert (runs / stage / "final" / "model.safetensors").exists()
        keys = load_file(runs / stage / "final_adapter" / "adapter_model.safetensors").keys()
        assert all("lora_" in k or "score" in k for k in keys), stage
        assert any("score" in k for k in keys) == (stage == "rm"), stage
    rm = AutoModelForSequenceClassification.from_pretrained(runs / "rm" / "final")
    assert getattr(rm.config, REWARD_NORM_KEY)["raw_std"] > 0  # normalisation survived the merge
    assert json.loads((runs / "ppo" / "manifest.json").read_text())["metrics"]["updates"] == 3
    assert (runs / "ppo" / "checkpoints" / "update_2" / "policy" / "adapter_model.safetensors").exists()
    rlhf("stage=ppo", "ppo.updates=4", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=4", "ppo.eval_prompts=8",
         "ppo.critic_warmup_updates=1", "ppo.save_every_updates=2")  # resumes from the adapters of update_3
    assert json.loads((runs / "ppo" / "manifest.json").read_text())["metrics"]["updates"] == 4
