"""The settings that change how, and where, the models compute, not what they compute: gradient
checkpointing (the same update), the attention kernel (refused clearly when it cannot run), and
device placement (every role on the rank's device; faked here, where no GPU exists)."""

import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf.config import ConfigError, PPOStageConfig, RLHFConfig
from rlhf.checks.runtime import attention_problems
from rlhf.core import distributed
from rlhf.data import encode_prompts
from rlhf.core.distributed import is_checkpointing
from rlhf.models import build_tiny_model
from rlhf.stages.online_rl.roles import build_roles
from rlhf.stages.online_rl.rollout import rollout
from rlhf.stages.online_rl.update import update

PROMPTS = ["sort ascending: 3 1 2", "sort descending: 5 9", "sort ascending: 7 7 0 4"] * 2


def models(tokenizer, cfg):
    torch.manual_seed(0)
    policy = build_tiny_model(cfg.model, tokenizer)
    scorer = copy.deepcopy(policy.config)
    scorer.num_labels = 1
    reward = AutoModelForSequenceClassification.from_config(scorer)
    critic = AutoModelForSequenceClassification.from_config(scorer)
    return dict(policy=policy, ref=build_tiny_model(cfg.model, tokenizer), reward=reward, critic=critic)


def config(**model) -> RLHFConfig:
    cfg = RLHFConfig()
    cfg.ppo = PPOStageConfig(rollout_batch_size=6, mini_batch_size=6, ppo_epochs=1, learning_rate=1e-2,
                             max_new_tokens=5)
    for key, value in model.items():
        setattr(cfg.model, key, value) if key != "lora" else setattr(cfg.model.lora, "enabled", value)
    return cfg


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_update(tokenizer, lora):
    weights = []
    for checkpointing in (False, True):
        cfg = config(gradient_checkpointing=checkpointing, lora=lora)
        roles = build_roles(cfg, **models(tokenizer, cfg))
        policy = distributed.module_of(roles.policy)
        assert is_checkpointing(policy) == checkpointing
        torch.manual_seed(1)
        r = rollout(roles, tokenizer, encode_prompts(tokenizer, PROMPTS), cfg.ppo, max_new_tokens=5)
        before = {k: v.clone() for k, v in policy.state_dict().items()}
        update(roles, r, cfg.ppo, 0.05)
        after = policy.state_dict()
        assert any(not torch.equal(after[k], before[k]) for k in after)  # it learned something
        weights.append((after, distributed.module_of(roles.critic).state_dict()))
    for off, on in zip(*weights):
        for k in off:
            assert torch.allclose(off[k], on[k], atol=1e-6, rtol=0), k


def test_attention_kernel_is_checked_and_reaches_the_model(tokenizer, monkeypatch):
    assert attention_problems(config().model) == []
    (problem,) = attention_problems(config(attn_implementation="flash").model)
    assert "model.attn_implementation='flash'" in problem and "sdpa" in problem
    # flash-attn absent here: refused with what to do, before any model is loaded
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    (problem,) = attention_problems(config(attn_implementation="flash_attention_2", dtype="bfloat16").model)
    assert "pip install flash-attn" in problem
    # present, but no GPU or a float32 model: refused too
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    assert "CUDA" in attention_problems(config(attn_implementation="flash_attention_2", dtype="bfloat16").model)[0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "bfloat16" in attention_problems(config(attn_implementation="flash_attention_2").model)[0]
    monkeypatch.undo()
    eager = build_tiny_model(config(attn_implementation="eager").model, tokenizer)
    assert eager.config._attn_implementation == "eager"
    assert build_tiny_model(config().model, tokenizer).config._attn_implementation == "sdpa"


def test_the_checked_config_names_a_bad_attention_kernel():
    from rlhf.checks import check

    cfg = config(attn_implementation="flash")
    with pytest.raises(ConfigError, match="model.attn_implementation='flash'"):
        check(cfg)


def test_each_rank_computes_on_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.device() == torch.device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.device() == torch.device("cpu")


def test_stage_3_puts_every_role_on_the_device(tokenizer, monkeypatch):
    """With the device faked as `meta` (no GPU here): the policy, critic, reference and reward
    model all move to it before the engines and optimizers are built."""
    monkeypatch.setattr(distributed, "device", lambda: torch.device("meta"))
    cfg = config()
    roles = build_roles(cfg, **models(tokenizer, cfg))
    for role, model in roles.models().items():
        devices = {w.device.type for w in distributed.module_of(model).parameters()}
        assert devices == {"meta"}, role


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_a_half_precision_rollout_keeps_float32_statistics(tokenizer, dtype):
    """Models in bf16 (as on GPUs): sampling, log-probs, values and scores come back in float32, the
    precision the losses and advantages are computed in."""
    cfg = config(dtype=dtype)
    roles = build_roles(cfg, **{k: m.to(getattr(torch, dtype)) for k, m in models(tokenizer, cfg).items()})
    assert next(distributed.module_of(roles.policy).parameters()).dtype == torch.bfloat16
    r = rollout(roles, tokenizer, encode_prompts(tokenizer, PROMPTS), cfg.ppo, max_new_tokens=5)
    for name in ("logprobs", "ref_logprobs", "values", "scores", "entropy"):
        assert getattr(r, name).dtype == torch.float32, name
    assert torch.isfinite(r.logprobs).all() and (r.logprobs <= 0).all()
