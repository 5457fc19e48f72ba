"""LoRA (model.lora.enabled) in process: only adapter and score-head parameters train, PPO's
reference is the policy with its adapter off, and a merged `final/` is a plain checkpoint giving
the adapter model's logits. The stages run with LoRA through the CLI: e2e/test_lora_stages.py."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf.core.artifacts import save_final
from rlhf.config import LoraConfig, ModelConfig, PPOStageConfig
from rlhf.data import encode_prompts
from rlhf.models import REWARD_NORM_KEY
from rlhf.sampling import response_logprobs
from rlhf.models import AdapterDisabled, apply_lora, build_tiny_model
from rlhf.stages.online_rl.roles import Roles, local_engine
from rlhf.stages.online_rl.rollout import rollout
from rlhf.stages.online_rl.update import update

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
    roles = Roles(policy=policy, ref=AdapterDisabled(policy), reward=score_model(tokenizer).eval(), critic=value)
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
    roles.critic = local_engine(value, torch.optim.SGD(params(value), lr=1.0), p)
    update(roles, r, p, 0.05)

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


def test_the_kl_to_the_adapter_off_reference_is_measured_at_evaluation(tokenizer):
    """Stage 3's evaluation measures the KL of sampled answers to the reference; with LoRA that is
    the policy with its adapter off, a module with no parameters of its own."""
    from rlhf.data.toy import gold_score
    from rlhf.sampling import gold_evaluation

    torch.manual_seed(0)
    policy = apply_lora(build_tiny_model(ModelConfig(), tokenizer), LORA, "causal")
    metrics = gold_evaluation(policy, tokenizer, PROMPTS, gold_score, max_new_tokens=4, seed=0,
                              reference=AdapterDisabled(policy))
    assert metrics["kl_sampled_mean"] == pytest.approx(0.0, abs=1e-5)  # a fresh adapter changes nothing
    with torch.no_grad():
        for name, w in policy.named_parameters():
            if "lora_B" in name:
                w.add_(0.5)
    moved = gold_evaluation(policy, tokenizer, PROMPTS, gold_score, max_new_tokens=4, seed=0,
                            reference=AdapterDisabled(policy))
    assert moved["kl_sampled_mean"] > 0.01
